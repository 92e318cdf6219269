"""Built-in segmenter: Dice against TotalSegmentator on the shared CT, and timing.

* Dice per structure on ../shared/data: the skeleton against the union of
  TotalSegmentator's bone classes (vertebrae, ribs, sternum, scapulae,
  clavicles, humeri, hips, femurs, sacrum, skull; costal cartilage is not
  bone) on the Siemens DICOM series, the lungs against the union of the
  lobes (left, right, both) on the 3 mm torso; the body, for which no
  reference exists, as the share of all labelled reference voxels inside
  it and the number of body voxels in outside air. The phantom's known
  truth is scored too. The Siemens reference was made on a 3 mm grid (its
  outlines run in steps of 3 pixels, and 13 of its 20 slices are
  distinct), so the ceiling for any full-resolution skeleton is printed:
  the Dice of ours against itself quantised to 3 mm.
* Timing: seconds for ``BuiltinSegmenter().segment`` on a synthetic
  512x512xN CT (the torso phantom of phantom/anatomy.py at 0.98 mm, 1 mm
  slices), best of ``--repeat`` runs, with the peak resident memory.

    python bench/builtin_dice.py --slices 600
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dicomio.codes import BUILTIN_STRUCTURES  # noqa: E402
from inference.builtin import BuiltinSegmenter  # noqa: E402
from phantom.anatomy import AxialGrid, ct_phantom  # noqa: E402
from tests.test_builtin import (  # noqa: E402
    BONE_CLASSES,
    SHARED_DATA,
    VALUE,
    classes_mask,
    dice,
    outside_air,
    siemens_case,
    torso_case,
)


def report_shared_data() -> None:
    if not (SHARED_DATA / "totalseg_v2_labels.json").exists():
        print(f"no reference data at {SHARED_DATA}: Dice skipped")
        return
    volume, reference = siemens_case()
    labels = _timed("Siemens 512x512x20", volume)
    bone = classes_mask(reference, BONE_CLASSES)
    print(f"  skeleton vs bone classes      Dice {dice(labels == VALUE['skeleton'], bone):.3f}")
    with_cartilage = bone | classes_mask(reference, r"^costal_cartilages$")
    print(f"  (with costal cartilage        Dice {dice(labels == VALUE['skeleton'], with_cartilage):.3f})")
    skeleton = labels == VALUE["skeleton"]
    print(f"  (itself on a 3 mm grid        Dice {dice(skeleton, _quantised(skeleton, volume, 3.0)):.3f})")
    _body_figures(volume, labels, reference)

    volume, reference = torso_case()
    labels = _timed("torso 3 mm, 30 slices", volume)
    left = classes_mask(reference, r"^lung_.*_left$")
    right = classes_mask(reference, r"^lung_.*_right$")
    lung_left, lung_right = labels == VALUE["lung_left"], labels == VALUE["lung_right"]
    print(f"  lungs vs lobes                Dice {dice(lung_left | lung_right, left | right):.3f}")
    print(f"  left lung                     Dice {dice(lung_left, left):.3f}")
    print(f"  right lung                    Dice {dice(lung_right, right):.3f}")
    bone = classes_mask(reference, BONE_CLASSES)
    print(f"  skeleton vs bone classes      Dice {dice(labels == VALUE['skeleton'], bone):.3f}")
    _body_figures(volume, labels, reference)


def _quantised(mask: np.ndarray, volume, voxel_mm: float) -> np.ndarray:
    """`mask` as a segmentation made on an isotropic grid of `voxel_mm` would
    show it on the volume's grid: partial-volume fractions over 0.5, then
    nearest neighbour back."""
    image = sitk.GetImageFromArray(mask.astype(np.float32))
    image.CopyInformation(volume.to_sitk())
    size = [max(1, round(n * s / voxel_mm)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    grid = (image.GetOrigin(), (voxel_mm,) * 3, image.GetDirection())
    coarse = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, *grid)
    back = sitk.Resample(coarse > 0.5, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    return sitk.GetArrayFromImage(back).astype(bool)


def _body_figures(volume, labels: np.ndarray, reference: np.ndarray) -> None:
    body = labels > 0
    inside = np.count_nonzero(body & (reference > 0)) / np.count_nonzero(reference > 0)
    in_air = np.count_nonzero(body & outside_air(volume.array))
    print(f"  body holds {inside:.4f} of labelled voxels; body voxels in outside air: {in_air}")


def _timed(name: str, volume) -> np.ndarray:
    start = time.perf_counter()
    labels = BuiltinSegmenter().segment(volume).labels
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    return labels


def report_phantom(grid: AxialGrid, repeat: int) -> None:
    phantom = ct_phantom(grid)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        labels = BuiltinSegmenter().segment(phantom.volume).labels
        times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"phantom 512x512x{grid.shape[0]}: best {min(times):.1f} s of {repeat}, peak RSS {peak_gb:.1f} GB")
    for name in BUILTIN_STRUCTURES:
        predicted = labels > 0 if name == "body" else labels == VALUE[name]
        print(f"  {name:18s} Dice {dice(predicted, phantom.mask(name)):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slices", type=int, default=600, help="1 mm slices of the synthetic CT, at most 601 (default 600)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed runs on the synthetic CT (default 2)")
    args = parser.parse_args()
    try:
        grid = AxialGrid((args.slices, 512, 512), (1.0, 0.9765625, 0.9765625))
    except ValueError as error:
        parser.error(f"--slices {args.slices}: {error}")
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: at least one timed run")
    report_shared_data()
    report_phantom(grid, args.repeat)


if __name__ == "__main__":
    main()
