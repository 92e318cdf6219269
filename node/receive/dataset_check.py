"""Decode a received instance the way the pipeline will, before success is sent.

A C-STORE success tells the sender it may forget the instance, so the node
gives it only to an instance the pipeline can read. :func:`check_instance`
reads the spooled file (preamble, File Meta Information, then the data set
as received) once, front to back, and

* converts every element, nested sequences included, with pydicom's own
  conversion and default settings (``pydicom.dataelem.convert_raw_data_element``,
  as ``dcmread`` in dicomio/series.py does on access), so that an element
  pydicom cannot decode is refused here, naming it, instead of failing the
  series' job later. What pydicom only warns about (invalid UI, IS or DA
  text, an unknown Specific Character Set, undecodable characters) is
  accepted, as the pipeline accepts it;
* refuses what pydicom reads without complaint but into something else than
  was sent: a value or item running past the end of its container, an item
  without the Item tag, a sequence or item without its delimiter, a stray
  delimiter that ends the data set early. Fewer trailing bytes than an
  element header are ignored, as pydicom ignores them;
* refuses text that pydicom keeps as text in the DS and IS attributes that
  dicomio/series.py turns into numbers (``_READ_AS_NUMBERS``);
* checks Pixel Data by its structure, without decoding it: present where
  Rows is; the image attributes pydicom's decoders require, present and in
  range; the native length against them; the encapsulated item structure
  and fragment count against the frames (PS3.5 section 8.2 and A.4);
* then identifies the instance (:func:`node.receive.validation.identify`).

Memory stays bounded whatever the instance's size (the node serves up to 64
associations at once): values larger than ``BULK_BYTES`` are checked by
their structure and skipped, never read whole, and a deflated data set is
inflated as a stream, 64 KiB at a time, stopping as soon as it passes
``node.max_instance_bytes``; nothing is written to disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.hooks import hooks
from pydicom.multival import MultiValue
from pydicom.pixels.common import PhotometricInterpretation
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR, PersonName

from node.receive.validation import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    InstanceIdentity,
    InvalidDataset,
    identify,
)

#: Values larger than this are checked by their structure and never held
#: whole. Only bulk data (Pixel Data, OB/OW/UN, waveforms) reaches it; other
#: values are typically tens of kilobytes at most (Siemens CSA headers), and
#: per-frame functional groups are sequences, walked item by item.
BULK_BYTES: Final = 4 << 20

#: Bytes read, or inflated, at a time.
_CHUNK: Final = 64 << 10

#: Deepest sequence nesting walked. Real objects nest a few levels (SR
#: content trees about ten); the limit keeps a hostile data set from
#: exhausting the stack of the receiving thread.
_MAX_DEPTH: Final = 64

#: DS and IS attributes that dicomio/series.py converts with float() or
#: int(), at any depth (functional group items included). pydicom keeps an
#: invalid DS or IS value as text with no more than a warning, so the
#: pipeline would fail on these while reading them elsewhere is harmless.
_READ_AS_NUMBERS: Final = frozenset(
    {
        0x00280030,  # PixelSpacing
        0x00200032,  # ImagePositionPatient
        0x00200037,  # ImageOrientationPatient
        0x00281053,  # RescaleSlope
        0x00281052,  # RescaleIntercept
        0x00280008,  # NumberOfFrames
    }
)

#: Top-level attributes kept while walking: the image attributes Pixel Data
#: is checked against and the identity that :func:`identify` validates.
#: Everything else is converted and dropped.
_KEPT: Final = frozenset(
    {
        0x00080016,  # SOPClassUID
        0x00080018,  # SOPInstanceUID
        0x00080060,  # Modality
        0x0020000D,  # StudyInstanceUID
        0x0020000E,  # SeriesInstanceUID
        0x00280002,  # SamplesPerPixel
        0x00280004,  # PhotometricInterpretation
        0x00280006,  # PlanarConfiguration
        0x00280008,  # NumberOfFrames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x00280100,  # BitsAllocated
        0x00280101,  # BitsStored
        0x00280103,  # PixelRepresentation
        0x00287FE0,  # PixelDataProviderURL
    }
)

#: Photometric Interpretations pydicom decodes (PS3.3 C.7.6.3.1.2, retired ones included).
_PHOTOMETRIC: Final = frozenset(term.value for term in PhotometricInterpretation)

_SPECIFIC_CHARACTER_SET: Final = 0x00080005
#: Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.3 C.7.6.3).
_PIXEL_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_PIXEL_DATA: Final = 0x7FE00010

# Item and delimitation tags (PS3.5 section 7.5).
_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITATION: Final = 0xFFFEE00D
_SEQUENCE_DELIMITATION: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF

#: Bytes per value of the binary VRs whose conversion fails on a length that
#: is not a multiple (pydicom's BytesLengthException); checked on bulk
#: values, which are not converted.
_VALUE_SIZE: Final = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}

_KNOWN_VRS: Final = frozenset(vr.value for vr in VR)


class _EndOfData(Exception):
    """The data set (or an item) ended inside an element."""


class _Refused(Exception):
    """A problem found while walking; the walker adds which element, and where, on the way out.

    `element` is the innermost element concerned and `path` the sequence
    items that lead to it, so the detail starts with the element (the Error
    Comment keeps only 64 characters, PS3.5 6.2 LO). A problem of the whole
    stream (`whole`: a corrupt or oversized deflate stream) names none.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        problem: str,
        *,
        element: str = "",
        path: str = "",
        whole: bool = False,
    ):
        super().__init__(problem)
        self.status = status
        self.reason = reason
        self.problem = problem
        self.element = element
        self.path = path
        self.whole = whole

    def within(self, outer: str) -> _Refused:
        """The same problem seen one level out: `outer` is an element's name or "item N"."""
        if self.whole:
            return self
        is_item = outer.startswith("item")
        if not self.element:
            if is_item:
                return _Refused(self.status, self.reason, f"{outer}: {self.problem}")
            return _Refused(self.status, self.reason, self.problem, element=outer)
        path = f"{outer}{' > ' if is_item else ' '}{self.path}" if self.path else outer
        return _Refused(self.status, self.reason, self.problem, element=self.element, path=path)

    @property
    def detail(self) -> str:
        text = f"{self.element} {self.problem}" if self.element else self.problem
        return f"{text} (in {self.path})" if self.path else text


def _cannot_decode(problem: str) -> _Refused:
    return _Refused(STATUS_CANNOT_UNDERSTAND, "cannot-decode", problem)


def _bad_pixels(problem: str) -> _Refused:
    return _Refused(STATUS_CANNOT_UNDERSTAND, "invalid-pixel-data", problem)


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag) or ("private" if BaseTag(tag).is_private else "unknown")
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def check_instance(
    path: str | os.PathLike[str],
    context_sop_class: str,
    command_sop_instance: str,
    max_instance_bytes: int,
) -> InstanceIdentity:
    """Decode the spooled C-STORE file at `path` fully and return its identity.

    Parameters
    ----------
    path : str or os.PathLike
        The received instance as pynetdicom spools it: 128-byte preamble,
        "DICM", File Meta Information (whose Transfer Syntax UID is the
        presentation context's), then the data set exactly as received.
    context_sop_class, command_sop_instance : str
        As for :func:`node.receive.validation.identify`.
    max_instance_bytes : int
        ``node.max_instance_bytes``: the largest file, and the largest
        inflated data set, accepted.

    Raises
    ------
    InvalidDataset
        0xA700 ("too-large") for an instance over the size limit; 0xC000
        ("cannot-decode", "invalid-pixel-data") for one the pipeline could
        not read, the detail starting with the element concerned; the
        refusals of :func:`identify`.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_instance_bytes:
        raise InvalidDataset(
            STATUS_OUT_OF_RESOURCES,
            "too-large",
            f"instance of {size} bytes exceeds {max_instance_bytes} bytes (node.max_instance_bytes)",
        )
    with open(path, "rb") as handle:
        syntax = _read_file_meta(handle, path)
        stream = _Stream(handle, size - handle.tell(), syntax.deflated, max_instance_bytes)
        walk = _Walk(stream, syntax)
        try:
            top = walk.dataset(_looks_implicit(stream.peek(6), syntax.implicit), None, default_encoding, 0)
            stream.finish()
        except _Refused as exc:
            raise InvalidDataset(exc.status, exc.reason, exc.detail) from exc
    # Pixel Data is Type 1C in the Image Pixel Module, which Rows belongs to:
    # required unless a Pixel Data Provider URL stands for it (PS3.3 C.7.6.3).
    if "Rows" in top and not walk.saw_pixels and "PixelDataProviderURL" not in top:
        raise InvalidDataset(
            STATUS_CANNOT_UNDERSTAND, "invalid-pixel-data", "(7FE0,0010) PixelData is missing; Rows is not"
        )
    return identify(top, context_sop_class, command_sop_instance)


@dataclass(frozen=True)
class _Syntax:
    """How the data set is encoded (PS3.5 section 10)."""

    uid: str
    implicit: bool
    little: bool
    deflated: bool
    encapsulated: bool


def _read_file_meta(handle: BinaryIO, path: Path) -> _Syntax:
    """Read past the File Meta Information; the transfer syntax it names."""
    try:
        read_preamble(handle, False)
        meta = read_dataset(handle, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
        uid = UID(str(meta.TransferSyntaxUID))
        return _Syntax(uid, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated, uid.is_encapsulated)
    except Exception as exc:  # pydicom raises several types for a broken meta group
        raise InvalidDataset(
            STATUS_CANNOT_UNDERSTAND,
            "cannot-decode",
            f"file meta information cannot be read: {exc} ({path})",
        ) from exc


class _Stream:
    """The data set read forwards, from the file or inflated on the way.

    ``position`` counts bytes of the (inflated) data set consumed. A
    deflated data set (PS3.5 A.5: raw deflate, RFC 1951, no zlib header)
    is inflated at most ``_CHUNK`` bytes at a time, and inflating stops with
    0xA700 once it passes `limit`.
    """

    def __init__(self, handle: BinaryIO, stored: int, deflated: bool, limit: int):
        self._handle = handle
        self._unread = stored  # stored bytes not yet read from the file
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        self._limit = limit
        self._inflated = 0
        self._buffer = b""
        self._at = 0
        self.position = 0

    def _more(self) -> bytes:
        if self._inflater is None:
            chunk = self._handle.read(min(_CHUNK, self._unread))
            self._unread -= len(chunk)
            return chunk
        while True:
            data = self._inflater.unconsumed_tail
            if not data and self._unread:
                data = self._handle.read(min(_CHUNK, self._unread))
                self._unread -= len(data)
            try:
                # Empty input still drains output the inflater holds back.
                chunk = self._inflater.decompress(data, _CHUNK)
            except zlib.error as exc:
                problem = f"deflated data set is corrupt: {exc}"
                raise _Refused(STATUS_CANNOT_UNDERSTAND, "cannot-decode", problem, whole=True) from exc
            self._inflated += len(chunk)
            if self._inflated > self._limit:
                raise _Refused(
                    STATUS_OUT_OF_RESOURCES,
                    "too-large",
                    f"data set inflates beyond {self._limit} bytes (node.max_instance_bytes)",
                    whole=True,
                )
            if chunk or self._inflater.eof or not data:
                return chunk

    def _fill(self, count: int) -> bool:
        """Buffer at least `count` bytes; False if the data set ends before."""
        if len(self._buffer) - self._at >= count:
            return True
        parts = [self._buffer[self._at :]]
        have = len(parts[0])
        while have < count:
            chunk = self._more()
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self._buffer, self._at = b"".join(parts), 0
        return have >= count

    def peek(self, count: int) -> bytes:
        self._fill(count)
        return self._buffer[self._at : self._at + count]

    def read(self, count: int) -> bytes:
        if not self._fill(count):
            raise _EndOfData
        value = self._buffer[self._at : self._at + count]
        self._at += count
        self.position += count
        return value

    def skip(self, count: int) -> None:
        """Move past `count` bytes without holding them."""
        buffered = len(self._buffer) - self._at
        if count <= buffered:
            self._at += count
            self.position += count
            return
        self._buffer, self._at = b"", 0
        self.position += buffered
        left = count - buffered
        if self._inflater is None:
            if left > self._unread:
                raise _EndOfData
            self._handle.seek(left, os.SEEK_CUR)
            self._unread -= left
            self.position += left
            return
        while left:
            step = min(left, _CHUNK)
            self.read(step)
            left -= step

    def finish(self) -> None:
        """Refuse a deflate stream that ends without its final block."""
        if self._inflater is not None and not self._inflater.eof:
            raise _cannot_decode("deflated data set is truncated (no final deflate block)")


class _Walk:
    """Reads data sets element by element, converting small values and checking bulk ones."""

    def __init__(self, stream: _Stream, syntax: _Syntax):
        self._stream = stream
        self._syntax = syntax
        self._header = struct.Struct("<HHI" if syntax.little else ">HHI")
        self._explicit_header = struct.Struct("<HH2sH" if syntax.little else ">HH2sH")
        self._long_length = struct.Struct("<I" if syntax.little else ">I")
        self.saw_pixels = False  # a top-level Pixel, Float or Double Float Pixel Data element

    def dataset(
        self, implicit: bool, end: int | None, encoding: str | MutableSequence[str], depth: int
    ) -> Dataset:
        """Walk one data set: the top level (to the end of the data) or an item.

        `end` is where an item of defined length ends; None for the top level
        and for items of undefined length, which end at their delimiter.
        Returns the kept elements (private creators, the character set, and
        at the top level ``_KEPT``).
        """
        stream = self._stream
        kept = Dataset()
        while True:
            if end is not None:
                if stream.position == end:
                    return kept
                if stream.position > end:
                    raise _cannot_decode(f"the last element runs {stream.position - end} bytes past its item")
            elif depth == 0 and len(rest := stream.peek(8)) < 8:
                # pydicom stops silently where fewer bytes than an element header remain.
                stream.skip(len(rest))
                return kept
            start = stream.position
            if (next_header := self._next_header()) is None:
                raise _cannot_decode("item ends without an Item Delimitation Item")
            header, tag, length = next_header
            if tag == _ITEM_DELIMITATION and end is None and depth > 0:
                return kept
            if tag >> 16 == 0xFFFE:
                raise _cannot_decode(f"unexpected {_name(tag)} tag at byte {start} of a data set")
            try:
                self._element(tag, header, length, implicit, end, encoding, depth, kept)
            except _Refused as exc:
                raise exc.within(_name(tag)) from exc
            if tag == _SPECIFIC_CHARACTER_SET and tag in kept:
                encoding = convert_encodings(kept[tag].value)

    def _element(
        self,
        tag: int,
        header: bytes,
        length: int,
        implicit: bool,
        end: int | None,
        encoding: str | MutableSequence[str],
        depth: int,
        kept: Dataset,
    ) -> None:
        stream = self._stream
        vr: str | None = None
        if not implicit:
            _, _, raw_vr, short_length = self._explicit_header.unpack(header)
            # pydicom reads an element whose VR is not two capitals as
            # implicit VR (config.assume_implicit_vr_switch, on by default).
            if b"AA" <= raw_vr <= b"ZZ":
                vr = raw_vr.decode("latin-1")
                if vr not in _KNOWN_VRS:
                    raise _cannot_decode(f"has an unknown VR {vr!r}")
                length = short_length
                if vr in EXPLICIT_VR_LENGTH_32:
                    try:
                        length = self._long_length.unpack(stream.read(4))[0]
                    except _EndOfData:
                        raise _cannot_decode("header runs past the end of the data set") from None
        value_tell = stream.position
        raw = RawDataElement(BaseTag(tag), vr, length, None, value_tell, vr is None, self._syntax.little)
        found: dict = {}
        hooks.raw_element_vr(raw, found, encoding=encoding, ds=kept)
        vr = found["VR"]
        if raw.VR == VR.UN and length == _UNDEFINED:
            vr = VR.UN  # a sequence in implicit VR LE (PS3.5 6.2.2), whatever the dictionary says
        elif raw.VR == VR.UN and length >= 0xFFFF and not raw.tag.is_private:
            vr = VR.UN  # pydicom replaces UN by the dictionary's VR only for shorter values
        if length == _UNDEFINED:
            if vr in (VR.SQ, VR.UN):
                self._sequence(None, implicit or vr == VR.UN, encoding, depth)
            else:
                self._fragments(tag if depth == 0 else None, kept)
            return
        if end is not None and value_tell + length > end:
            raise _cannot_decode(f"value of {length} bytes runs past the end of its item")
        if vr == VR.SQ:
            # An explicit UN the dictionary calls SQ is a sequence in implicit VR LE.
            self._sequence(value_tell + length, implicit or raw.VR == VR.UN, encoding, depth)
            return
        try:
            if depth == 0 and tag in _PIXEL_TAGS:
                self._native_pixels(tag, length, kept)
                stream.skip(length)
            elif length > BULK_BYTES:
                self._bulk(tag, vr, length)
                stream.skip(length)
            else:
                raw = raw._replace(VR=vr, value=stream.read(length))
                self._convert(raw, encoding, depth, kept)
        except _EndOfData:
            raise _cannot_decode(f"value of {length} bytes runs past the end of the data set") from None

    def _convert(
        self, raw: RawDataElement, encoding: str | MutableSequence[str], depth: int, kept: Dataset
    ) -> None:
        try:
            element = convert_raw_data_element(raw, encoding=encoding, ds=kept)
            _touch(element)
            if raw.tag == _SPECIFIC_CHARACTER_SET:
                convert_encodings(element.value)  # as dcmread does, which fails on a NUL in it
        except Exception as exc:  # pydicom raises many types for values it cannot convert
            raise _cannot_decode(f"cannot be decoded: {exc}") from exc
        if " or " in element.VR and element.VR != "OB or OW" and len(raw.value or b"") % 2:
            # Dataset.__getitem__ re-reads an ambiguous US/SS/OW value as
            # 2-byte words once it knows the VR, and fails on an odd length.
            raise _cannot_decode(f"cannot be decoded: odd length {raw.length} for VR {element.VR}")
        if raw.tag in _READ_AS_NUMBERS:
            _require_numbers(element)
        tag = raw.tag
        if (depth == 0 and tag in _KEPT) or tag.is_private_creator or tag == _SPECIFIC_CHARACTER_SET:
            kept.add(element)

    def _bulk(self, tag: int, vr: str, length: int) -> None:
        """Check a value too large to convert by what its conversion would check."""
        size = _VALUE_SIZE.get(vr)
        if size and length % size:
            raise _cannot_decode(f"cannot be decoded: {length} bytes is not a multiple of {size} for VR {vr}")
        if tag in _READ_AS_NUMBERS:
            raise _cannot_decode(f"cannot be decoded: {length} bytes of numbers")

    def _next_header(self) -> tuple[bytes, int, int] | None:
        """The next element or item header as (its bytes, tag, length); None at the end of the data."""
        try:
            header = self._stream.read(8)
        except _EndOfData:
            return None
        group, element, length = self._header.unpack(header)
        return header, group << 16 | element, length

    def _sequence(
        self, end: int | None, implicit: bool, encoding: str | MutableSequence[str], depth: int
    ) -> None:
        """Walk the items of a sequence of defined (`end`) or undefined length."""
        if depth >= _MAX_DEPTH:
            raise _cannot_decode(f"nests sequences deeper than {_MAX_DEPTH}")
        stream = self._stream
        number = 0
        while end is None or stream.position < end:
            number += 1
            if (next_header := self._next_header()) is None:
                raise _cannot_decode("ends without a Sequence Delimitation Item")
            _, tag, length = next_header
            if tag == _SEQUENCE_DELIMITATION and end is None:
                return
            if tag != _ITEM:
                raise _cannot_decode(f"item {number} starts with ({tag >> 16:04X},{tag & 0xFFFF:04X}), "
                                     "not an Item tag")
            item_end = None if length == _UNDEFINED else stream.position + length
            if item_end is not None and end is not None and item_end > end:
                raise _cannot_decode(f"item {number} of {length} bytes runs past the end of the sequence")
            # Items may be implicit VR in an explicit VR data set, as pydicom allows.
            item_implicit = implicit or _looks_implicit(stream.peek(6), implicit)
            try:
                self.dataset(item_implicit, item_end, encoding, depth + 1)
            except _Refused as exc:
                raise exc.within(f"item {number}") from exc
        if stream.position != end:
            raise _cannot_decode(f"items run {stream.position - end} bytes past the sequence's length")

    def _fragments(self, pixel_tag: int | None, kept: Dataset) -> None:
        """Check an encapsulated value: offset table item, fragments, delimiter (PS3.5 A.4)."""
        if pixel_tag is not None:
            self.saw_pixels = True
        if pixel_tag is not None and not self._syntax.encapsulated:
            raise _bad_pixels(f"is encapsulated in the native transfer syntax {self._syntax.uid}")
        stream = self._stream
        fragments = -1  # the first item is the Basic Offset Table
        while True:
            if (next_header := self._next_header()) is None:
                raise _bad_pixels("ends without a Sequence Delimitation Item")
            _, tag, length = next_header
            if tag == _SEQUENCE_DELIMITATION:
                break
            if tag != _ITEM or length == _UNDEFINED:
                raise _bad_pixels(f"fragment {fragments + 1} is not an item of defined length")
            try:
                stream.skip(length)
            except _EndOfData:
                raise _bad_pixels("ends without a Sequence Delimitation Item") from None
            fragments += 1
        if pixel_tag is None:
            return
        frames = _image(kept, pixel_tag).frames
        if fragments < frames:
            raise _bad_pixels(f"has {max(fragments, 0)} fragments for {frames} frames")

    def _native_pixels(self, tag: int, length: int, kept: Dataset) -> None:
        """Check native pixel data's length against the image attributes (PS3.5 8.1.1)."""
        self.saw_pixels = True
        if self._syntax.encapsulated and tag == _PIXEL_DATA:
            raise _bad_pixels(f"is not encapsulated in the transfer syntax {self._syntax.uid}")
        expected = _image(kept, tag).native_bytes
        # pydicom reads the first `expected` bytes and only warns about excess
        # (a padding byte to an even length is required, PS3.5 7.1.1).
        if length < expected:
            raise _bad_pixels(f"holds {length} bytes; the image attributes need {expected}")


@dataclass(frozen=True)
class _Image:
    """The Image Pixel attributes that size Pixel Data (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int
    photometric: str

    @property
    def native_bytes(self) -> int:
        # YBR_FULL_422 stores two samples per pixel natively (PS3.3 C.7.6.3.1.2).
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples
        return (self.rows * self.columns * samples * self.frames * self.bits_allocated + 7) // 8


def _image(kept: Dataset, pixel_tag: int) -> _Image:
    """The image attributes read before Pixel Data, or a refusal.

    The rules are those pydicom's pixel decoders check before decoding
    (``pydicom.pixels.common.RunnerBase._validate_options``), so an image
    that passes here is one ``pixel_array`` will try to decode.
    """

    def number(keyword: str, allowed: Callable[[int], bool], default: int | None = None) -> int:
        value = kept.get(keyword)
        if value is None or value == "":
            if default is None:
                raise _bad_pixels(f"is present but {keyword} is missing")
            return default
        if not isinstance(value, int) or not allowed(value):
            raise _bad_pixels(f"is present but {keyword} is {value!r}")
        return value

    bits_allocated = number("BitsAllocated", lambda n: n == 1 or (n % 8 == 0 and 0 < n <= 64))
    if pixel_tag == _PIXEL_DATA:  # Float and Double Float Pixel Data have neither
        number("BitsStored", lambda n: 1 <= n <= bits_allocated)
        number("PixelRepresentation", lambda n: n in (0, 1))
    samples = number("SamplesPerPixel", lambda n: n in (1, 3))
    if samples == 3:
        number("PlanarConfiguration", lambda n: n in (0, 1))
    photometric = str(kept.get("PhotometricInterpretation", "")).strip()
    if photometric not in _PHOTOMETRIC:
        found = f"is {photometric[:20]!r}" if photometric else "is missing"
        raise _bad_pixels(f"is present but PhotometricInterpretation {found}")
    return _Image(
        rows=number("Rows", lambda n: 0 < n < 1 << 16),
        columns=number("Columns", lambda n: 0 < n < 1 << 16),
        samples=samples,
        bits_allocated=bits_allocated,
        frames=number("NumberOfFrames", lambda n: n > 0, default=1),
        photometric=photometric,
    )


def _looks_implicit(first: bytes, assumed: bool) -> bool:
    """Whether a data set whose first 6 bytes are `first` is implicit VR.

    pydicom decides this from the first element (filereader._is_implicit_vr)
    and reads the data set that way even against the transfer syntax, with
    a warning; senders that encode explicit VR on an implicit VR context
    exist, and the pipeline reads them.
    """
    if len(first) < 6:
        return assumed
    return not (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B)


def _touch(element: DataElement) -> None:
    """Decode what pydicom decodes lazily: person names (their character set)."""
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    for value in values:
        if isinstance(value, PersonName):
            str(value)


def _require_numbers(element: DataElement) -> None:
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    for value in values:
        if isinstance(value, str):
            raise _cannot_decode(f"cannot be decoded: {value[:32]!r} is not a number")
