"""Tiled prediction: a patch-sized network over an image of any size.

The network was trained on patches of the configuration's patch size, so
the image is covered by overlapping tiles and their logits are blended with
a Gaussian importance map that trusts a tile's centre more than its edge,
as nnU-Net does (sigma 1/8 of the patch size, tiles spread evenly with at
most ``step`` of a patch between neighbours). Unlike nnU-Net, several tiles
go through the network at once, which keeps a GPU busy and amortises the
per-call overhead on a CPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: nnU-Net's peak of the importance map; any constant gives the same
#: weighted average, this one keeps fp16 sums away from underflow.
GAUSSIAN_PEAK = 10.0


def tile_starts(size: int, tile: int, step: float) -> tuple[int, ...]:
    """Start indices of the tiles along one axis.

    As few tiles as cover `size` with neighbours at most ``step * tile``
    apart, spread evenly from 0 to ``size - tile`` (the same positions as
    nnU-Net, for parity).
    """
    if not 0 < step <= 1:
        raise ValueError(f"tile step must be in (0, 1], not {step}")
    if size < tile:
        raise ValueError(f"axis of {size} voxels is smaller than the tile ({tile})")
    count = math.ceil((size - tile) / (tile * step)) + 1
    if count == 1:
        return (0,)
    spacing = (size - tile) / (count - 1)
    return tuple(int(round(spacing * i)) for i in range(count))


def gaussian_importance(
    tile: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32, sigma_scale: float = 1 / 8
) -> torch.Tensor:
    """The importance map of a tile: a separable Gaussian centred on the
    tile's middle voxel (``size // 2``), peak :data:`GAUSSIAN_PEAK`.

    nnU-Net obtains it by Gaussian-filtering a delta, whose kernel stops at
    four sigmas; beyond that it is 0, which nnU-Net then replaces by the
    smallest nonzero value so that no voxel has zero weight. Both are kept.
    """
    weights = []
    for size in tile:
        sigma = size * sigma_scale
        offsets = torch.arange(size, dtype=torch.float64) - size // 2
        axis = torch.exp(-0.5 * (offsets / sigma) ** 2)
        axis[offsets.abs() > int(4 * sigma + 0.5)] = 0
        weights.append(axis)
    importance = weights[0]
    for axis in weights[1:]:
        importance = importance[..., None] * axis
    # Cast before replacing zeros: in fp16 the far corners underflow to 0
    # too and get the smallest weight, as in nnU-Net.
    importance = (importance * (GAUSSIAN_PEAK / importance.max())).to(dtype)
    importance[importance == 0] = importance[importance > 0].min()
    return importance.to(device)


def padding_for(shape: Sequence[int], tile: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` zero padding per axis to reach at least the tile
    size; nnU-Net pads evenly, the odd voxel after."""
    missing = [max(t - s, 0) for s, t in zip(shape, tile, strict=True)]
    return tuple((m // 2, m - m // 2) for m in missing)


def tiles(shape: Sequence[int], tile: Sequence[int], step: float) -> Iterator[tuple[slice, ...]]:
    """The tiles covering `shape`, in nnU-Net's order."""
    starts = [tile_starts(s, t, step) for s, t in zip(shape, tile, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, c + t) for c, t in zip(corner, tile, strict=True))


def mirror_combinations(axes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Every set of spatial axes to flip for test-time mirroring, the
    identity first (all ``2**len(axes)`` of them, averaged with equal weight)."""
    return tuple(c for n in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), n))


@torch.inference_mode()
def predict_logits(
    network: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    *,
    patch_size: Sequence[int],
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    batch_size: int = 1,
    accumulate: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits ``[class, *grid]`` of `image` ``[channel, *grid]``, tile by tile.

    Parameters
    ----------
    network : torch.nn.Module
        On the image's device, in eval mode.
    image : torch.Tensor
        The normalised image on the network's grid.
    num_classes : int
    patch_size : sequence of int
    step : float
        Largest distance between tile starts, as a fraction of the patch.
    mirror_axes : sequence of int
        Spatial axes (0-based) for test-time mirroring; empty for none.
    batch_size : int
        Tiles per network call.
    accumulate : torch.dtype
        Dtype of the summed logits: fp16 halves the largest allocation of a
        run (what nnU-Net uses on every device), fp32 is exact.
    autocast : torch.dtype, optional
        Autocast dtype (bf16/fp16) for the network on CUDA.
    """
    device = image.device
    pads = padding_for(image.shape[1:], patch_size)
    if any(p != (0, 0) for p in pads):
        flat = [v for before_after in reversed(pads) for v in before_after]
        image = F.pad(image, flat, value=0.0)
    grid = tuple(image.shape[1:])
    importance = gaussian_importance(tuple(patch_size), device, accumulate)
    logits = torch.zeros((num_classes, *grid), dtype=accumulate, device=device)
    weights = torch.zeros(grid, dtype=accumulate, device=device)
    flips = tuple(tuple(a + 2 for a in c) for c in mirror_combinations(mirror_axes))
    batch: list[tuple[slice, ...]] = []

    def flush() -> None:
        x = torch.stack([image[(slice(None), *t)] for t in batch])
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            summed = None
            for axes in flips:
                y = network(torch.flip(x, axes) if axes else x)
                y = (torch.flip(y, axes) if axes else y).float()
                summed = y if summed is None else summed.add_(y)
        summed.mul_(importance.float() / len(flips))
        for t, prediction in zip(batch, summed, strict=True):
            # Sum in fp32, round once to the accumulator's dtype (nnU-Net's
            # fp16 += fp32); torch's mixed-dtype in-place add does the same
            # 4x slower on a CPU. Channel by channel, so that the fp32 copy
            # is one channel of a tile, not all of them.
            for channel, values in zip(logits, prediction, strict=True):
                region = channel[t]
                region.copy_(region.float().add_(values))
            weights[t] += importance
        batch.clear()

    for t in tiles(grid, patch_size, step):
        batch.append(t)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    logits /= weights
    inner = tuple(slice(before, size - after) for (before, after), size in zip(pads, grid, strict=True))
    return logits[(slice(None), *inner)]
