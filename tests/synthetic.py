"""Synthetic DICOM CT series in every transfer syntax segnode must accept.

This is a plain helper module for the test suite (no pytest fixtures live
here) so that it can be imported from tests, benchmarks and ad-hoc scripts
alike, either as ``tests.synthetic`` or as ``synthetic`` with ``tests/`` on
``sys.path``.

Why it exists
-------------
segnode receives images from PACS and modalities that send whatever transfer
syntax they were configured with. Tests therefore need real Part-10 files
whose pixel data is *really* encoded in each transfer syntax (not an
uncompressed payload with a relabelled header), so that the receive path,
the decoders and the byte-identity guarantees are exercised the way a
clinical sender would exercise them.

Encoders used (all from PyPI, nothing is faked):

============================  ==================================================
Transfer syntax               Encoder
============================  ==================================================
Implicit / Explicit VR LE     pydicom writer (native)
Explicit VR Big Endian        pydicom writer, pixel words byte-swapped here
Deflated Explicit VR LE       pydicom writer (zlib raw deflate)
RLE Lossless                  ``Dataset.compress`` (pydicom / pylibjpeg-rle)
JPEG-LS lossless / near-loss  ``Dataset.compress`` (pyjpegls, CharLS)
JPEG 2000 lossless / lossy    ``Dataset.compress`` (pylibjpeg-openjpeg)
JPEG Baseline (8-bit)         Pillow (libjpeg), encapsulated here
JPEG Lossless 4.57 and 4.70   imagecodecs ``jpeg8_encode(lossless=True)``
                              (libjpeg-turbo >= 3, SOF3), encapsulated here
HTJ2K lossless / RPCL / lossy imagecodecs ``htj2k_encode`` (OpenJPH),
                              encapsulated here
============================  ==================================================

``imagecodecs`` (PyPI) is therefore a test dependency; ``ojph`` on PyPI is an
sdist that needs the OpenJPH C++ headers installed system-wide and does not
build here, which is why imagecodecs' bundled OpenJPH is used instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "TRANSFER_SYNTAXES",
    "LOSSY_TRANSFER_SYNTAXES",
    "ENCAPSULATED_TRANSFER_SYNTAXES",
    "EIGHT_BIT_TRANSFER_SYNTAXES",
    "STORESCU_FLAGS",
    "STORESCP_FLAGS",
    "DCMTK_CONFIG",
    "MAX_LOSSY_ERROR",
    "dcmtk_config_text",
    "write_dcmtk_config",
    "storescp_flags",
    "phantom_hu",
    "AXIAL",
    "SAGITTAL",
    "CORONAL",
    "write_ct_series",
    "write_enhanced_ct",
    "dataset_bytes",
    "file_meta_length",
]

# ---------------------------------------------------------------------------
# Transfer syntaxes
# ---------------------------------------------------------------------------

#: Every transfer syntax segnode must accept, in a stable order (tests are
#: parametrised over this, so the order fixes the test ids). All of them can
#: be encoded with PyPI packages; none had to be left out.
TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    ImplicitVRLittleEndian,  # 1.2.840.10008.1.2
    ExplicitVRLittleEndian,  # 1.2.840.10008.1.2.1
    ExplicitVRBigEndian,  # 1.2.840.10008.1.2.2 (retired, still seen)
    DeflatedExplicitVRLittleEndian,  # 1.2.840.10008.1.2.1.99
    JPEGBaseline8Bit,  # 1.2.840.10008.1.2.4.50
    JPEGLossless,  # 1.2.840.10008.1.2.4.57 (process 14, any predictor)
    JPEGLosslessSV1,  # 1.2.840.10008.1.2.4.70 (process 14, predictor 1)
    JPEGLSLossless,  # 1.2.840.10008.1.2.4.80
    JPEGLSNearLossless,  # 1.2.840.10008.1.2.4.81
    JPEG2000Lossless,  # 1.2.840.10008.1.2.4.90
    JPEG2000,  # 1.2.840.10008.1.2.4.91
    HTJ2KLossless,  # 1.2.840.10008.1.2.4.201
    HTJ2KLosslessRPCL,  # 1.2.840.10008.1.2.4.202
    HTJ2K,  # 1.2.840.10008.1.2.4.203
    RLELossless,  # 1.2.840.10008.1.2.5
)

#: Syntaxes whose decoded pixels differ from the phantom. Tests that compare
#: decoded values must allow a tolerance for these (see ``MAX_LOSSY_ERROR``).
LOSSY_TRANSFER_SYNTAXES: Final[frozenset[str]] = frozenset(
    {JPEGBaseline8Bit, JPEGLSNearLossless, JPEG2000, HTJ2K}
)

#: Syntaxes whose Pixel Data is encapsulated (one fragment per frame).
ENCAPSULATED_TRANSFER_SYNTAXES: Final[frozenset[str]] = frozenset(
    ts for ts in TRANSFER_SYNTAXES if ts.is_compressed
)

#: Syntaxes written with 8-bit stored pixels. JPEG Baseline (process 1) can
#: only carry 8-bit samples, so its series is 8-bit with a rescale slope of 8
#: (the HU range is coarser but still a CT series a segmenter can process).
EIGHT_BIT_TRANSFER_SYNTAXES: Final[frozenset[str]] = frozenset({JPEGBaseline8Bit})

#: Largest absolute error, in *stored* values (before rescale), of a lossy
#: syntax against the exact phantom with the encoder settings used below
#: (measured over several seeds and sizes, plus margin).
MAX_LOSSY_ERROR: Final[dict[str, int]] = {
    JPEGBaseline8Bit: 24,  # Pillow quality 90, 8-bit stored values
    JPEGLSNearLossless: 2,  # the NEAR parameter is exactly the bound
    JPEG2000: 32,  # compression ratio 4
    HTJ2K: 24,  # OpenJPH quantisation step 1e-4
}

#: HTJ2K syntaxes (written with BitsStored 16, see ``write_ct_series``).
_HTJ2K_SYNTAXES: Final[frozenset[str]] = frozenset({HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})

# ---------------------------------------------------------------------------
# How dcmtk 3.6.7 sends / receives each syntax (measured, see module notes)
# ---------------------------------------------------------------------------

#: Syntaxes dcmtk 3.6.7's storescu can send unchanged (all but HTJ2K; see
#: :data:`STORESCU_FLAGS` for why HTJ2K cannot be sent).
_DCMTK_SENDABLE: Final[tuple[UID, ...]] = tuple(
    ts for ts in TRANSFER_SYNTAXES if ts not in _HTJ2K_SYNTAXES
)

#: Storage SOP classes the ``ReceiveAll`` profile accepts: the CT input and
#: what a segmentation node sends back (SEG, RT Structure Set, Secondary
#: Capture, Comprehensive SR), plus Verification for C-ECHO.
_DCMTK_CONFIG_SOP_CLASSES: Final[tuple[str, ...]] = (
    "1.2.840.10008.1.1",  # Verification
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)


def dcmtk_config_text() -> str:
    """Return dcmtk association profiles (for ``-xf FILE PROFILE``).

    dcmtk 3.6.7 has no command-line option that proposes (storescu) or
    accepts (storescp) JPEG Lossless 1.2.840.10008.1.2.4.57, only its SV1
    subset 4.70; a configuration file profile is the only way. Profiles:

    ``SendJPEGLossless``
        storescu: propose CT Image Storage with 4.57 only.
    ``ReceiveAll``
        storescp: accept the SOP classes of ``_DCMTK_CONFIG_SOP_CLASSES``
        with every syntax dcmtk 3.6.7 can send (all but HTJ2K).

    Returns
    -------
    str
        The configuration file's text.
    """
    lines = ["[[TransferSyntaxes]]", "[JPEGLossless57]", f"TransferSyntax1 = {JPEGLossless}"]
    lines.append("[AllDcmtk367]")
    lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(_DCMTK_SENDABLE, start=1)]
    lines += ["", "[[PresentationContexts]]", "[CTJPEGLossless57]"]
    lines.append(f"PresentationContext1 = {CTImageStorage}\\JPEGLossless57")
    lines.append("[ReceiveAllContexts]")
    lines += [
        f"PresentationContext{i} = {sop}\\AllDcmtk367"
        for i, sop in enumerate(_DCMTK_CONFIG_SOP_CLASSES, start=1)
    ]
    lines += ["", "[[Profiles]]", "[SendJPEGLossless]", "PresentationContexts = CTJPEGLossless57"]
    lines += ["[ReceiveAll]", "PresentationContexts = ReceiveAllContexts", ""]
    return "\n".join(lines)


def write_dcmtk_config(path: str | os.PathLike[str] | None = None) -> Path:
    """Write :func:`dcmtk_config_text` to `path` and return the path.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Target file. By default a file in the system temp folder named after
        a hash of the text, so that it is shared, never stale and written
        atomically (safe under parallel test workers).

    Returns
    -------
    pathlib.Path
        The configuration file.
    """
    text = dcmtk_config_text()
    if path is None:
        digest = hashlib.sha256(text.encode("ascii")).hexdigest()[:16]
        target = Path(tempfile.gettempdir()) / f"segnode-dcmtk-assoc-{digest}.cfg"
        if target.is_file() and target.read_text(encoding="ascii") == text:
            return target
    else:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".dcmtk-assoc-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    os.replace(tmp, target)
    return target


#: The dcmtk configuration file that :data:`STORESCU_FLAGS` and
#: :func:`storescp_flags` refer to (written on import, see
#: :func:`write_dcmtk_config`).
DCMTK_CONFIG: Final[Path] = write_dcmtk_config()

#: ``/usr/bin/storescu`` (dcmtk 3.6.7) options that make it send a file of
#: the given transfer syntax *unchanged*: the association carries the file's
#: own syntax, and what ``/usr/bin/storescp`` wrote has the same Transfer
#: Syntax UID and byte-identical :func:`dataset_bytes`. Measured by sending
#: every series of :func:`write_ct_series` into storescp (``+xa``, and the
#: ``ReceiveAll`` profile) over 127.0.0.1 with ``TCP_NODELAY=1``.
#:
#: Why options are needed at all: storescu proposes, per SOP class, one
#: preferred syntax (Explicit VR LE unless a ``-x?`` option names another)
#: and, in a second context, the other uncompressed syntaxes. It never
#: proposes a file's own syntax by itself, so without the right option a
#: compressed file fails ("DIMSE Failed to send message": no context), a
#: Deflated file is sent inflated as Explicit VR LE and an Implicit VR LE
#: file is converted to Explicit VR LE (storescp picks Explicit VR BE from the
#: fallback context). ``-R`` restricts the request to the SOP classes of the
#: files being sent.
#:
#: * JPEG Lossless 4.57 (non-SV1): no ``-x?`` option proposes it; it goes
#:   through the ``SendJPEGLossless`` profile of :data:`DCMTK_CONFIG`. The
#:   receiver must accept 4.57: ``storescp +xa`` does *not* (use
#:   :func:`storescp_flags`).
#: * Deflated: storescp re-deflates, so the raw deflate stream differs by a
#:   few bytes while the inflated data set is identical (hence
#:   ``dataset_bytes(..., inflate=True)`` by default). pynetdicom's
#:   ``send_c_store(path)`` by contrast sends the file's deflate stream as is.
#:
#: Absent on purpose: HTJ2K 1.2.840.10008.1.2.4.201/.202/.203. They were
#: added to DICOM after dcmtk 3.6.7 (dcmtk supports them from 3.6.8). 3.6.7
#: has no option for them, and even when a configuration profile gets an
#: HTJ2K context accepted, storescu refuses to send with "0006:0212 DIMSE
#: Unsupported transfer syntax". Send HTJ2K with pynetdicom
#: (``send_c_store(path)`` sends it unchanged; verified).
STORESCU_FLAGS: Final[dict[str, list[str]]] = {
    ImplicitVRLittleEndian: ["-R", "-xi"],
    ExplicitVRLittleEndian: ["-R", "-xe"],
    ExplicitVRBigEndian: ["-R", "-xb"],
    DeflatedExplicitVRLittleEndian: ["-R", "-xd"],
    JPEGBaseline8Bit: ["-R", "-xy"],
    JPEGLossless: ["-xf", str(DCMTK_CONFIG), "SendJPEGLossless"],
    JPEGLosslessSV1: ["-R", "-xs"],
    JPEGLSLossless: ["-R", "-xt"],
    JPEGLSNearLossless: ["-R", "-xu"],
    JPEG2000Lossless: ["-R", "-xv"],
    JPEG2000: ["-R", "-xw"],
    RLELossless: ["-R", "-xr"],
}

#: ``/usr/bin/storescp`` options accepting, unchanged, every syntax of
#: :data:`STORESCU_FLAGS` except JPEG Lossless 4.57 (``+xa`` = every syntax
#: dcmtk 3.6.7 has an option for). :func:`storescp_flags` accepts 4.57 too.
STORESCP_FLAGS: Final[list[str]] = ["+xa"]


def storescp_flags() -> list[str]:
    """Return storescp options accepting every syntax dcmtk 3.6.7 can send.

    Unlike :data:`STORESCP_FLAGS` (``+xa``) this accepts JPEG Lossless 4.57
    as well, through the ``ReceiveAll`` profile of :data:`DCMTK_CONFIG`, but
    only for the SOP classes that profile lists (CT, PET, SEG, SR, RTSTRUCT,
    Secondary Capture, Verification).

    Returns
    -------
    list of str
        Options to put between ``/usr/bin/storescp`` and ``PORT``.
    """
    return ["-xf", str(write_dcmtk_config()), "ReceiveAll"]


# ---------------------------------------------------------------------------
# Phantom
# ---------------------------------------------------------------------------

_AIR_HU: Final = -1000
_SOFT_TISSUE_HU: Final = 40
_DISC_HU: Final = 300
_INTERCEPT: Final = -1024.0

#: ImageOrientationPatient of the standard planes (row cosines, column
#: cosines), for ``write_ct_series(orientation=...)``.
AXIAL: Final[tuple[float, ...]] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL: Final[tuple[float, ...]] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL: Final[tuple[float, ...]] = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def phantom_hu(
    slices: int = 5, rows: int = 64, columns: int = 64, *, seed: int = 0
) -> np.ndarray:
    """Return the ground-truth phantom volume in Hounsfield units.

    The phantom is an axial ellipse of soft tissue (40 HU) in air (-1000 HU)
    holding a brighter sphere (300 HU) whose cross-section changes from slice
    to slice, plus a little seeded noise. It is simple enough to segment with
    a threshold, so tests can check a segmentation result against it, and
    3-D coherent, so slice ordering mistakes show up.

    Parameters
    ----------
    slices, rows, columns : int
        Volume shape; the result has shape ``(slices, rows, columns)``.
    seed : int
        Seed of the noise; the same arguments always give the same volume.

    Returns
    -------
    numpy.ndarray
        ``int16`` array of HU values, shape ``(slices, rows, columns)``.
    """
    if slices < 1 or rows < 8 or columns < 8:
        raise ValueError("need slices >= 1 and rows, columns >= 8")
    y, x = np.ogrid[0:rows, 0:columns]
    cy, cx = (rows - 1) / 2.0, (columns - 1) / 2.0
    body = ((y - cy) / (rows * 0.35)) ** 2 + ((x - cx) / (columns * 0.42)) ** 2 <= 1.0
    # Sphere centred on the middle slice, off-centre in-plane; its radius is
    # scaled along z so that every slice still cuts a disc.
    r2 = (min(rows, columns) * 0.15) ** 2
    d2 = (y - (cy - rows * 0.08)) ** 2 + (x - (cx + columns * 0.12)) ** 2
    cz = (slices - 1) / 2.0
    dz2 = ((np.arange(slices) - cz) / max(cz, 1.0) * 0.8) ** 2 * r2
    vol = np.full((slices, rows, columns), _AIR_HU, dtype=np.int16)
    vol[:, body] = _SOFT_TISSUE_HU
    disc = (d2[None, :, :] + dz2[:, None, None] <= r2) & body[None, :, :]
    vol[disc] = _DISC_HU
    rng = np.random.default_rng(seed)
    noise = rng.integers(-8, 9, size=vol.shape, dtype=np.int16)
    # Full noise in the body, a quarter of it in air.
    noise[:, ~body] //= 4
    vol += noise
    return vol


def _slice_scaling(
    slices: int, eight_bit: bool, signed: bool, rescale: Sequence[tuple[float, float]] | None
) -> list[tuple[float, float]]:
    """Per-slice ``(RescaleSlope, RescaleIntercept)``.

    By default 16-bit syntaxes store ``HU + 1024`` (slope 1, intercept
    -1024), signed series store HU itself (intercept 0), and the 8-bit one
    stores ``(HU + 1024) / 8`` (slope 8).
    """
    if rescale is not None:
        return [(float(slope), float(intercept)) for slope, intercept in rescale]
    if signed:
        return [(1.0, 0.0)] * slices
    return [(8.0 if eight_bit else 1.0, _INTERCEPT)] * slices


def _scaled_values(
    hu: np.ndarray, scaling: Sequence[tuple[float, float]], bits_stored: int, signed: bool
) -> np.ndarray:
    """Stored values ``rint((HU - intercept) / slope)`` for each slice.

    Raises ``ValueError`` rather than clipping, so a fixture never silently
    writes values other than the phantom's.
    """
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    slope = np.array([s for s, _ in scaling])[:, None, None]
    intercept = np.array([i for _, i in scaling])[:, None, None]
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    if stored.min() < low or stored.max() > high:
        raise ValueError(f"rescaled values {stored.min():g}..{stored.max():g} do not fit {bits_stored} bits")
    if bits_stored == 8:
        return stored.astype(np.uint8)
    return stored.astype(np.int16 if signed else np.uint16)


def _orientation_axes(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosines, column cosines and slice normal (row x column)."""
    cosines = np.asarray(orientation, dtype=np.float64)
    if cosines.shape != (6,):
        raise ValueError(f"orientation needs 6 direction cosines, got {orientation!r}")
    row, column = cosines[:3], cosines[3:]
    if not np.allclose([row @ row, column @ column, row @ column], [1.0, 1.0, 0.0], atol=1e-9):
        raise ValueError(f"orientation {orientation!r} is not two orthonormal vectors")
    return row, column, np.cross(row, column)


def _ds(value: float) -> str:
    """A Decimal String for `value`: short when exact, else 16 characters.

    ``:g`` keeps the files of the default axial series as they always were;
    oblique cosines and positions need more digits than ``:g`` gives.
    """
    value = float(value) + 0.0  # no "-0"
    short = f"{value:g}"
    if abs(float(short) - value) <= 1e-9 * max(1.0, abs(value)):
        return short
    return format_number_as_ds(value)


# ---------------------------------------------------------------------------
# Frame encoders for syntaxes pydicom cannot encode
# ---------------------------------------------------------------------------


def _strip_jfif(stream: bytes) -> bytes:
    """Drop a JFIF APP0 segment right after SOI.

    Pillow and libjpeg-turbo add JFIF, which describes 8-bit YCbCr/gray
    images only; DICOM does not need it and it is wrong on 12-bit lossless
    streams, so it is removed (the remaining stream is a valid JPEG).
    """
    if stream[:4] == b"\xff\xd8\xff\xe0":
        (length,) = struct.unpack(">H", stream[4:6])
        if stream[6:11] == b"JFIF\x00":
            return stream[:2] + stream[4 + length :]
    return stream


def _imagecodecs() -> Any:
    """Import imagecodecs with a hint on what it is needed for."""
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tests/synthetic.py needs the PyPI package 'imagecodecs' to encode "
            "JPEG Lossless (4.57/4.70) and HTJ2K (4.201-4.203): pip install imagecodecs"
        ) from exc
    return imagecodecs


def _encode_jpeg_baseline(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame, mode="L").save(buf, format="JPEG", quality=90)
    return _strip_jfif(buf.getvalue())


def _jpeg_lossless(predictor: int) -> Callable[[np.ndarray], bytes]:
    def encode(frame: np.ndarray) -> bytes:
        return _strip_jfif(
            bytes(
                _imagecodecs().jpeg8_encode(
                    frame, lossless=True, predictor=predictor, bitspersample=12
                )
            )
        )

    return encode


def _htj2k(*, reversible: bool, tlm: bool) -> Callable[[np.ndarray], bytes]:
    def encode(frame: np.ndarray) -> bytes:
        # OpenJPH (via imagecodecs) always writes RPCL progression and a
        # 16-bit SIZ precision for uint16 input, hence BitsStored 16 for HTJ2K.
        # Level is OpenJPH's quantisation step (lossy only).
        return bytes(
            _imagecodecs().htj2k_encode(
                frame,
                reversible=reversible,
                level=None if reversible else 0.0001,
                tlm=tlm,
            )
        )

    return encode


_FRAME_ENCODERS: Final[dict[str, Callable[[np.ndarray], bytes]]] = {
    JPEGBaseline8Bit: _encode_jpeg_baseline,
    JPEGLossless: _jpeg_lossless(predictor=7),  # non-SV1 predictor: truly 4.57
    JPEGLosslessSV1: _jpeg_lossless(predictor=1),
    HTJ2KLossless: _htj2k(reversible=True, tlm=False),
    # PS3.5 A.4.11: RPCL progression and a TLM marker segment.
    HTJ2KLosslessRPCL: _htj2k(reversible=True, tlm=True),
    HTJ2K: _htj2k(reversible=False, tlm=False),
}

#: Syntaxes ``write_ct_series(signed=True)`` refuses: JPEG Baseline holds
#: 8-bit unsigned samples only and imagecodecs' lossless JPEG encoder
#: rejects int16 input.
_UNSIGNED_ONLY: Final[frozenset[str]] = frozenset({JPEGBaseline8Bit, JPEGLossless, JPEGLosslessSV1})

#: Keyword arguments for ``Dataset.compress`` per pydicom-encodable syntax.
_COMPRESS_KWARGS: Final[dict[str, dict[str, Any]]] = {
    RLELossless: {},
    JPEGLSLossless: {},
    JPEGLSNearLossless: {"jls_error": 2},
    JPEG2000Lossless: {},
    JPEG2000: {"j2k_cr": [4.0]},
}

_LOSSY_METHOD: Final[dict[str, str]] = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
    JPEG2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
}


# ---------------------------------------------------------------------------
# Series writer
# ---------------------------------------------------------------------------


def _uid(*parts: object) -> UID:
    """Deterministic UID (pydicom root + SHA-512 of the parts)."""
    return generate_uid(entropy_srcs=[repr(p) for p in parts])


def write_ct_series(
    directory: str | os.PathLike[str],
    transfer_syntax: str = ExplicitVRLittleEndian,
    slices: int = 5,
    rows: int = 64,
    columns: int = 64,
    *,
    seed: int = 0,
    patient_id: str = "SEGNODE-SYN-0001",
    patient_name: str = "Synthetic^Phantom",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    pixel_spacing: tuple[float, float] = (0.8, 0.8),
    slice_thickness: float = 2.5,
    study_date: str = "20240115",
    filename_prefix: str = "CT",
    orientation: Sequence[float] = AXIAL,
    slice_step: float | None = None,
    signed: bool = False,
    rescale: Sequence[tuple[float, float]] | None = None,
) -> list[Path]:
    """Write a synthetic single-frame CT series as Part-10 files.

    Each slice is a *CT Image Storage* instance with the full set of
    attributes a segmentation node relies on (one study, series and frame of
    reference; Image Position/Orientation; Pixel Spacing; Slice Thickness;
    Rescale Slope/Intercept; patient and study identification), and its
    pixel data is really encoded in `transfer_syntax`. Everything, UIDs
    included, is derived from the arguments, so two calls with the same
    arguments write byte-identical files; the transfer syntax is part of the
    UID entropy so series of different syntaxes never share SOP Instance UIDs.

    Parameters
    ----------
    directory : str or os.PathLike
        Output folder, created if missing.
    transfer_syntax : str
        One of :data:`TRANSFER_SYNTAXES`.
    slices, rows, columns : int
        Number of slices and in-plane size.
    seed : int
        Seeds the phantom noise and the UIDs; change it to get a different
        study with otherwise equal arguments.
    patient_id, patient_name, study_date : str
        Identification written into every slice.
    study_instance_uid, series_instance_uid : str, optional
        Override the derived UIDs (e.g. to put several series in one study).
    pixel_spacing : tuple of float
        Row and column spacing in mm.
    slice_thickness : float
        Slice thickness, and spacing between slice centres unless
        `slice_step` is given, in mm.
    filename_prefix : str
        Files are named ``{prefix}{index:04d}.dcm``.
    orientation : sequence of 6 float
        ImageOrientationPatient: the row then column direction cosines
        (:data:`AXIAL`, :data:`SAGITTAL`, :data:`CORONAL` or any oblique
        pair of orthonormal vectors). Slice ``i`` lies at ``i * slice_step``
        along the normal (row x column), and every image is centred on that
        normal, so a reader can check positions independently.
    slice_step : float, optional
        Signed distance in mm from one slice to the next along the normal;
        `slice_thickness` by default. A negative step writes the slices in
        decreasing position (InstanceNumber 1 is the highest slice), as many
        scanners do, without changing the phantom: slice ``i`` of
        :func:`phantom_hu` is still InstanceNumber ``i + 1``.
    signed : bool
        Store HU as signed values (PixelRepresentation 1, intercept 0) instead
        of unsigned ``HU + 1024``. Refused (``ValueError``) for the syntaxes
        whose encoders here take unsigned samples only (``_UNSIGNED_ONLY``).
    rescale : sequence of (slope, intercept), optional
        One RescaleSlope/RescaleIntercept pair per slice, to write series whose
        slices are scaled differently (some scanners do this per slice).
        Stored values are ``rint((HU - intercept) / slope)``; a pair that
        would not fit the stored bits raises ``ValueError``.

    Returns
    -------
    list of pathlib.Path
        The written files in slice order (InstanceNumber 1..slices, stepping
        `slice_step` along the normal).

    Notes
    -----
    16-bit syntaxes store ``HU + 1024`` (BitsAllocated 16, BitsStored 12,
    unsigned; HTJ2K uses BitsStored 16 because OpenJPH writes 16-bit
    precision for 16-bit input). JPEG Baseline stores 8-bit values with
    RescaleSlope 8 (BitsAllocated 8): process 1 cannot carry more than 8 bits.
    The CT Image IOD strictly wants BitsAllocated 16, so dciodvfy flags
    these 8-bit files; every parser and decoder reads them fine. Lossy
    syntaxes carry Lossy Image Compression attributes and ImageType DERIVED.
    """
    ts = UID(transfer_syntax)
    if ts not in TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {ts!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    eight_bit = ts in EIGHT_BIT_TRANSFER_SYNTAXES
    if signed and ts in _UNSIGNED_ONLY:
        raise ValueError(f"signed series cannot be written in {ts.keyword} here (see _UNSIGNED_ONLY)")
    if rescale is not None and len(rescale) != slices:
        raise ValueError(f"rescale needs one (slope, intercept) per slice, got {len(rescale)}")
    lossy = ts in LOSSY_TRANSFER_SYNTAXES
    hu = phantom_hu(slices, rows, columns, seed=seed)
    bits_stored = 8 if eight_bit else (16 if ts in _HTJ2K_SYNTAXES else 12)
    scaling = _slice_scaling(slices, eight_bit, signed, rescale)
    stored = _scaled_values(hu, scaling, bits_stored, signed)
    row_cosines, column_cosines, normal = _orientation_axes(orientation)
    step = slice_thickness if slice_step is None else slice_step

    key = (seed, str(ts), slices, rows, columns, patient_id)
    study_uid = UID(study_instance_uid) if study_instance_uid else _uid("study", *key)
    series_uid = UID(series_instance_uid) if series_instance_uid else _uid("series", *key)
    for_uid = _uid("frame-of-reference", series_uid)

    # The first pixel sits so that the image centre lies on the normal
    # through the patient origin (for axial: x and y centred, as before).
    corner = -(
        (columns - 1) * pixel_spacing[1] / 2.0 * row_cosines
        + (rows - 1) * pixel_spacing[0] / 2.0 * column_cosines
    )

    paths: list[Path] = []
    for index in range(slices):
        frame = np.ascontiguousarray(stored[index])
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED" if lossy else "ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid("instance", series_uid, index)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AcquisitionTime = ds.ContentTime = f"1200{index % 60:02d}"
        ds.AccessionNumber = f"ACC{seed:06d}"
        ds.Modality = "CT"
        ds.Manufacturer = "segnode synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic phantom"
        ds.SeriesDescription = f"Phantom {ts.keyword}"[:64]
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{slice_thickness:g}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        along_normal = index * step
        ds.ImagePositionPatient = [_ds(v) for v in corner + along_normal * normal]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(along_normal)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.PixelSpacing = [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"]
        ds.BitsAllocated = 8 if eight_bit else 16
        ds.BitsStored = bits_stored
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        slope, intercept = scaling[index]
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU"

        raw_size = frame.nbytes
        if ts in _COMPRESS_KWARGS:
            ds.compress(ts, frame, generate_instance_uid=False, **_COMPRESS_KWARGS[ts])
        elif ts in _FRAME_ENCODERS:
            ds.PixelData = encapsulate([_FRAME_ENCODERS[ts](frame)])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        elif ts == ExplicitVRBigEndian:
            # pydicom writes OW values verbatim, so swap words ourselves.
            ds.PixelData = frame.astype(frame.dtype.newbyteorder(">")).tobytes()
            ds["PixelData"].VR = "OW"
        else:
            ds.PixelData = frame.tobytes()
            ds["PixelData"].VR = "OB" if eight_bit else "OW"

        if lossy:
            compressed = _encapsulated_size(ds.PixelData)
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = f"{raw_size / compressed:.4f}"[:16]
            ds.LossyImageCompressionMethod = _LOSSY_METHOD[ts]

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ts
        ds.file_meta = meta

        path = out / f"{filename_prefix}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths



def write_enhanced_ct(
    directory: str | os.PathLike[str],
    transfer_syntax: str = ExplicitVRLittleEndian,
    slices: int = 5,
    rows: int = 64,
    columns: int = 64,
    *,
    filename: str = "enhanced.dcm",
    **series_options: Any,
) -> Path:
    """Write the :func:`write_ct_series` phantom as one multi-frame instance.

    The single-frame series is written to a temporary folder and converted
    by highdicom into a *Legacy Converted Enhanced CT Image* (PS3.3 A.70):
    one instance whose frames are placed by the Shared and Per-frame
    Functional Groups (Plane Position, Plane Orientation, Pixel Measures,
    Pixel Value Transformation), the layout of Enhanced CT and PET too.
    Frames keep the source's encoding, so any :data:`TRANSFER_SYNTAXES`
    member works.

    Parameters
    ----------
    directory : str or os.PathLike
        Output folder, created if missing.
    transfer_syntax : str
        Transfer syntax of the frames (and the file).
    slices, rows, columns : int
        As for :func:`write_ct_series`.
    filename : str
        Name of the file written in `directory`.
    **series_options
        Any other keyword argument of :func:`write_ct_series` (orientation,
        slice_step, rescale, seed...). Frame ``i`` is the phantom's slice
        ``i`` in every case: highdicom is asked not to re-sort the frames.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom import dcmread

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segnode-enhanced-") as tmp:
        paths = write_ct_series(tmp, transfer_syntax, slices, rows, columns, **series_options)
        sources = [dcmread(path) for path in paths]
    first = sources[0]
    image = LegacyConvertedEnhancedCTImage(
        sources,
        series_instance_uid=_uid("enhanced-series", first.SeriesInstanceUID),
        series_number=2,
        sop_instance_uid=_uid("enhanced-instance", first.SeriesInstanceUID),
        instance_number=1,
        include_dimension_index=False,
    )
    path = out / filename
    image.save_as(path, enforce_file_format=True)
    return path


def _encapsulated_size(value: bytes) -> int:
    """Total size of the fragments in an encapsulated Pixel Data value."""
    from pydicom.encaps import generate_frames

    return sum(len(f) for f in generate_frames(value, number_of_frames=1))


# ---------------------------------------------------------------------------
# Byte-identity helpers
# ---------------------------------------------------------------------------


def file_meta_length(data: bytes) -> int:
    """Return the offset of the first data set byte in a Part-10 file image.

    The file meta group is parsed element by element (always Explicit VR
    Little Endian, PS3.10 7.1) rather than trusting (0002,0000) Group Length,
    since senders occasionally write a stale group length.

    Parameters
    ----------
    data : bytes
        Whole file content, starting with the 128-byte preamble.

    Returns
    -------
    int
        Offset just past the last group 0002 element.
    """
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part-10 file (no DICM prefix)")
    pos = 132
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
    while pos + 8 <= len(data):
        group, _elem = struct.unpack("<HH", data[pos : pos + 4])
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in long_vrs:
            (length,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            pos += 12 + length
        else:
            (length,) = struct.unpack("<H", data[pos + 6 : pos + 8])
            pos += 8 + length
    return pos


def dataset_bytes(path: str | os.PathLike[str], *, inflate: bool = True) -> bytes:
    """Return the encoded data set of a Part-10 file, without preamble/meta.

    This is what a C-STORE carries on the wire, so comparing it between a
    file that was sent and the file a receiver stored shows whether the
    receiver (and sender) kept the instance byte for byte; the file meta is
    excluded because every writer fills in its own Implementation Class UID,
    Source AE Title and so on.

    Parameters
    ----------
    path : str or os.PathLike
        A Part-10 file.
    inflate : bool
        For Deflated Explicit VR Little Endian, return the inflated data set
        (default) instead of the raw deflate stream. Two deflaters at
        different levels give different bytes for the same data set, so the
        inflated form is the one worth comparing.

    Returns
    -------
    bytes
        The data set bytes after the file meta information.
    """
    data = Path(path).read_bytes()
    body = data[file_meta_length(data) :]
    if inflate and _transfer_syntax_of(data) == DeflatedExplicitVRLittleEndian:
        return zlib.decompress(body, -zlib.MAX_WBITS)
    return body


def _transfer_syntax_of(data: bytes) -> str:
    """Transfer Syntax UID from a Part-10 file image's meta group."""
    i = data.find(b"\x02\x00\x10\x00UI", 132)
    if i < 0:
        raise ValueError("no (0002,0010) Transfer Syntax UID in file meta")
    (length,) = struct.unpack("<H", data[i + 6 : i + 8])
    return data[i + 8 : i + 8 + length].rstrip(b"\x00 ").decode("ascii")


def stored(volume_array: np.ndarray, affine: np.ndarray, axes, flips) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored in another array order: `axes` permutes, then
    `flips` reverses, with the affine moved so that every voxel keeps its
    patient position."""
    array = volume_array.transpose(axes)
    moved = affine.copy()
    moved[:3, :3] = affine[:3, :3][:, list(axes)]
    for axis, flip in enumerate(flips):
        if flip:
            size = array.shape[axis]
            moved[:3, 3] += moved[:3, axis] * (size - 1)
            moved[:3, axis] *= -1
            array = np.flip(array, axis)
    return array, moved
