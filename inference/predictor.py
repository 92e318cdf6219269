"""segnode's nnU-Net v2 predictor: a ``Segmenter`` over an :class:`NnUNetModel`.

It reproduces ``nnUNetPredictor``'s label maps (crop to nonzero, CT
normalisation, resampling to the model spacing, Gaussian-weighted sliding
window, optional mirroring, logits resampled back before the argmax) but
keeps every step on one device: on a GPU the volume goes up once and only
the label map comes back, and the per-channel CPU resampling that dominates
nnU-Net's export is replaced by slabbed interpolation plus argmax.

The network sees the volume in RAS-canonical orientation, as an array
``[superior, anterior, right]``: what nnU-Net's readers give for the NIfTI
files TotalSegmentator prepares (it reorients every image with nibabel's
``as_closest_canonical`` first) and for the RAS datasets most nnU-Net models
are trained on. A DICOM series stored in any order is only permuted and
flipped into that view, then the model's own ``transpose_forward`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dicomio.seg import AlgorithmIdentity, LabelledStructure
from dicomio.volume import AxisOrder, Volume
from inference.nnunet_model import ModelPart, NnUNetModel
from inference.postprocess import PostprocessConfig, postprocess_labels
from inference.preprocess import (
    image_modes,
    interpolation_modes,
    network_shape,
    nonzero_box,
    normalise_ct,
    resample,
    resampled_argmax,
)
from inference.segmenter import Segmentation
from inference.sliding_window import predict_logits

#: The patient directions of the network's array axes (see the module docstring).
NETWORK_ORIENTATION = "SAR"


@dataclass(frozen=True)
class PredictionSettings:
    """How the sliding window runs; the defaults are nnU-Net's.

    Attributes
    ----------
    tile_step : float
        Largest distance between tile starts as a fraction of the patch
        (0.5: every voxel is seen by up to 8 tiles in 3-D).
    mirroring : bool
        Test-time mirroring over the axes the trainer allowed (none for
        TotalSegmentator's ``NoMirroring`` trainers); costs up to 8x.
    batch_size : int, optional
        Tiles per network call. By default 2 on a GPU, to keep it busy, and
        1 on the CPU, where a second tile saves nothing measurable and
        doubles the activations (118 output channels of a 128^3 tile are
        1 GB in fp32).
    """

    tile_step: float = 0.5
    mirroring: bool = True
    batch_size: int | None = None


class NnUNetSegmenter:
    """Segments a CT ``Volume`` with a trained nnU-Net model.

    Parameters
    ----------
    model : NnUNetModel
        From :func:`inference.nnunet_model.load_model`.
    device : str or torch.device
        ``"cpu"`` or a CUDA device. On CUDA the network runs under fp16
        autocast, as nnU-Net's does: bf16, with three fewer mantissa bits,
        moves boundary voxels (on the CPU it ran 2.3x faster here but cost
        Dice 0.93-0.99 per class against nnU-Net), so the CPU stays in fp32
        for parity. Logits are summed in fp16
        on both, as nnU-Net does: it halves the largest allocation of a run
        and reproduces nnU-Net's rounding (parity).
    settings : PredictionSettings
    postprocess : PostprocessConfig, optional
        Per-structure cleaning (largest component, holes, minimum volume) of
        the merged map, by merged label value; none by default, so that the
        map is nnU-Net's own.
    """

    def __init__(
        self,
        model: NnUNetModel,
        device: str | torch.device = "cpu",
        settings: PredictionSettings | None = None,
        postprocess: PostprocessConfig | None = None,
    ) -> None:
        self._model = model
        self._postprocess = postprocess
        self._device = torch.device(device)
        self._settings = settings or PredictionSettings()
        self._autocast = torch.float16 if self._device.type == "cuda" else None
        self._networks = tuple(tuple(self._network(part, s) for s in part.folds) for part in model.parts)

    @property
    def algorithm(self) -> AlgorithmIdentity:
        return self._model.algorithm

    @property
    def structures(self) -> tuple[LabelledStructure, ...]:
        return self._model.structures

    def segment(self, volume: Volume) -> Segmentation:
        """The merged label map of every part on the volume's grid."""
        return self._segment(volume, mirror=())

    def segment_mirrored(self, volume: Volume) -> Segmentation | None:
        """The label map of the volume mirrored along every axis that all
        parts were trained to see mirrored, mirrored back; None for a model
        trained without mirroring (TotalSegmentator's: left and right
        organs would swap).

        Agreement with :meth:`segment` is a self-consistency check: a network
        that is sure of an organ finds it in the mirror image too.
        """
        # Mirror axes are network axes: network axis a is view axis forward[a].
        common = set.intersection(*(
            {part.configuration.transpose_forward[a] for a in part.mirror_axes} for part in self._model.parts
        ))
        if not common:
            return None
        return self._segment(volume, mirror=tuple(sorted(common)))

    def _segment(self, volume: Volume, mirror: tuple[int, ...]) -> Segmentation:
        order = AxisOrder.towards(volume.affine, NETWORK_ORIENTATION)
        image = order.view(volume.array)
        if mirror:
            image = np.flip(image, mirror)
        spacing = order.spacing(volume.spacing)
        dtype = np.uint8 if len(self.structures) < 256 else np.uint16
        labels = np.zeros(image.shape, dtype=dtype)
        for index in range(len(self._model.parts)):
            part_labels = self.part_labels(index, image, spacing)
            values = np.asarray(self._model.values[index], dtype=dtype)
            found = part_labels > 0
            labels[found] = values[part_labels[found]]
        if self._postprocess is not None:
            labels = postprocess_labels(labels, spacing, self._postprocess)
        if mirror:
            labels = np.flip(labels, mirror)
        return Segmentation(labels=np.ascontiguousarray(order.back(labels)), volume=volume,
                            structures=self.structures, algorithm=self.algorithm)

    @torch.inference_mode()
    def part_labels(self, index: int, array: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """One part's label map (its own channel numbers) of `array` with
        voxel `spacing` in mm, both ``[slice, row, column]``.

        This is what ``nnUNetPredictor.predict_single_npy_array`` returns for
        the same array and spacing, and what the parity tests compare.
        """
        part: ModelPart = self._model.parts[index]
        configuration = part.configuration
        forward = configuration.transpose_forward
        image = np.transpose(array, forward)
        spacing = tuple(float(spacing[a]) for a in forward)
        box = nonzero_box(image)
        # A copy: normalisation works in place and must not touch the caller's volume.
        cropped = torch.from_numpy(np.array(image[box.slices], dtype=np.float32, order="C"))
        tensor = normalise_ct(cropped.to(self._device)[None], configuration.normalisation)
        shape = network_shape(box.shape, spacing, configuration.spacing)
        tensor = resample(tensor, shape, image_modes(interpolation_modes(spacing, configuration.spacing)))
        logits = self._logits(index, tensor)
        del tensor
        dtype = torch.uint8 if part.num_classes < 256 else torch.int16
        labels = torch.zeros(image.shape, dtype=dtype)
        resampled_argmax(logits, box.shape, interpolation_modes(configuration.spacing, spacing),
                         out=labels[box.slices])
        return np.transpose(labels.numpy(), configuration.transpose_backward)

    def _logits(self, index: int, image: torch.Tensor) -> torch.Tensor:
        """Logits on the network grid, averaged over the folds (an ensemble
        averages logits, not label maps, as nnU-Net does)."""
        part = self._model.parts[index]
        settings = self._settings
        total = None
        for network in self._networks[index]:
            logits = predict_logits(
                network, image, part.num_classes,
                patch_size=part.configuration.patch_size,
                step=settings.tile_step,
                mirror_axes=part.mirror_axes if settings.mirroring else (),
                batch_size=settings.batch_size or (2 if self._device.type == "cuda" else 1),
                accumulate=torch.float16,
                autocast=self._autocast,
            )
            total = logits if total is None else total.add_(logits)
        if len(self._networks[index]) > 1:
            total /= len(self._networks[index])
        return total

    def _network(self, part: ModelPart, state: dict[str, torch.Tensor]) -> nn.Module:
        network = part.build_network()
        network.load_state_dict(state)
        return network.to(self._device).eval()
