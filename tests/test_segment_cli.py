"""``segnode segment``: a NIfTI file or DICOM series folder in, a label map and its legend out.

Run as a subprocess, as an operator would. The output must lie exactly on
the input's grid (size, origin, spacing, direction), because every later
measurement and the DICOM-SEG are computed on it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dicomio.codes import BUILTIN_STRUCTURES, TOTALSEGMENTATOR_V2_CLASSES
from dicomio.series import load_series
from tests.conftest import REPO
from tests.nnunet_models import totalsegmentator_spec, write_model
from tests.synthetic import phantom_hu, write_ct_series


def segnode(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )


def assert_same_grid(labels: sitk.Image, reference: sitk.Image) -> None:
    assert labels.GetSize() == reference.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-5)


def assert_legend(out: Path, legend_path: Path) -> None:
    legend = json.loads(legend_path.read_text())
    assert sorted(legend.values()) == sorted(BUILTIN_STRUCTURES)
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.issubdtype(values.dtype, np.unsignedinteger)
    assert set(np.unique(values).tolist()) <= {0, *map(int, legend)}
    assert values.any(), "the phantom's body is segmented"


@pytest.fixture(scope="module")
def nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom CT whose grid is neither axis-aligned nor unit-spaced."""
    image = sitk.GetImageFromArray(phantom_hu(12, 64, 64, seed=3))
    image.SetSpacing((0.9, 0.8, 2.5))
    image.SetOrigin((-30.5, 12.25, 100.0))
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(tuple(rotation.flatten()))
    path = tmp_path_factory.mktemp("nifti") / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_segment_nifti(nifti: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.nii.gz"
    run = segnode("segment", nifti, "--out", out, "--store", tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert_same_grid(sitk.ReadImage(str(out)), sitk.ReadImage(str(nifti)))
    assert_legend(out, tmp_path / "labels.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json", "labels.nii.gz"]


def test_segment_dicom_folder(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "dicom", slices=12, rows=64, columns=64)
    out = tmp_path / "out" / "seg.nii"
    out.parent.mkdir()
    run = segnode("segment", tmp_path / "dicom", "--out", out, "--model", "builtin", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert_same_grid(sitk.ReadImage(str(out)), load_series(files).volume.to_sitk())
    assert_legend(out, tmp_path / "out" / "seg.json")


def test_segment_errors(nifti: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    broken = tmp_path / "broken"
    files = write_ct_series(broken, slices=6)
    files[2].unlink()
    out = tmp_path / "labels.nii.gz"
    cases = [
        (["segment", tmp_path / "absent.nii.gz", "--out", out], "cannot read", "no such file or folder"),
        (["segment", text, "--out", out], "cannot read", "notes.txt"),
        (["segment", broken, "--out", out], "cannot read", "missing slices"),
        (["segment", nifti, "--out", out, "--model", "nope", "--store", tmp_path / "store"],
         "no model named 'nope'", "available: builtin"),
        (["segment", nifti, "--out", tmp_path / "labels.png"], "--out", "must end in .nii.gz or .nii"),
    ]
    for args, *messages in cases:
        run = segnode(*args)
        assert run.returncode == 1, (args, run.stdout, run.stderr)
        for message in messages:
            assert message in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_segment_on_a_missing_gpu(nifti: Path, tmp_path: Path) -> None:
    run = segnode("segment", nifti, "--out", tmp_path / "labels.nii.gz", "--device", "cuda")
    assert run.returncode == 1
    assert "--device cuda: PyTorch sees no CUDA device" in run.stderr


def test_segment_with_an_installed_multi_part_model(nifti: Path, tmp_path: Path) -> None:
    """Two nnU-Net parts installed under one name give one label map numbered part after part."""
    spec = totalsegmentator_spec(classes=2)
    first = write_model(tmp_path / "src", dataclasses.replace(spec, dataset="Dataset801_PartA"))
    second = write_model(
        tmp_path / "src",
        dataclasses.replace(spec, dataset="Dataset802_PartB", labels=TOTALSEGMENTATOR_V2_CLASSES[2:4]),
        seed=1,
    )
    store = tmp_path / "store"
    installed = segnode("models", "install", first.parent, second.parent, "--name", "parts", "--store", store)
    assert installed.returncode == 0, installed.stderr

    out = tmp_path / "labels.nii.gz"
    run = segnode("segment", nifti, "--out", out, "--model", "parts", "--store", store)
    assert run.returncode == 0, run.stderr
    assert_same_grid(sitk.ReadImage(str(out)), sitk.ReadImage(str(nifti)))
    legend = json.loads((tmp_path / "labels.json").read_text())
    assert legend == {str(v): name for v, name in enumerate(TOTALSEGMENTATOR_V2_CLASSES[:4], 1)}
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(values).tolist()) <= {0, 1, 2, 3, 4}
