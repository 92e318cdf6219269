"""segnode's nnU-Net engine on its own: loading, tiling, resampling, merging.

Parity with nnunetv2 itself is in test_nnunet_parity.py; these need only
torch and dynamic-network-architectures, and tiny models on the CPU.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from dicomio.codes import TOTALSEGMENTATOR_V2_CLASSES, structure_code
from dicomio.volume import AxisOrder, SourceFrame, Volume
from inference.nnunet_model import ModelLoadError, load_model, load_part
from inference.postprocess import PostprocessConfig, StructureRule, postprocess_labels
from inference.predictor import NETWORK_ORIENTATION, NnUNetSegmenter
from inference.preprocess import image_modes, interpolation_modes, nonzero_box, resample, resampled_argmax
from inference.segmenter import Segmentation
from inference.sliding_window import gaussian_importance, mirror_combinations, tile_starts
from tests.nnunet_models import totalsegmentator_spec, write_model
from tests.synthetic import phantom_hu


def _volume(array: np.ndarray, spacing=(3.0, 3.0, 3.0)) -> Volume:
    # Columns (slice, row, column) along LPS (z, y, x).
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    affine[0, 2], affine[1, 1], affine[2, 0] = spacing[2], spacing[1], spacing[0]
    return Volume(array=array, affine=affine, frame_of_reference_uid="1.2.3", study_instance_uid="1.2.4",
                  series_instance_uid="1.2.5", modality="CT",
                  sources=tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.6.{i}")
                                for i in range(array.shape[0])))


def test_tile_starts_spread_evenly_as_nnunet():
    assert tile_starts(110, 64, 0.5) == (0, 23, 46)
    assert tile_starts(64, 64, 0.5) == (0,)
    assert tile_starts(101, 32, 0.5) == (0, 14, 28, 41, 55, 69)
    assert tile_starts(200, 64, 1.0) == (0, 45, 91, 136)
    with pytest.raises(ValueError):
        tile_starts(30, 32, 0.5)


def test_gaussian_importance_peaks_at_the_centre_and_is_never_zero():
    g = gaussian_importance((32, 24, 16), torch.device("cpu"))
    assert g.shape == (32, 24, 16)
    assert g.max() == pytest.approx(10.0) and g[16, 12, 8] == g.max()
    assert float(g.min()) > 0
    half = gaussian_importance((32, 32, 32), torch.device("cpu"), torch.float16)
    assert half.dtype == torch.float16 and float(half.min()) > 0


def test_mirror_combinations_include_identity_once():
    assert mirror_combinations(()) == ((),)
    assert mirror_combinations((0, 2)) == ((), (0,), (2,), (0, 2))
    assert len(mirror_combinations((0, 1, 2))) == 8


def test_linear_resampling_is_trilinear_and_nearest_on_thick_slices():
    x = torch.randn(2, 7, 9, 11)
    ours = resample(x, (12, 5, 20), ("linear",) * 3)
    torch.testing.assert_close(ours, F.interpolate(x[None], (12, 5, 20), mode="trilinear")[0])
    assert interpolation_modes((5.0, 0.8, 0.8), (3.0, 3.0, 3.0)) == ("nearest", "linear", "linear")
    assert interpolation_modes((3.0, 3.0, 3.0), (3.0, 1.0, 1.0)) == ("linear",) * 3
    assert interpolation_modes((3.0, 0.7, 3.0), (1.5, 1.5, 1.5)) == ("linear",) * 3
    # Images: cubic B-splines clipped to the input range, as skimage's resize.
    image = np.random.default_rng(0).standard_normal((7, 9, 11))
    expected = np.clip(ndimage.zoom(image, (12 / 7, 5 / 9, 20 / 11), order=3, mode="nearest", grid_mode=True),
                       image.min(), image.max())
    cubic = resample(torch.from_numpy(image)[None].float(), (12, 5, 20), image_modes(("linear",) * 3))[0]
    np.testing.assert_allclose(cubic.numpy(), expected, atol=1e-4)
    labels = torch.zeros(12, 5, 20, dtype=torch.uint8)
    resampled_argmax(x, (12, 5, 20), ("linear",) * 3, out=labels)
    assert torch.equal(labels, ours.argmax(0).to(torch.uint8))


def test_nonzero_box_crops_zero_padding_only():
    a = np.zeros((5, 6, 7))
    a[1:3, 2, 3:6] = -1000
    box = nonzero_box(a)
    assert box.start == (1, 2, 3) and box.stop == (3, 3, 6)
    assert nonzero_box(np.zeros((2, 3, 4))).shape == (2, 3, 4)


def test_segment_returns_labels_on_the_volume_grid(tmp_path):
    folder = write_model(tmp_path, totalsegmentator_spec(classes=4))
    segmenter = NnUNetSegmenter(load_model([folder], name="TotalSegmentator", version="2.0"))
    volume = _volume(phantom_hu(20, 40, 48))
    result = segmenter.segment(volume)
    assert isinstance(result, Segmentation)
    assert result.labels.shape == volume.array.shape and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 1, 2, 3, 4}
    assert [s.code for s in result.structures] == [structure_code(n) for n in TOTALSEGMENTATOR_V2_CLASSES[:4]]
    assert result.algorithm.name == "TotalSegmentator" and result.algorithm.version == "2.0"
    np.testing.assert_array_equal(volume.array, phantom_hu(20, 40, 48))  # untouched


def test_parts_merge_in_order_with_consecutive_values(tmp_path):
    first = write_model(tmp_path, replace(totalsegmentator_spec(classes=3), dataset="Dataset291_a"))
    second_spec = replace(totalsegmentator_spec(classes=5), dataset="Dataset292_b",
                          labels=TOTALSEGMENTATOR_V2_CLASSES[3:5])
    second = write_model(tmp_path, second_spec, seed=1)
    model = load_model([first, second])
    assert model.values == ((0, 1, 2, 3), (0, 4, 5))
    assert [s.value for s in model.structures] == [1, 2, 3, 4, 5]
    segmenter = NnUNetSegmenter(model)
    volume = _volume(phantom_hu(20, 40, 48).astype(np.float32))
    # The parts see the RAS view of the volume (predictor's NETWORK_ORIENTATION).
    order = AxisOrder.towards(volume.affine, NETWORK_ORIENTATION)
    a = segmenter.part_labels(0, order.view(volume.array), volume.spacing)
    b = segmenter.part_labels(1, order.view(volume.array), volume.spacing)
    merged = segmenter.segment(volume).labels
    expected = order.back(np.where(b > 0, np.array([0, 4, 5])[b], a))
    np.testing.assert_array_equal(merged, expected)


def test_old_and_new_plans_formats_give_the_same_architecture(tmp_path):
    new = load_part(write_model(tmp_path / "new", totalsegmentator_spec(classes=2)))
    old = load_part(write_model(tmp_path / "old", totalsegmentator_spec(classes=2, old_plans_format=True)))
    assert new.configuration == old.configuration
    assert new.configuration.patch_size == (32, 32, 32) and new.configuration.spacing == (3.0, 3.0, 3.0)


def test_unknown_label_is_refused_at_load_time(tmp_path):
    folder = write_model(tmp_path, totalsegmentator_spec(classes=2))
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"]["flux_capacitor"] = 3
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelLoadError, match="flux_capacitor"):
        load_model([folder])


def test_regions_missing_folds_and_wrong_weights_are_refused(tmp_path):
    folder = write_model(tmp_path, totalsegmentator_spec(classes=2))
    with pytest.raises(ModelLoadError, match="fold_1"):
        load_model([folder], folds=(1,))
    with pytest.raises(ModelLoadError, match="no configuration '3d_lowres'"):
        load_part(folder.rename(folder.with_name(folder.name.replace("3d_fullres", "3d_lowres"))))
    other = write_model(tmp_path / "x", totalsegmentator_spec(classes=2))
    wide = write_model(tmp_path / "y", totalsegmentator_spec(classes=2, features=(16, 16, 32, 32)))
    checkpoint = "fold_0/checkpoint_final.pth"
    (other / checkpoint).write_bytes((wide / checkpoint).read_bytes())
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model([other])
    dataset = json.loads((wide / "dataset.json").read_text())
    dataset["labels"]["spleen"] = [1, 2]
    (wide / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelLoadError, match="region"):
        load_model([wide])


def test_postprocessing_rules_apply_to_the_merged_map(tmp_path):
    folder = write_model(tmp_path, totalsegmentator_spec(classes=4))
    model = load_model([folder])
    volume = _volume(phantom_hu(20, 40, 48))
    raw = NnUNetSegmenter(model).segment(volume).labels
    rules = PostprocessConfig({v: StructureRule(keep_largest=True) for v in range(1, 5)})
    cleaned = NnUNetSegmenter(model, postprocess=rules).segment(volume).labels
    np.testing.assert_array_equal(cleaned, postprocess_labels(raw, volume.spacing, rules))


def test_mirrored_segmentation_only_for_models_trained_with_mirroring(tmp_path):
    volume = _volume(phantom_hu(20, 40, 48).astype(np.float32))
    plain = NnUNetSegmenter(load_model([write_model(tmp_path / "a", totalsegmentator_spec(classes=3))]))
    assert plain.segment_mirrored(volume) is None
    spec = totalsegmentator_spec(classes=3, mirror_axes=(1, 2), transpose_forward=(2, 0, 1))
    segmenter = NnUNetSegmenter(load_model([write_model(tmp_path / "b", spec)]))
    mirrored = segmenter.segment_mirrored(volume).labels
    # Network axes 1 and 2 are view axes 0 and 1 under this transpose.
    order = AxisOrder.towards(volume.affine, NETWORK_ORIENTATION)
    flipped = np.flip(order.view(volume.array), (0, 1))
    expected = order.back(np.flip(segmenter.part_labels(0, flipped, volume.spacing), (0, 1)))
    np.testing.assert_array_equal(mirrored, expected)
    assert not np.array_equal(mirrored, segmenter.segment(volume).labels)  # random weights: not symmetric
