"""Arrival check benchmark: the full decode against today's header read and the store's write.

For each instance kind, per instance and in one run:

* ``check``: :func:`node.receive.dataset_check.check_instance`, every element
  converted and Pixel Data checked by its structure;
* ``header``: ``pydicom.dcmread(path, stop_before_pixels=True)``, what
  identifying an instance costs without the check;
* ``store``: writing the same bytes to a temporary name, fsync, rename and
  folder fsync (:func:`dicomio.files.write_atomically`, the store's idiom),
  what every instance costs on arrival anyway.

Kinds: a 512x512 uncompressed CT slice, a JPEG 2000 slice (the Siemens
series of ../shared/data when present, else a synthetic 512x512 one), a
deflated 512x512 slice, and a 50-frame 512x512 Legacy Converted Enhanced CT
(26 MB). The median of ``--repeat`` runs is printed in ms, with the ratios.

    python bench/validation.py --repeat 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dicomio.files import write_atomically  # noqa: E402
from node.receive.dataset_check import check_instance  # noqa: E402
from tests.synthetic import write_ct_series, write_enhanced_ct  # noqa: E402

SIEMENS = REPO.parent / "shared" / "data" / "ct-abdomen-siemens" / "dicom"
LIMIT = 1 << 30


def instances(folder: Path) -> list[tuple[str, Path]]:
    def slice_of(syntax: str) -> Path:
        return write_ct_series(folder / syntax, syntax, slices=1, rows=512, columns=512)[0]

    kinds = [("512x512 CT, explicit VR LE", slice_of(ExplicitVRLittleEndian))]
    if SIEMENS.is_dir():
        kinds.append(("Siemens CT slice, JPEG 2000", sorted(SIEMENS.iterdir())[0]))
    else:
        kinds.append(("512x512 CT, JPEG 2000 lossless (synthetic)", slice_of(JPEG2000Lossless)))
    kinds.append(("512x512 CT, deflated", slice_of(DeflatedExplicitVRLittleEndian)))
    enhanced = write_enhanced_ct(folder / "enhanced", slices=50, rows=512, columns=512)
    kinds.append(("50-frame 512x512 enhanced CT", enhanced))
    return kinds


def median_ms(action: Callable[[], object], repeat: int) -> float:
    action()  # warm the page cache and imports
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(name: str, path: Path, folder: Path, repeat: int) -> str:
    meta = pydicom.filereader.read_file_meta_info(path)
    sop_class, sop_instance = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    data = path.read_bytes()
    check = median_ms(lambda: check_instance(path, sop_class, sop_instance, LIMIT), repeat)
    header = median_ms(lambda: pydicom.dcmread(path, stop_before_pixels=True), repeat)
    store = median_ms(lambda: write_atomically(folder / "stored.dcm", data), repeat)
    return (
        f"{name:44s} {len(data) / 1e6:8.2f} {check:8.2f} {header:8.2f} {store:8.2f} "
        f"{check / header:8.1f} {check / store:8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="runs per measure (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segnode-bench-validation-") as tmp:
        folder = Path(tmp)
        kinds = instances(folder)
        columns = ("MB", "check", "header", "store", "chk/hdr", "chk/store")
        print(f"{'instance (ms per instance)':44s} " + " ".join(f"{c:>8s}" for c in columns))
        for name, path in kinds:
            print(measure(name, path, folder, args.repeat))


if __name__ == "__main__":
    main()
