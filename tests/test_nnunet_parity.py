"""segnode's nnU-Net engine against nnunetv2's own nnUNetPredictor.

Same model folder, same array and spacing: the label maps must agree. The
models are made on the spot (tests/nnunet_models.py) with TotalSegmentator's
plans at reduced width, plus one trained briefly on the shared torso CT
whose weights are committed (tests/data/nnunet_trained_3mm.pth), because
random weights give speckle in which a single rounding flips isolated
voxels, while a trained network's maps are smooth, as real ones are.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.nnunet_model import load_model
from inference.predictor import NnUNetSegmenter
from tests.conftest import SHARED_DATA
from tests.nnunet_models import random_weights, totalsegmentator_spec, write_model
from tests.synthetic import phantom_hu

pytest.importorskip("nnunetv2", reason="nnunetv2 (a test extra) is the parity reference")
# Minutes of CPU: a stage of .ci/run after the default suite.
pytestmark = pytest.mark.slow
from tests.nnunet_reference import dice_per_class, nnunet_labels  # noqa: E402

TRAINED = Path(__file__).parent / "data" / "nnunet_trained_3mm.pth"
#: TotalSegmentator classes with more than 500 voxels in the shared 30-slice
#: reference, the labels the committed model was trained on (in this order).
TRAINED_VALUES = (1, 2, 3, 4, 5, 6, 7, 11, 14, 18, 19, 20, 30, 31, 32, 52, 63, 64, 86, 87, 117)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return phantom_hu(24, 56, 64).astype(np.float32)


def _compare(folder: Path, array: np.ndarray, spacing, *, mirroring: bool = False, folds=(0,)) -> np.ndarray:
    ours = NnUNetSegmenter(load_model([folder], folds=folds)).part_labels(0, array, spacing)
    reference = nnunet_labels(folder, array, spacing, mirroring=mirroring, folds=folds)
    assert ours.shape == reference.shape == array.shape
    return ours, reference


def _assert_parity(ours: np.ndarray, reference: np.ndarray, *, min_voxels: int = 0) -> None:
    """Voxel agreement >= 0.999 and Dice >= 0.999 per class (classes with at
    least `min_voxels` voxels: random networks scatter single voxels)."""
    assert np.mean(ours == reference) >= 0.999
    sizes = np.bincount(reference.ravel(), minlength=256)
    low = {c: d for c, d in dice_per_class(ours, reference).items() if sizes[c] >= min_voxels and d < 0.999}
    assert not low, f"classes below Dice 0.999: {low}"


@pytest.mark.parametrize(
    "spacing",
    [(3.0, 3.0, 3.0), (2.0, 1.6, 1.6), (5.0, 1.0, 1.0), (3.0, 4.5, 4.2)],
    ids=["model-spacing", "finer", "thick-slices", "coarser"],
)
def test_random_totalsegmentator_architecture(tmp_path, phantom, spacing):
    folder = write_model(tmp_path, totalsegmentator_spec(classes=12))
    ours, reference = _compare(folder, phantom, spacing)
    if spacing == (3.0, 3.0, 3.0):
        np.testing.assert_array_equal(ours, reference)
    _assert_parity(ours, reference, min_voxels=100)


def test_mirroring_ensemble_old_plans_and_transpose(tmp_path, phantom):
    spec = totalsegmentator_spec(classes=6, mirror_axes=(0, 1, 2), old_plans_format=True,
                                 transpose_forward=(2, 0, 1))
    torch.manual_seed(1)
    folds = {0: random_weights(spec), 3: random_weights(spec)}
    folder = write_model(tmp_path, spec, folds)
    # Small: eight mirrorings of two folds cost 16 network passes per tile.
    ours, reference = _compare(folder, phantom[:, 8:48, 8:56], (3.6, 2.4, 3.0), mirroring=True, folds=(0, 3))
    _assert_parity(ours, reference, min_voxels=100)


def test_residual_encoder_and_zero_padding_cropped(tmp_path, phantom):
    """Zero-valued padding around the image is cropped away by both."""
    folder = write_model(tmp_path, totalsegmentator_spec(classes=5, residual=True))
    padded = np.pad(phantom, ((3, 0), (0, 9), (5, 2)))
    ours, reference = _compare(folder, padded, (3.0, 2.6, 2.6))
    assert not ours[:3].any() and not reference[:3].any()
    _assert_parity(ours, reference, min_voxels=100)


def test_trained_model_on_the_torso_ct(tmp_path):
    data = SHARED_DATA / "ct-torso-3mm" / "ct_30slices.nii.gz"
    if not data.exists():
        pytest.skip(f"shared data absent: {data}")
    import SimpleITK as sitk

    from dicomio.codes import TOTALSEGMENTATOR_V2_CLASSES

    image = sitk.ReadImage(str(data))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spec = replace(totalsegmentator_spec(patch_size=(32, 64, 64)),
                   labels=tuple(TOTALSEGMENTATOR_V2_CLASSES[v - 1] for v in TRAINED_VALUES))
    state = {k: v.float() for k, v in torch.load(TRAINED, weights_only=True).items()}
    folder = write_model(tmp_path, spec, {0: state})
    for spacing in [(3.0, 3.0, 3.0), (2.5, 2.2, 2.2)]:
        ours, reference = _compare(folder, array, spacing)
        assert len(np.unique(reference)) > 5, "the trained model should find organs"
        _assert_parity(ours, reference)


def test_segment_shows_the_network_a_ras_image_whatever_the_storage_order(tmp_path):
    """TotalSegmentator's networks see RAS-canonical images (nnU-Net reading
    the NIfTI that nibabel's as_closest_canonical wrote): the torso file is
    stored that way, so nnU-Net on its array is the reference, and the same
    image stored as a DICOM axial series (rows and columns reversed) or in
    sagittal order must get the same labels at the same patient positions."""
    data = SHARED_DATA / "ct-torso-3mm" / "ct_30slices.nii.gz"
    if not data.exists():
        pytest.skip(f"shared data absent: {data}")
    import SimpleITK as sitk

    from dicomio.codes import TOTALSEGMENTATOR_V2_CLASSES
    from dicomio.volume import Volume
    from tests.synthetic import stored

    ras = Volume.from_sitk(sitk.ReadImage(str(data)))
    spec = replace(totalsegmentator_spec(patch_size=(32, 64, 64)),
                   labels=tuple(TOTALSEGMENTATOR_V2_CLASSES[v - 1] for v in TRAINED_VALUES))
    state = {k: v.float() for k, v in torch.load(TRAINED, weights_only=True).items()}
    folder = write_model(tmp_path, spec, {0: state})
    segmenter = NnUNetSegmenter(load_model([folder]))
    reference = nnunet_labels(folder, ras.array.astype(np.float32), ras.spacing)
    labels = segmenter.segment(ras).labels
    _assert_parity(labels, reference)
    for axes, flips in [((0, 1, 2), (False, True, True)), ((2, 0, 1), (True, False, True))]:
        array, affine = stored(ras.array, ras.affine, axes, flips)
        other = replace(ras, array=array, affine=affine,
                        sources=ras.sources[:1] * array.shape[0])
        expected, _ = stored(labels, ras.affine, axes, flips)
        np.testing.assert_array_equal(segmenter.segment(other).labels, expected)
