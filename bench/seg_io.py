"""SEG benchmark: write a 117-segment DICOM-SEG with segnode, BINARY and
LABELMAP, and read each back with highdicom.

A synthetic 600-slice 512x512 CT grid (source headers only, in memory: the
SEG needs no source pixels) gets a label map with one ellipsoid blob per
TotalSegmentator v2 class, each spanning 20 to 140 slices like real organs,
so the BINARY SEG has about as many frames (segment-slices) as a whole-body
TotalSegmentator result. Each phase runs in its own process so that its
peak resident memory (``ru_maxrss``) is its own:

* write: ``dicomio.seg.write_seg`` (highdicom builds the object) and saving
  the file, after ``plan_segments`` (timed apart: the pipeline plans once,
  for the SR and every SEG format);
* read: ``highdicom.seg.segread`` and the label volume back
  (``get_volume(combine_segments=True)``), checked voxel for voxel.

The goals beside the figures are issue 14's.

    python bench/seg_io.py --slices 600
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import highdicom as hd  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import CTImageStorage, generate_uid  # noqa: E402

from dicomio.codes import TOTALSEGMENTATOR_V2_CLASSES, structure_code  # noqa: E402
from dicomio.seg import AlgorithmIdentity, LabelledStructure, plan_segments, write_seg  # noqa: E402
from dicomio.volume import SourceFrame, Volume  # noqa: E402

SPACING = (1.5, 0.8, 0.8)  # slice, row, column (mm)
FORMATS = ("binary", "labelmap")
#: Issue 14's goals for 117 segments over 512x512x600 (seconds); peak RSS under 1.5 GB either way.
WRITE_GOAL_S = {"binary": 8.0, "labelmap": 2.0}
READ_GOAL_S = {"labelmap": 3.0}
PEAK_GOAL_MB = 1500


def _uid(*parts: int) -> str:
    """Fixed UIDs (pydicom's root), so that every run writes the same object."""
    return generate_uid(entropy_srcs=["segnode bench/seg_io.py", *map(str, parts)])


def source_headers(slices: int, size: int) -> list[Dataset]:
    """Axial CT headers of a ``slices`` x ``size`` x ``size`` series, no pixel data."""
    headers = []
    for index in range(slices):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(3, index + 1)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = _uid(1), _uid(2), _uid(4)
        ds.Modality = "CT"
        ds.PatientID, ds.PatientName = "BENCH-0001", "Bench^Segnode"
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.StudyID = "19700101", "O", "BENCH", "1"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20240115", "120000", ""
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.SliceThickness = SPACING[0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-200.0, -200.0, index * SPACING[0]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        headers.append(ds)
    return headers


def volume_of(headers: list[Dataset], size: int) -> Volume:
    # Columns: slice (+z), row (+y), column (+x) steps; then the first voxel.
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = SPACING[0], SPACING[1], SPACING[2], 1.0
    affine[:3, 3] = headers[0].ImagePositionPatient
    first = headers[0]
    return Volume(
        array=np.zeros((len(headers), size, size), dtype=np.int16),
        affine=affine,
        frame_of_reference_uid=first.FrameOfReferenceUID,
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
        modality="CT",
        sources=tuple(SourceFrame(h.SOPClassUID, h.SOPInstanceUID) for h in headers),
    )


def blob_labels(slices: int, size: int, classes: int, seed: int = 0) -> np.ndarray:
    """One ellipsoid per label value, 20-140 slices long and 20-100 pixels across."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((slices, size, size), dtype=np.uint8)
    for value in range(1, classes + 1):
        extent = np.array([rng.integers(20, 141), rng.integers(20, 101), rng.integers(20, 101)])
        extent = np.minimum(extent, labels.shape)
        start = [int(rng.integers(0, n - e + 1)) for n, e in zip(labels.shape, extent, strict=True)]
        axes = [(np.arange(e) - (e - 1) / 2) / (e / 2) for e in extent]
        inside = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2 <= 1
        box = labels[tuple(slice(s, s + e) for s, e in zip(start, extent, strict=True))]
        box[inside] = value
    return labels


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_phase(path: Path, slices: int, size: int, seg_format: str) -> dict:
    headers = source_headers(slices, size)
    volume = volume_of(headers, size)
    labels = blob_labels(slices, size, len(TOTALSEGMENTATOR_V2_CLASSES))
    structures = [
        LabelledStructure(value, structure_code(name))
        for value, name in enumerate(TOTALSEGMENTATOR_V2_CLASSES, start=1)
    ]
    np.save(path.with_suffix(".npy"), labels)
    before = peak_mb()
    start = time.perf_counter()
    segments = plan_segments(labels, structures, series_instance_uid=volume.series_instance_uid)
    planned = time.perf_counter()
    seg = write_seg(
        volume, labels, structures, AlgorithmIdentity("TotalSegmentator", "2.4.0"), headers,
        series_number=300, series_description="Organs (TotalSegmentator)", device_serial_number="BENCH",
        series_instance_uid=_uid(5), sop_instance_uid=_uid(6), labelmap=seg_format == "labelmap",
        segments=segments,
    )
    built = time.perf_counter()
    seg.save_as(path, enforce_file_format=True)
    saved = time.perf_counter()
    return {
        "frames": int(seg.NumberOfFrames), "segments": len(segments), "file_mb": path.stat().st_size / 1e6,
        "plan_s": planned - start, "build_s": built - planned, "save_s": saved - built,
        "peak_mb": peak_mb(), "inputs_mb": before,
    }


def _flip_slices(count: int) -> np.ndarray:
    """Affine of index ``count - 1 - k``: the same grid with the slice axis reversed."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, count - 1
    return flip


def read_phase(path: Path) -> dict:
    expected = np.load(path.with_suffix(".npy"))
    before = peak_mb()
    start = time.perf_counter()
    seg = hd.seg.segread(path)
    parsed = time.perf_counter()
    volume = seg.get_volume(combine_segments=True)
    done = time.perf_counter()
    # The frames span only the slices that have a segment, in the order
    # highdicom chose: put them back on the source grid (axial, +z).
    array, affine = volume.array, volume.affine
    if affine[2, 0] < 0:
        array, affine = array[::-1], affine @ _flip_slices(array.shape[0])
    np.testing.assert_allclose(affine[:3, :3], volume_of(source_headers(1, 1), 1).affine[:3, :3])
    first = int(round(affine[2, 3] / SPACING[0]))
    # Segment numbers skip the classes that no voxel kept: back to label values.
    value_of_label = {
        structure_code(name).label: value for value, name in enumerate(TOTALSEGMENTATOR_V2_CLASSES, start=1)
    }
    to_value = np.zeros(len(TOTALSEGMENTATOR_V2_CLASSES) + 1, dtype=np.uint8)
    for number in seg.segment_numbers:  # a LABELMAP's background, segment 0, is not among them
        to_value[number] = value_of_label[seg.get_segment_description(number).SegmentLabel]
    full = np.zeros_like(expected)
    full[first : first + array.shape[0]] = to_value[array]
    return {
        "parse_s": parsed - start, "volume_s": done - parsed, "peak_mb": peak_mb(), "inputs_mb": before,
        "identical": bool(np.array_equal(full, expected)),
    }


def run_phase(phase: str, path: Path, slices: int, size: int, seg_format: str) -> dict:
    """Run one phase in a fresh interpreter and return what it measured."""
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--file", str(path), "--slices", str(slices),
         "--size", str(size), "--format", seg_format],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


_ROWS = ("frames", "file", "plan segments", "write (build + save)", "  build / save", "  peak RSS (before)",
         "read (segread + volume)", "  segread / volume", "  peak RSS (before)", "labels identical")


def _column(seg_format: str, written: dict, read: dict) -> list[str]:
    """One format's cells of the table, in the order of ``_ROWS``."""
    return [
        str(written["frames"]),
        f"{written['file_mb']:.0f} MB",
        f"{written['plan_s']:.1f} s",
        _against(f"{written['build_s'] + written['save_s']:.1f} s", WRITE_GOAL_S.get(seg_format)),
        f"{written['build_s']:.1f} s / {written['save_s']:.1f} s",
        _against(f"{written['peak_mb']:.0f} MB", PEAK_GOAL_MB) + f" ({written['inputs_mb']:.0f})",
        _against(f"{read['parse_s'] + read['volume_s']:.1f} s", READ_GOAL_S.get(seg_format)),
        f"{read['parse_s']:.1f} s / {read['volume_s']:.1f} s",
        _against(f"{read['peak_mb']:.0f} MB", PEAK_GOAL_MB) + f" ({read['inputs_mb']:.0f})",
        str(read["identical"]),
    ]


def _against(figure: str, goal: float | None) -> str:
    return figure if goal is None else f"{figure} (goal <= {goal:g})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--phase", choices=["write", "read"], help=argparse.SUPPRESS)
    parser.add_argument("--format", choices=FORMATS, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # highdicom's notes on synthetic headers are not the subject

    if args.phase == "write":
        print(json.dumps(write_phase(args.file, args.slices, args.size, args.format)))
        return 0
    if args.phase == "read":
        print(json.dumps(read_phase(args.file)))
        return 0

    results = {}
    with tempfile.TemporaryDirectory(prefix="segnode-bench-seg-") as tmp:
        for seg_format in FORMATS:
            path = Path(tmp) / f"{seg_format}.dcm"
            written = run_phase("write", path, args.slices, args.size, seg_format)
            results[seg_format] = (written, run_phase("read", path, args.slices, args.size, seg_format))
    written = results[FORMATS[0]][0]
    print(f"{written['segments']} segments, {args.slices}x{args.size}x{args.size}; "
          f"goals for 117 segments over 600x512x512")
    table = [_column(seg_format, *results[seg_format]) for seg_format in FORMATS]
    print(f"{'':26}" + "".join(f"{seg_format.upper():36}" for seg_format in FORMATS))
    for row, name in enumerate(_ROWS):
        print(f"{name:26}" + "".join(f"{column[row]:36}" for column in table))
    return 0 if all(read["identical"] for _, read in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
