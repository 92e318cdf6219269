"""Timing: segnode's nnU-Net engine against nnunetv2's nnUNetPredictor.

Both run the same weights on the same array and spacing: TotalSegmentator's
architectures (PlainConvUNet, 32..320 features, 128^3 patch, 118 output
channels for the 3 mm ``total`` model, 25 for one 1.5 mm part) with random
weights, as no trained model can be downloaded here. Each engine runs in a
child process of its own, so that its peak resident memory is its own;
wall time is end to end from the array to the label map (preprocessing,
sliding window, resampling back, argmax), model loading excluded.

    python3 bench/inference.py                 # 3 mm model: torso CT, 512x512x150 CT (~10 min, 2 cores)
    python3 bench/inference.py --cases all     # + 1.5 mm model, + 512x512x600 and x1000 CTs (segnode only)
    python3 bench/inference.py --device cuda   # segnode on the GPU (nnU-Net's reference too)

The synthetic CTs (0.8 x 0.8 mm pixels, 1.5 mm slices, 600 or 1000 of
them) are where nnU-Net's export, which resamples all 118 logit channels at
full resolution at once, needs about 37 GB of fp16 for 600 slices (and
float64 per channel): they are skipped for the reference unless
``--reference-large`` is given and the machine has the memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TORSO = REPO.parent / "shared" / "data" / "ct-torso-3mm" / "ct.nii.gz"


@dataclass(frozen=True)
class Case:
    name: str
    resolution_mm: float
    classes: int
    image: str  # "torso", "clinical" (512x512x150) or "synthetic-N" (512x512xN)


CASES = {
    "torso-3mm": Case("torso-3mm", 3.0, 117, "torso"),
    "clinical-3mm": Case("clinical-3mm", 3.0, 117, "clinical"),
    "torso-1.5mm": Case("torso-1.5mm", 1.5, 24, "torso"),
    "synthetic-600": Case("synthetic-600", 3.0, 117, "synthetic-600"),
    "synthetic-1000": Case("synthetic-1000", 3.0, 117, "synthetic-1000"),
}


def load_image(kind: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array ``[slice, row, column]`` in HU and its spacing."""
    if kind == "torso":
        import SimpleITK as sitk

        image = sitk.ReadImage(str(TORSO))
        return sitk.GetArrayFromImage(image).astype(np.float32), tuple(reversed(image.GetSpacing()))
    from tests.synthetic import phantom_hu

    # A body phantom at clinical resolution: the in-plane ellipse repeated
    # along z with noise; 150 slices of 2 mm, or N of 1.5 mm.
    slices, thickness = (150, 2.0) if kind == "clinical" else (int(kind.removeprefix("synthetic-")), 1.5)
    plane = phantom_hu(1, 512, 512)[0].astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 20, (slices, 1, 512)).astype(np.float32)
    return plane[None] + noise, (thickness, 0.8, 0.8)


def model_folder(root: Path, case: Case) -> Path:
    from tests.nnunet_models import totalsegmentator_spec, write_model

    spec = totalsegmentator_spec(case.resolution_mm, classes=case.classes, full_size=True)
    existing = root / spec.dataset
    if existing.exists():
        return next(existing.iterdir())
    return write_model(root, replace(spec))


def run_engine(engine: str, folder: Path, image: str, device: str, out: Path) -> dict:
    """In this (child) process: one engine, timed; the labels saved to `out`."""
    import torch

    array, spacing = load_image(image)
    if engine == "segnode":
        from inference.nnunet_model import load_model
        from inference.predictor import NnUNetSegmenter

        segmenter = NnUNetSegmenter(load_model([folder]), device=device)
        start = time.perf_counter()
        labels = segmenter.part_labels(0, array, spacing)
    else:
        from tests.nnunet_reference import nnunet_labels

        start = time.perf_counter()  # includes building nnU-Net's network: < 1 s
        labels = nnunet_labels(folder, array, spacing, mirroring=False, device=torch.device(device))
    wall = time.perf_counter() - start
    np.save(out, labels)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall_s": wall, "peak_rss_mb": peak_mb}


def child(engine: str, folder: Path, image: str, device: str, out: Path) -> dict | None:
    command = [sys.executable, __file__, "--child", engine, str(folder), image, device, str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {engine}: failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="torso-3mm,clinical-3mm",
                        help=f"comma-separated of {sorted(CASES)}, or 'all'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference-large", action="store_true",
                        help="also run nnUNetPredictor on the synthetic 512x512x600 CT")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, folder, image, device, out = args.child
        print(json.dumps(run_engine(engine, Path(folder), image, device, Path(out))))
        return

    from tests.nnunet_reference import dice_per_class

    names = sorted(CASES) if args.cases == "all" else args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in names:
            case = CASES[name]
            folder = model_folder(root, case)
            print(f"{name}: {case.resolution_mm} mm architecture, {case.classes + 1} channels, "
                  f"{case.image} image, device {args.device}")
            results = {}
            for engine in ("segnode", "nnunet"):
                if engine == "nnunet" and case.image.startswith("synthetic") and not args.reference_large:
                    print("  nnunet: skipped (needs ~40 GB for its export; --reference-large to try)")
                    continue
                out = root / f"{name}-{engine}.npy"
                result = child(engine, folder, case.image, args.device, out)
                if result:
                    results[engine] = (result, np.load(out))
                    print(f"  {engine}: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB")
            if len(results) == 2:
                ours, reference = results["segnode"][1], results["nnunet"][1]
                dice = dice_per_class(ours, reference)
                speedup = results["nnunet"][0]["wall_s"] / results["segnode"][0]["wall_s"]
                print(f"  speed-up {speedup:.2f}x; voxel agreement {np.mean(ours == reference):.5f}; "
                      f"Dice min {min(dice.values()):.4f} over {len(dice)} classes, "
                      f"{sum(d >= 0.999 for d in dice.values())} >= 0.999")


if __name__ == "__main__":
    main()
