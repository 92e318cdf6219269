"""The built-in skeleton leaves out calcified artery walls that touch bone.

A plaque in the aortic wall that touches a vertebral body fuses with it at
CT resolution and is as dense as cortex; it is told apart by the round
lumen that it lines. The phantom is an aorta lying against a lumbar spine,
its posterior half calcified, at slice spacings of 1 to 5 mm; the spine
alone is the control for what of the vertebrae must stay bone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from dicomio.volume import Volume
from inference.builtin import BuiltinSegmenter
from tests.test_builtin import VALUE, ct_volume, noisy_ct

#: Tissue HU: cortex and plaque as dense as real ones, red marrow of an
#: adult vertebra, unenhanced blood, the crus and the CSF.
CORTEX_HU, PLAQUE_HU, MARROW_HU, DISC_HU = 700, 800, 150, 90
BLOOD_HU, SOFT_TISSUE_HU, FAT_HU, CSF_HU = 40, 50, -100, 10
#: In-plane point-spread function of a body kernel: 1.4 mm FWHM.
PSF_SIGMA_MM = 1.4 / 2.355


@dataclasses.dataclass(frozen=True, eq=False)
class AortaPhantom:
    """A synthetic CT of an aorta against a spine and the voxels wholly of each kind."""

    volume: Volume
    truth: dict[str, np.ndarray]


def aorta_phantom(slice_mm: float, aorta: bool = True) -> AortaPhantom:
    """An aorta whose calcified wall lies on the vertebral bodies (1 mm pixels, 120 mm high).

    In soft tissue of 50 HU: vertebral bodies (36 mm across, 24 mm tall,
    1.5 mm cortex and 2 mm endplates at 700 HU around red marrow of 150 HU)
    with 8 mm discs between them, a neural arch (5 mm thick, on 5 mm
    pedicles) around the spinal canal; at their front left, in a groove
    of the bodies, an aorta (lumen 24 mm across, blood of 40 HU) whose
    wall is 3 mm thick: on its posterior half a calcified plaque 1.5 mm
    thick (800 HU) lines the lumen, 1.5 mm of media and adventitia from
    the vertebral cortex along 15 mm; 3 mm of fat surround the anterior
    half. Each slice averages the anatomy over its `slice_mm` and is
    blurred in plane by a point-spread function of 1.4 mm (FWHM), as a CT
    slice is, which fuses plaque and cortex. With `aorta` false, the same
    spine with soft tissue in its groove. The truth holds the voxels
    wholly of one kind: "vertebrae" (bodies outside the disc slices, and
    the arch), "plaque".
    """
    spacing = (slice_mm, 1.0, 1.0)
    shape = (int(120 // slice_mm), 160, 160)
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
    x = (np.arange(shape[2]) - (shape[2] - 1) / 2) * spacing[2]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body_r = np.hypot(yy - 10, xx)
    arch_r = np.hypot(yy - 48, xx)
    # The arch and the pedicles joining it to the body.
    arch = (arch_r > 8) & ((arch_r <= 13) | ((np.abs(np.abs(xx) - 8.5) <= 2.5) & (yy > 26) & (yy < 40)))
    # The aorta's centre lies 28 mm from the bodies' (front left): the outer
    # surface of its wall (15 mm from its centre) cuts into them.
    centre = np.array([10.0, 0.0]) + 28.0 * np.array([-np.cos(np.pi / 4), np.sin(np.pi / 4)])
    aorta_r = np.hypot(yy - centre[0], xx - centre[1])
    facing_spine = (yy - centre[0]) * np.cos(np.pi / 4) - (xx - centre[1]) * np.sin(np.pi / 4) > 0
    plaque = (aorta_r > 12) & (aorta_r <= 13.5) & facing_spine
    body = (body_r <= 18) & (aorta_r > 15)
    cortex = body & ((body_r > 16.5) | (aorta_r <= 16.5))
    sections = {}
    for kind in ("marrow", "endplate", "disc"):
        s = np.where(np.hypot(yy, xx) <= 75, SOFT_TISSUE_HU, -1000).astype(np.float32)
        if aorta:
            s[(aorta_r > 15) & (aorta_r <= 18) & ~facing_spine] = FAT_HU
        if kind == "disc":
            s[body] = DISC_HU
        else:
            s[body] = CORTEX_HU if kind == "endplate" else MARROW_HU
            s[cortex] = CORTEX_HU
        s[arch], s[arch_r <= 8] = CORTEX_HU, CSF_HU
        if aorta:
            s[aorta_r <= 12], s[plaque] = BLOOD_HU, PLAQUE_HU
        sections[kind] = ndimage.gaussian_filter(s, PSF_SIGMA_MM / np.array(spacing[1:]))
    hu = np.empty(shape, dtype=np.float32)
    truth = {name: np.zeros(shape, dtype=bool) for name in ("vertebrae", "plaque")}
    for k in range(shape[0]):
        # A vertebral body from 0 to 24 mm (endplates at either end), then a disc.
        heights = (k * slice_mm + np.arange(0.25, slice_mm, 0.5)) % 32
        kinds = ["disc" if h >= 24 else "endplate" if h < 2 or h >= 22 else "marrow" for h in heights]
        hu[k] = np.mean([sections[kind] for kind in kinds], axis=0)
        truth["vertebrae"][k] = arch | ("disc" not in kinds and body)
        truth["plaque"][k] = plaque
    array, affine = noisy_ct(hu, spacing, (x[0], y[0], slice_mm / 2), seed=0)
    return AortaPhantom(ct_volume(array, affine), truth)


@pytest.fixture(scope="module", params=[1.0, 2.0, 3.0, 5.0], ids=lambda mm: f"{mm:g}mm-slices")
def segmented(request: pytest.FixtureRequest) -> tuple[AortaPhantom, np.ndarray, np.ndarray]:
    """The phantom, its skeleton, and the skeleton of the same spine without the aorta."""
    phantom = aorta_phantom(slice_mm=request.param)
    alone = aorta_phantom(slice_mm=request.param, aorta=False)
    segmenter = BuiltinSegmenter()
    return (
        phantom,
        segmenter.segment(phantom.volume).labels == VALUE["skeleton"],
        segmenter.segment(alone.volume).labels == VALUE["skeleton"],
    )


def test_calcified_aortic_wall_on_a_vertebra_is_not_bone(
    segmented: tuple[AortaPhantom, np.ndarray, np.ndarray],
) -> None:
    phantom, skeleton, _ = segmented
    assert np.mean(skeleton[phantom.truth["plaque"]]) <= 0.02


def test_vertebra_beside_the_aorta_stays_bone(segmented: tuple[AortaPhantom, np.ndarray, np.ndarray]) -> None:
    """What is bone of the spine alone stays bone with the calcified aorta on it."""
    phantom, skeleton, alone = segmented
    vertebrae = phantom.truth["vertebrae"]
    assert np.count_nonzero(vertebrae & alone & ~skeleton) <= 0.001 * np.count_nonzero(vertebrae)
    assert np.mean(skeleton[vertebrae]) >= 0.9
