"""Volume geometry: views along patient directions and SimpleITK round trips."""

from __future__ import annotations

import numpy as np
import pytest

from dicomio.volume import AxisOrder, SourceFrame, Volume
from tests.synthetic import stored


def volume_of(array: np.ndarray, affine: np.ndarray) -> Volume:
    return Volume(array=array, affine=affine, frame_of_reference_uid="1.2.3", study_instance_uid="1.2.4",
                  series_instance_uid="1.2.5", modality="CT",
                  sources=tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.6.{k}")
                                for k in range(array.shape[0])))


AXIAL = np.diag([2.5, 0.8, 0.7, 1.0])[[2, 1, 0, 3]]  # slices +z, rows +y, columns +x (LPS)
AXIAL[:3, 3] = (-100.0, -80.0, 40.0)


def test_a_standard_axial_series_seen_ras_flips_rows_and_columns():
    order = AxisOrder.towards(AXIAL, "SAR")
    assert order.axes == (0, 1, 2) and order.flips == (False, True, True)
    assert order.spacing((2.5, 0.8, 0.7)) == (2.5, 0.8, 0.7)
    assert AxisOrder.towards(AXIAL, "SPL") == AxisOrder((0, 1, 2), (False, False, False))


@pytest.mark.parametrize("axes,flips", [((0, 1, 2), (True, False, False)), ((2, 0, 1), (False, True, True)),
                                        ((1, 2, 0), (True, True, False))])
def test_the_view_is_the_same_whatever_the_storage_order(axes, flips):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7))
    reference = AxisOrder.towards(AXIAL, "SAR").view(array)
    other, affine = stored(array, AXIAL, axes, flips)
    order = AxisOrder.towards(affine, "SAR")
    np.testing.assert_array_equal(order.view(other), reference)
    np.testing.assert_array_equal(order.back(order.view(other)), other)
    assert order.spacing(volume_of(other, affine).spacing) == pytest.approx((2.5, 0.8, 0.7))


def test_an_oblique_series_takes_the_nearest_axes():
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = AXIAL.copy()
    affine[:3, :3] = rotation @ AXIAL[:3, :3]
    assert AxisOrder.towards(affine, "SAR") == AxisOrder((0, 1, 2), (False, True, True))


def test_directions_must_be_three_orthogonal_letters():
    with pytest.raises(ValueError, match="three orthogonal"):
        AxisOrder.towards(AXIAL, "SAP")


def test_sitk_round_trip_keeps_voxels_and_geometry():
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    _, affine = stored(array, AXIAL, (2, 0, 1), (True, False, True))
    volume = volume_of(array, affine)
    back = Volume.from_sitk(volume.to_sitk())
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-9)
    assert back.series_instance_uid == "" and len(back.sources) == 5
