"""nnU-Net v2 model folders made on the spot, for tests and bench/inference.py.

No trained model can be downloaded here, so these write the files an nnU-Net
training run leaves (``dataset.json``, ``plans.json``,
``fold_N/checkpoint_final.pth``) around a network with random or briefly
trained weights. The plans follow TotalSegmentator v2's ``total`` models
(``nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres``: a
PlainConvUNet of six stages, 32 to 320 features, 3x3x3 kernels, CT
normalisation); the intensity statistics are plausible values for CT
foreground, not TotalSegmentator's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dicomio.codes import TOTALSEGMENTATOR_V2_CLASSES
from inference.nnunet_model import Architecture, build_network

TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
CT_FOREGROUND = {"max": 3071.0, "mean": 97.3, "median": 78.0, "min": -1024.0,
                 "percentile_00_5": -958.0, "percentile_99_5": 1245.0, "std": 265.0}


@dataclass(frozen=True)
class ModelSpec:
    """What to write: geometry, width and labels of one model folder."""

    dataset: str
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    features: tuple[int, ...]
    labels: tuple[str, ...]
    mirror_axes: tuple[int, ...] = ()
    old_plans_format: bool = False
    residual: bool = False
    transpose_forward: tuple[int, int, int] = (0, 1, 2)

    @property
    def architecture(self) -> Architecture:
        stages = len(self.features)
        return Architecture(
            kind="ResidualEncoderUNet" if self.residual else "PlainConvUNet",
            features_per_stage=self.features,
            kernel_sizes=((3, 3, 3),) * stages,
            strides=((1, 1, 1),) + ((2, 2, 2),) * (stages - 1),
            blocks_per_stage=(2,) * stages,
            convs_per_decoder_stage=(2,) * (stages - 1),
        )


def totalsegmentator_spec(
    resolution_mm: float = 3.0, *, classes: int = 117, full_size: bool = False, **changes
) -> ModelSpec:
    """TotalSegmentator's 3 mm (Dataset297) or 1.5 mm architecture.

    ``full_size`` gives its real width and patch (32..320 features, 128^3
    patch: bench only); otherwise 4 stages of 8..32 features on a 32^3
    patch, fast enough for tests on two CPU cores.
    """
    if full_size:
        patch, features = (128, 128, 128), (32, 64, 128, 256, 320, 320)
    else:
        patch, features = (32, 32, 32), (8, 16, 32, 32)
    number = 297 if resolution_mm == 3.0 else 291
    spec = ModelSpec(
        dataset=f"Dataset{number}_TotalSegmentator_{resolution_mm:g}mm",
        spacing=(resolution_mm,) * 3,
        patch_size=patch,
        features=features,
        labels=TOTALSEGMENTATOR_V2_CLASSES[:classes],
    )
    return replace(spec, **changes)


def write_model(
    root: Path,
    spec: ModelSpec,
    folds: dict[int, dict[str, torch.Tensor]] | None = None,
    *,
    seed: int = 0,
) -> Path:
    """Write a training output folder under `root` and return it.

    `folds` maps fold numbers to state dicts; by default fold 0 with
    weights drawn from `seed`.
    """
    folder = root / spec.dataset / f"{TRAINER}__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(spec.labels)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1,
               "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (folder / "plans.json").write_text(json.dumps(plans(spec), indent=1))
    if folds is None:
        torch.manual_seed(seed)
        folds = {0: random_weights(spec)}
    for fold, state in folds.items():
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({"network_weights": state, "trainer_name": TRAINER, "init_args": {},
                    "inference_allowed_mirroring_axes": list(spec.mirror_axes)},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def random_weights(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """A state dict of freshly initialised weights, with the instance
    norms' affine parameters jittered so that they are not the identity."""
    network = build_network(spec.architecture, 1, len(spec.labels) + 1)
    state = network.state_dict()
    for key, value in state.items():
        if value.is_floating_point() and "norm" in key:
            value.add_(torch.randn_like(value) * 0.2)
    return state


def plans(spec: ModelSpec) -> dict:
    """plans.json with one ``3d_fullres`` configuration."""
    architecture = spec.architecture
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(spec.patch_size),
        "median_image_size_in_voxels": [160, 160, 160],
        "spacing": list(spec.spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "batch_dice": False,
    }
    blocks_key = "n_blocks_per_stage" if spec.residual else "n_conv_per_stage"
    if spec.old_plans_format:
        configuration.update({
            "UNet_class_name": architecture.kind,
            "UNet_base_num_features": spec.features[0],
            "unet_max_num_features": spec.features[-1],
            "n_conv_per_stage_encoder": list(architecture.blocks_per_stage),
            "n_conv_per_stage_decoder": list(architecture.convs_per_decoder_stage),
            "num_pool_per_axis": [len(spec.features) - 1] * 3,
            "pool_op_kernel_sizes": [list(s) for s in architecture.strides],
            "conv_kernel_sizes": [list(k) for k in architecture.kernel_sizes],
        })
    else:
        module = "unet"
        configuration["architecture"] = {
            "network_class_name": f"dynamic_network_architectures.architectures.{module}.{architecture.kind}",
            "arch_kwargs": {
                "n_stages": len(spec.features),
                "features_per_stage": list(spec.features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [list(k) for k in architecture.kernel_sizes],
                "strides": [list(s) for s in architecture.strides],
                blocks_key: list(architecture.blocks_per_stage),
                "n_conv_per_stage_decoder": list(architecture.convs_per_decoder_stage),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
    backward = [spec.transpose_forward.index(i) for i in range(3)]
    return {
        "dataset_name": spec.dataset,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spec.spacing),
        "original_median_shape_after_transp": [160, 160, 160],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(spec.transpose_forward),
        "transpose_backward": backward,
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": CT_FOREGROUND},
    }


def train_on_reference(
    image: np.ndarray, labels: np.ndarray, spec: ModelSpec, *, iterations: int = 400, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Weights of `spec`'s network trained briefly on one labelled CT.

    A few hundred Adam steps of cross-entropy on random patches: enough
    for smooth, anatomical output (what parity must hold on; random
    weights give speckle), far from a useful model. `image` is in HU and
    `labels` uses the spec's label values, both ``[slice, row, column]``
    at the spec's spacing.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(spec.architecture, 1, len(spec.labels) + 1).train()
    stats = CT_FOREGROUND
    x = (np.clip(image, stats["percentile_00_5"], stats["percentile_99_5"]) - stats["mean"]) / stats["std"]
    pads = [(0, max(p - s, 0)) for s, p in zip(x.shape, spec.patch_size, strict=True)]
    x = torch.from_numpy(np.pad(x, pads).astype(np.float32))
    y = torch.from_numpy(np.pad(labels, pads).astype(np.int64))
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(iterations):
        batch_x, batch_y = [], []
        for _ in range(2):
            corner = [int(rng.integers(0, s - p + 1)) for s, p in zip(x.shape, spec.patch_size, strict=True)]
            window = tuple(slice(c, c + p) for c, p in zip(corner, spec.patch_size, strict=True))
            batch_x.append(x[window][None])
            batch_y.append(y[window])
        loss = torch.nn.functional.cross_entropy(network(torch.stack(batch_x)), torch.stack(batch_y))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return {k: v.detach().clone() for k, v in network.eval().state_dict().items()}
