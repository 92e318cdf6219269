"""CT label maps onto a coarser, shifted and rotated PET grid.

Two spheres of known volume are drawn on a 1 mm CT grid and carried onto a
4 mm PET grid turned 30 degrees about the patient's z axis (and tilted) and
offset by a fraction of a voxel, so no voxel centre lines up.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicomio.resample import (
    FrameOfReferenceMismatchError,
    resample_label_fractions,
    resample_labels,
)
from dicomio.volume import SourceFrame, Volume

FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.10.2.1"
# (label, centre in LPS mm, radius mm)
SPHERES = ((1, np.array([-15.0, 0.0, 0.0]), 14.0), (2, np.array([18.0, 5.0, 3.0]), 10.0))


def volume(array: np.ndarray, affine: np.ndarray, modality: str, frame_of_reference: str) -> Volume:
    sop_class = "1.2.840.10008.5.1.4.1.1.128" if modality == "PT" else "1.2.840.10008.5.1.4.1.1.2"
    return Volume(
        array=array,
        affine=affine,
        frame_of_reference_uid=frame_of_reference,
        study_instance_uid="1.2.826.0.1.3680043.10.2.2",
        series_instance_uid=f"1.2.826.0.1.3680043.10.2.3.{len(modality)}",
        modality=modality,
        sources=tuple(SourceFrame(sop_class, f"1.2.826.0.1.3680043.10.2.4.{i}") for i in range(len(array))),
    )


def ct_labels(frame_of_reference: str = FRAME_OF_REFERENCE) -> Volume:
    """96^3 voxels of 1 mm, axial, centred on the origin."""
    n = 96
    affine = np.array(
        [[0.0, 0.0, 1.0, -47.5], [0.0, 1.0, 0.0, -47.5], [1.0, 0.0, 0.0, -47.5], [0, 0, 0, 1]]
    )
    index = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), axis=-1).astype(float)
    points = index @ affine[:3, :3].T + affine[:3, 3]
    array = np.zeros((n, n, n), dtype=np.uint8)
    for label, centre, radius in SPHERES:
        array[np.linalg.norm(points - centre, axis=-1) <= radius] = label
    return volume(array, affine, "CT", frame_of_reference)


def pet_grid(frame_of_reference: str = FRAME_OF_REFERENCE) -> Volume:
    """30 x 30 x 30 voxels of 4 mm, turned 30 degrees about z and 10 about x, offset."""
    turn, tilt = math.radians(30), math.radians(10)
    about_z = np.array(
        [[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]]
    )
    about_x = np.array(
        [[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]]
    )
    axes = about_z @ about_x * 4.0  # columns: column, row, slice directions
    affine = np.eye(4)
    affine[:3, :3] = axes[:, [2, 1, 0]]
    affine[:3, 3] = -axes @ np.array([14.3, 14.6, 14.1])
    return volume(np.zeros((30, 30, 30), dtype=np.float32), affine, "PT", frame_of_reference)


def centres(grid: Volume) -> np.ndarray:
    """Patient coordinates of every voxel centre, shaped [slice, row, column, 3]."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in grid.array.shape), indexing="ij"), axis=-1)
    return index.astype(float) @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def test_nearest_keeps_labels_on_the_target_grid():
    labels, pet = ct_labels(), pet_grid()
    moved = resample_labels(labels, pet)

    assert moved.array.shape == pet.array.shape
    assert moved.array.dtype == np.uint8
    np.testing.assert_array_equal(moved.affine, pet.affine)
    np.testing.assert_allclose(Volume.affine_from_sitk(moved.to_sitk()), pet.affine, atol=1e-9)
    assert moved.sources == pet.sources
    assert set(np.unique(moved.array)) == {0, 1, 2}

    points = centres(pet)
    for label, centre, radius in SPHERES:
        distance = np.linalg.norm(points - centre, axis=-1)
        # Centres clearly inside carry the label; clearly outside do not.
        assert np.all(moved.array[distance < radius - 1.0] == label)
        assert not np.any(moved.array[distance > radius + 1.0] == label)
        # Whole 4 mm voxels only: the volume is right to within its surface voxels.
        sphere_ml = 4 / 3 * math.pi * radius**3 / 1000
        assert (moved.array == label).sum() * pet.voxel_volume_ml == pytest.approx(sphere_ml, rel=0.15)


def test_fractions_add_up_to_the_sphere_volumes():
    labels, pet = ct_labels(), pet_grid()
    fractions = resample_label_fractions(labels, pet)

    assert fractions.labels == (1, 2)
    assert fractions.fractions.shape == (2, *pet.array.shape)
    assert fractions.fractions.min() >= 0 and fractions.fractions.sum(axis=0).max() <= 1 + 1e-6
    # Partial voxels exist: the surface is shared, not rounded to 0 or 1.
    partial = (fractions.fractions > 0.05) & (fractions.fractions < 0.95)
    assert partial.sum() > 100
    for label, _, radius in SPHERES:
        sphere_ml = 4 / 3 * math.pi * radius**3 / 1000  # 11.49 and 4.19 ml
        ct_ml = (labels.array == label).sum() * labels.voxel_volume_ml
        assert ct_ml == pytest.approx(sphere_ml, rel=0.01)
        assert fractions.volume_ml(label) == pytest.approx(sphere_ml, rel=0.02)
        assert fractions.volume_ml(label) == pytest.approx(ct_ml, rel=0.01)


def test_fractions_are_centred_on_the_spheres():
    # A sub-grid misplaced by part of a voxel keeps volumes but moves centroids.
    pet = pet_grid()
    fractions = resample_label_fractions(ct_labels(), pet)
    points = centres(pet)
    for index, (_, centre, _) in enumerate(SPHERES):
        weights = fractions.fractions[index].astype(float)
        centroid = (points * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()
        np.testing.assert_allclose(centroid, centre, atol=0.3)


def test_fractions_do_not_depend_on_chunking(monkeypatch):
    labels, pet = ct_labels(), pet_grid()
    whole = resample_label_fractions(labels, pet)
    # 30 x 30 target voxels of 4 x 4 x 4 sub-samples per slice: 7 slices a chunk.
    monkeypatch.setattr("dicomio.resample._CHUNK_SAMPLES", 30 * 30 * 64 * 7)
    chunked = resample_label_fractions(labels, pet)
    np.testing.assert_array_equal(chunked.fractions, whole.fractions)


def test_fractions_are_one_deep_inside_and_zero_far_outside():
    pet = pet_grid()
    fractions = resample_label_fractions(ct_labels(), pet)
    points = centres(pet)
    for index, (_, centre, radius) in enumerate(SPHERES):
        distance = np.linalg.norm(points - centre, axis=-1)
        # Half the 4 mm voxel diagonal is 3.5 mm.
        assert np.all(fractions.fractions[index][distance < radius - 3.5] == 1)
        assert np.all(fractions.fractions[index][distance > radius + 3.5] == 0)


def test_other_frame_of_reference_is_refused():
    labels, pet = ct_labels(), pet_grid("1.2.826.0.1.3680043.10.2.99")
    with pytest.raises(FrameOfReferenceMismatchError, match="register them first") as caught:
        resample_labels(labels, pet)
    assert caught.value.target_frame_of_reference_uid == "1.2.826.0.1.3680043.10.2.99"
    with pytest.raises(FrameOfReferenceMismatchError):
        resample_label_fractions(labels, pet)


def test_label_map_must_hold_integers():
    labels = ct_labels()
    as_float = volume(labels.array.astype(np.float32), labels.affine, "CT", FRAME_OF_REFERENCE)
    with pytest.raises(TypeError, match="integer"):
        resample_labels(as_float, pet_grid())
