"""Between the image's grid and the network's: crop, normalise, resample.

nnU-Net prepares an image by cropping it to the bounding box of its nonzero
voxels, normalising it and resampling it to the configuration's spacing; it
brings the logits back with linear interpolation and takes the argmax. The
choices below reproduce its results (for label-map parity with
``nnUNetPredictor``) but run as torch operations on whatever device the
tensors are on, and bring logits back in slabs: nnU-Net resamples every
channel of the whole volume at once on the CPU, which for 118 channels of a
512x512x600 CT needs tens of GB and most of the run time.

The image is resampled with cubic B-splines as nnU-Net does (its skimage
``resize(order=3)``): a network is sensitive enough to its input that
trilinear resampling alone moves several percent of a label map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from inference.nnunet_model import ANISOTROPY_THRESHOLD, CtNormalisation

#: Largest intermediate slab of resampled channels, in elements (1 GiB of fp32).
SLAB_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class Box:
    """A box of voxels ``[start, stop)`` per axis."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))


def nonzero_box(array: np.ndarray) -> Box:
    """The bounding box of the voxels that are not exactly 0, as nnU-Net crops.

    nnU-Net crops every image to this box and labels everything outside it
    background. For CT in HU it is nearly always the whole image (air is
    -1000), but padding written as 0 is cropped, and parity needs the same
    box. An all-zero image keeps its full extent.
    """
    nonzero = array != 0
    start, stop = [], []
    for axis in range(array.ndim):
        others = tuple(a for a in range(array.ndim) if a != axis)
        present = np.flatnonzero(nonzero.any(axis=others))
        if present.size == 0:
            return Box(tuple(0 for _ in array.shape), tuple(array.shape))
        start.append(int(present[0]))
        stop.append(int(present[-1]) + 1)
    return Box(tuple(start), tuple(stop))


def normalise_ct(image: torch.Tensor, normalisation: CtNormalisation) -> torch.Tensor:
    """Clip to the training foreground's percentiles and standardise, in place."""
    image.clamp_(normalisation.lower, normalisation.upper)
    image.sub_(normalisation.mean).div_(max(normalisation.std, 1e-8))
    return image


def network_shape(
    shape: tuple[int, ...], spacing: tuple[float, ...], model_spacing: tuple[float, ...]
) -> tuple[int, ...]:
    """The shape of `shape` voxels of `spacing` resampled to `model_spacing`
    (rounded as nnU-Net rounds, so both see the same grid)."""
    return tuple(
        int(round(s / m * n)) for n, s, m in zip(shape, spacing, model_spacing, strict=True)
    )


def interpolation_modes(
    from_spacing: tuple[float, ...], to_spacing: tuple[float, ...]
) -> tuple[str, ...]:
    """``"linear"`` or ``"nearest"`` per axis, by nnU-Net's anisotropy rule.

    When one axis of the source (else of the target) spacing is more than
    three times coarser than the finest, nnU-Net interpolates that axis alone
    with nearest neighbours, so that thick slices are not blended into each
    other; if two axes tie for coarsest it does not.
    """
    for spacing in (from_spacing, to_spacing):
        if max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD:
            coarsest = [i for i, s in enumerate(spacing) if max(spacing) / s == 1]
            if len(coarsest) == 1:
                return tuple("nearest" if i == coarsest[0] else "linear" for i in range(len(spacing)))
            break
    return tuple("linear" for _ in from_spacing)


def image_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """The image's modes: nnU-Net resamples images with cubic splines where
    logits are resampled linearly."""
    return tuple("cubic" if m == "linear" else m for m in modes)


def resample(image: torch.Tensor, shape: tuple[int, ...], modes: tuple[str, ...]) -> torch.Tensor:
    """`image` ``[channel, *grid]`` resampled to ``[channel, *shape]``.

    Sample positions are voxel centres (``align_corners=False``) with the
    edge value repeated outside, which is what nnU-Net's skimage/scipy
    resampling does; interpolation is separable, per axis ``"linear"``,
    ``"nearest"`` or ``"cubic"`` (B-spline, for images only: it is done on
    the whole tensor, not in slabs).
    """
    if tuple(image.shape[1:]) == tuple(shape):
        return image
    if "cubic" in modes:
        image = image.float()
        low, high = _cubic_bounds(image, shape, modes)
        for axis, (size, mode) in enumerate(zip(shape, modes, strict=True), start=1):
            if image.shape[axis] == size:
                continue
            if mode == "cubic":
                image = _cubic_axis(image, axis, size)
            else:
                image = _interpolate_axis(image, axis, *_sample_positions(image.shape[axis], size, mode,
                                                                          image.device))
        return image.clamp_(low, high)
    out = torch.empty((image.shape[0], *shape), dtype=image.dtype, device=image.device)
    for start, stop, slab in _slabs(image, shape, modes):
        out[:, start:stop] = slab
    return out


def resampled_argmax(
    logits: torch.Tensor, shape: tuple[int, ...], modes: tuple[str, ...], out: torch.Tensor
) -> torch.Tensor:
    """The argmax over channels of `logits` resampled to `shape`, into `out`.

    Interpolating the logits and then taking the argmax is what nnU-Net
    does (interpolating a label map would move boundaries differently); it
    is done slab by slab so that the resampled channels never exist whole.
    """
    for start, stop, slab in _slabs(logits, shape, modes):
        # Rounded back to the logits' dtype first, as nnU-Net stores the
        # resampled logits: in fp16 near-ties become ties, won by the lower class.
        slab = slab.to(logits.dtype)
        out[start:stop] = slab.argmax(dim=0).to(device=out.device, dtype=out.dtype)
    return out


def _slabs(
    image: torch.Tensor, shape: tuple[int, ...], modes: tuple[str, ...]
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Consecutive ``[start, stop)`` ranges of output axis 0 and their
    resampled values, each at most :data:`SLAB_ELEMENTS` large."""
    channels = image.shape[0]
    per_row = channels * int(np.prod(shape[1:])) + channels * int(np.prod(image.shape[2:]))
    rows = max(1, SLAB_ELEMENTS // max(per_row, 1))
    first, second, weight = _sample_positions(image.shape[1], shape[0], modes[0], image.device)
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        if tuple(image.shape[1:]) == tuple(shape):
            yield start, stop, image[:, start:stop]
            continue
        low = int(first[start:stop].min())
        high = int(second[start:stop].max()) + 1
        part = image[:, low:high].float()
        part = _interpolate_axis(part, 1, first[start:stop] - low, second[start:stop] - low,
                                 weight[start:stop])
        yield start, stop, _resample_in_plane(part, shape[1:], modes[1:])


def _resample_in_plane(slab: torch.Tensor, shape: tuple[int, ...], modes: tuple[str, ...]) -> torch.Tensor:
    if tuple(slab.shape[2:]) == tuple(shape):
        return slab
    if all(m == "linear" for m in modes):
        # bilinear with align_corners=False is the separable linear rule of
        # _interpolate_axis, in one fused kernel.
        return F.interpolate(slab.transpose(0, 1), size=tuple(shape), mode="bilinear",
                             align_corners=False).transpose(0, 1)
    for axis, (size, mode) in enumerate(zip(shape, modes, strict=True), start=2):
        first, second, weight = _sample_positions(slab.shape[axis], size, mode, slab.device)
        slab = _interpolate_axis(slab, axis, first, second, weight)
    return slab


def _sample_positions(
    size: int, new_size: int, mode: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output index along an axis: the two source indices and the
    weight of the second. Nearest neighbour is the case of weight 0."""
    scale = size / new_size
    centres = (torch.arange(new_size, dtype=torch.float64, device=device) + 0.5) * scale - 0.5
    if mode == "nearest":
        index = torch.floor(centres + 0.5).clamp_(0, size - 1).long()
        return index, index, torch.zeros(new_size, dtype=torch.float32, device=device)
    centres = centres.clamp_(0, size - 1)
    first = torch.floor(centres).long()
    second = (first + 1).clamp_(max=size - 1)
    return first, second, (centres - first).float()


def _interpolate_axis(
    image: torch.Tensor, axis: int, first: torch.Tensor, second: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    if image.shape[axis] == first.numel() and bool((first == torch.arange(
            first.numel(), device=first.device)).all()) and not bool(weight.any()):
        return image
    view = [1] * image.ndim
    view[axis] = -1
    low = image.index_select(axis, first)
    if not bool(weight.any()):
        return low
    high = image.index_select(axis, second)
    return torch.lerp(low, high, weight.view(view))


def _cubic_bounds(
    image: torch.Tensor, shape: tuple[int, ...], modes: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where skimage clips a cubic resampling: to the range of what it
    resized, the whole channel, or each slice of a nearest-neighbour axis
    (which nnU-Net resizes slice by slice). This removes the spline's
    overshoot beyond the darkest and brightest input voxels."""
    spatial = list(range(1, image.ndim))
    nearest = [a for a, m in zip(spatial, modes, strict=True) if m == "nearest"]
    if not nearest:
        return image.amin(dim=spatial, keepdim=True), image.amax(dim=spatial, keepdim=True)
    axis = nearest[0]
    others = [a for a in spatial if a != axis]
    index, _, _ = _sample_positions(image.shape[axis], shape[axis - 1], "nearest", image.device)
    low = image.amin(dim=others, keepdim=True).index_select(axis, index)
    high = image.amax(dim=others, keepdim=True).index_select(axis, index)
    return low, high


#: Pole of the cubic B-spline prefilter; its impulse response is
#: sqrt(3) * z**|k|, below 1e-7 of its peak after 12 taps.
_SPLINE_POLE = 3**0.5 - 2
_SPLINE_TAPS = 12


def _cubic_axis(image: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Cubic B-spline resampling along one axis, as scipy's ``zoom`` with
    ``grid_mode=True`` and edge extension: the samples are prefiltered into
    spline coefficients (here a truncated convolution of the recursive
    filter, edge-padded as scipy pads), then each output is a 4-tap sum."""
    moved = image.movedim(axis, -1)
    length = moved.shape[-1]
    rows = moved.reshape(-1, 1, length)
    pad = 2 * _SPLINE_TAPS
    rows = F.pad(rows, (pad, pad), mode="replicate")[:, 0]
    offsets = torch.arange(-_SPLINE_TAPS, _SPLINE_TAPS + 1, dtype=torch.float64)
    kernel = 3**0.5 * _SPLINE_POLE ** offsets.abs()
    # The filter as a sum of shifted rows: conv1d does the same sum, but on
    # a CPU through a buffer of every row times every tap (25x the image).
    width = length + 2 * _SPLINE_TAPS
    coefficients = torch.zeros((rows.shape[0], width), dtype=rows.dtype, device=rows.device)
    for shift, weight in enumerate(kernel.tolist()):
        coefficients.add_(rows[:, shift:shift + width], alpha=weight)  # padded by _SPLINE_TAPS
    centres = (torch.arange(size, dtype=torch.float64, device=image.device) + 0.5) * (length / size) - 0.5
    centres = centres + _SPLINE_TAPS
    base = torch.floor(centres)
    t = (centres - base).float()
    weights = (
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    )
    out = None
    for tap, weight in enumerate(weights):
        index = (base.long() + tap - 1).clamp_(0, coefficients.shape[-1] - 1)
        term = coefficients[:, index] * weight
        out = term if out is None else out.add_(term)
    return out.reshape(*moved.shape[:-1], size).movedim(-1, axis)
