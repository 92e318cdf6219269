"""Trained nnU-Net v2 models read from their folders into typed objects.

An nnU-Net training output folder (``<Dataset>/<Trainer>__<Plans>__<Configuration>``)
holds ``dataset.json`` (channels and labels), ``plans.json`` (geometry,
normalisation and architecture of every configuration) and one
``fold_N/checkpoint_final.pth`` per trained fold. Everything the predictor
needs is parsed here, once, into frozen dataclasses so that no string-keyed
dict of the plans travels further: a missing or unsupported field fails at
load time with the file it came from, not halfway through a segmentation.

Only facts of nnU-Net's formats are used (key names, defaults such as the
old-format architecture's instance-norm settings); nnunetv2 itself is not
imported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dicomio.codes import UnknownStructureError, structure_code
from dicomio.seg import AlgorithmIdentity, LabelledStructure

#: nnU-Net's spacing-ratio above which an axis is resampled on its own
#: (nnunetv2.configuration.ANISO_THRESHOLD).
ANISOTROPY_THRESHOLD = 3.0

_CHECKPOINT = "checkpoint_final.pth"


class ModelLoadError(ValueError):
    """A model folder that segnode cannot use, with the file and the reason."""


@dataclass(frozen=True)
class CtNormalisation:
    """nnU-Net's ``CTNormalization``: clip to the foreground's 0.5 and 99.5
    percentiles, then standardise with the foreground's mean and std.

    These statistics were measured on the training set's foreground voxels,
    so they are a property of the model, not of the image.
    """

    lower: float
    upper: float
    mean: float
    std: float


@dataclass(frozen=True)
class Architecture:
    """The network of a configuration, as dynamic-network-architectures
    builds it.

    Attributes
    ----------
    kind : str
        ``"PlainConvUNet"`` or ``"ResidualEncoderUNet"``.
    features_per_stage, kernel_sizes, strides, blocks_per_stage, convs_per_decoder_stage
        One entry per resolution stage (decoder: one fewer).
    conv_bias, norm_eps, norm_affine, negative_slope
        Conv3d bias, InstanceNorm3d settings and LeakyReLU slope.
    """

    kind: str
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    blocks_per_stage: tuple[int, ...]
    convs_per_decoder_stage: tuple[int, ...]
    conv_bias: bool = True
    norm_eps: float = 1e-5
    norm_affine: bool = True
    negative_slope: float = 0.01


@dataclass(frozen=True)
class Configuration:
    """One configuration (``3d_fullres``, ``3d_lowres``...) of a plans file.

    Attributes
    ----------
    name : str
    patch_size : tuple of int
        Tile size in voxels, in the network's (transposed) axis order.
    spacing : tuple of float
        Voxel spacing in mm the network was trained at, same order.
    transpose_forward, transpose_backward : tuple of int
        Axis permutation from the image's ``[slice, row, column]`` order to
        the network's, and back.
    normalisation : CtNormalisation
    architecture : Architecture
    """

    name: str
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    normalisation: CtNormalisation
    architecture: Architecture


@dataclass(frozen=True, eq=False)
class ModelPart:
    """One trained nnU-Net model: its configuration, labels and folds.

    Attributes
    ----------
    folder : Path
        The training output folder.
    configuration : Configuration
    label_names : tuple of str
        Name of output channel ``i`` (0 is background), from dataset.json.
    input_channels : int
    folds : tuple of dict
        ``state_dict`` of each fold; more than one is an ensemble whose
        logits are averaged.
    mirror_axes : tuple of int
        Axes the trainer allowed for test-time mirroring (empty for the
        ``NoMirroring`` trainers TotalSegmentator uses).
    """

    folder: Path
    configuration: Configuration
    label_names: tuple[str, ...]
    input_channels: int
    folds: tuple[dict[str, torch.Tensor], ...]
    mirror_axes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_network(self) -> nn.Module:
        """A new network of this part's architecture, in eval mode, without weights."""
        return build_network(self.configuration.architecture, self.input_channels, self.num_classes)


@dataclass(frozen=True, eq=False)
class NnUNetModel:
    """One or more parts whose label maps merge into one.

    TotalSegmentator's ``total`` task is five models (Dataset291-295) each
    covering some of 117 structures; their maps are merged in part order,
    a later part's label winning where two overlap, as TotalSegmentator does.

    Attributes
    ----------
    parts : tuple of ModelPart
    values : tuple of tuple of int
        ``values[p][c]``: the merged label value of channel ``c`` of part
        ``p`` (0 for background). Values are numbered 1, 2... in part and
        channel order, which for TotalSegmentator's parts is its own
        numbering.
    structures : tuple of LabelledStructure
    algorithm : AlgorithmIdentity
    """

    parts: tuple[ModelPart, ...]
    values: tuple[tuple[int, ...], ...]
    structures: tuple[LabelledStructure, ...]
    algorithm: AlgorithmIdentity


def build_network(architecture: Architecture, input_channels: int, num_classes: int) -> nn.Module:
    """Instantiate the architecture with dynamic-network-architectures.

    Deep supervision is off: at inference only the full-resolution output
    is used, and its weights are the same either way.
    """
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    classes = {"PlainConvUNet": (PlainConvUNet, "n_conv_per_stage"),
               "ResidualEncoderUNet": (ResidualEncoderUNet, "n_blocks_per_stage")}
    network_class, blocks_key = classes[architecture.kind]
    dims = len(architecture.kernel_sizes[0])
    conv_op, norm_op = {3: (nn.Conv3d, nn.InstanceNorm3d), 2: (nn.Conv2d, nn.InstanceNorm2d)}[dims]
    network = network_class(
        input_channels=input_channels,
        n_stages=len(architecture.features_per_stage),
        features_per_stage=list(architecture.features_per_stage),
        conv_op=conv_op,
        kernel_sizes=[list(k) for k in architecture.kernel_sizes],
        strides=[list(s) for s in architecture.strides],
        num_classes=num_classes,
        n_conv_per_stage_decoder=list(architecture.convs_per_decoder_stage),
        conv_bias=architecture.conv_bias,
        norm_op=norm_op,
        norm_op_kwargs={"eps": architecture.norm_eps, "affine": architecture.norm_affine},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"negative_slope": architecture.negative_slope, "inplace": True},
        deep_supervision=False,
        **{blocks_key: list(architecture.blocks_per_stage)},
    )
    return network.eval()


def load_model(
    folders: Sequence[Path | str],
    *,
    folds: Sequence[int] | None = None,
    name: str | None = None,
    version: str = "1",
) -> NnUNetModel:
    """Read one model, or several parts of one, from training output folders.

    Parameters
    ----------
    folders : sequence of path
        Each a ``<Trainer>__<Plans>__<Configuration>`` folder; several are
        parts merged in this order.
    folds : sequence of int, optional
        Folds to ensemble; default every ``fold_N`` with a final checkpoint.
    name, version : str
        Identity written into the SEG; the name defaults to the first
        part's dataset folder name.

    Raises
    ------
    ModelLoadError
        A file is missing or malformed, a configuration or architecture is
        unsupported, or a label has no code in ``dicomio.codes``.
    """
    if not folders:
        raise ModelLoadError("no model folder given")
    parts = tuple(load_part(Path(f), folds=folds) for f in folders)
    values: list[tuple[int, ...]] = []
    structures: list[LabelledStructure] = []
    seen: dict[str, Path] = {}
    for part in parts:
        part_values = [0]
        for label in part.label_names[1:]:
            if label in seen:
                raise ModelLoadError(f"{part.folder}: label {label!r} is also produced by {seen[label]}")
            seen[label] = part.folder
            structures.append(LabelledStructure(len(structures) + 1, structure_code(label)))
            part_values.append(len(structures))
        values.append(tuple(part_values))
    identity = AlgorithmIdentity(name=name or Path(folders[0]).resolve().parent.name, version=version)
    return NnUNetModel(parts=parts, values=tuple(values), structures=tuple(structures), algorithm=identity)


def load_part(folder: Path, *, folds: Sequence[int] | None = None) -> ModelPart:
    """Read one training output folder (see :func:`load_model`)."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a folder")
    configuration_name = folder.name.rsplit("__", 1)[-1]
    dataset = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    label_names = _label_names(folder / "dataset.json", dataset)
    input_channels = len(_field(folder / "dataset.json", dataset, "channel_names"))
    configuration = parse_configuration(folder / "plans.json", plans, configuration_name)
    checkpoints = _checkpoints(folder, folds)
    weights = []
    mirror_axes: tuple[int, ...] = ()
    for index, path in enumerate(checkpoints):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
        if state is None:
            raise ModelLoadError(f"{path}: no 'network_weights' in the checkpoint")
        # Checkpoints of torch.compile'd networks prefix every key.
        weights.append({k.removeprefix("_orig_mod."): v for k, v in state.items()})
        axes = tuple(int(a) for a in (checkpoint.get("inference_allowed_mirroring_axes") or ()))
        if index and axes != mirror_axes:
            raise ModelLoadError(f"{path}: mirroring axes {axes} differ from fold {checkpoints[0]}")
        mirror_axes = axes
    part = ModelPart(folder, configuration, label_names, input_channels, tuple(weights), mirror_axes)
    network = part.build_network()
    for path, state in zip(checkpoints, weights, strict=True):
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise ModelLoadError(f"{path}: weights do not fit the plans' architecture: {error}") from None
    return part


def parse_configuration(path: Path, plans: dict[str, Any], name: str) -> Configuration:
    """The typed configuration `name` of a plans.json (``inherits_from`` resolved)."""
    configurations = _field(path, plans, "configurations")
    raw = _resolve_inheritance(path, configurations, name, ())
    patch_size = tuple(int(v) for v in _field(path, raw, "patch_size"))
    if len(patch_size) != 3:
        raise ModelLoadError(f"{path}: configuration {name!r} is not 3-D (patch size {patch_size})")
    schemes = _field(path, raw, "normalization_schemes")
    if list(schemes) != ["CTNormalization"]:
        raise ModelLoadError(f"{path}: only one CTNormalization channel is supported, not {schemes}")
    intensities = _field(path, plans, "foreground_intensity_properties_per_channel")
    stats = _field(path, intensities, "0")
    normalisation = CtNormalisation(
        lower=float(_field(path, stats, "percentile_00_5")),
        upper=float(_field(path, stats, "percentile_99_5")),
        mean=float(_field(path, stats, "mean")),
        std=float(_field(path, stats, "std")),
    )
    return Configuration(
        name=name,
        patch_size=patch_size,
        spacing=tuple(float(v) for v in _field(path, raw, "spacing")),
        transpose_forward=tuple(int(v) for v in _field(path, plans, "transpose_forward")),
        transpose_backward=tuple(int(v) for v in _field(path, plans, "transpose_backward")),
        normalisation=normalisation,
        architecture=_architecture(path, raw),
    )


def _architecture(path: Path, raw: dict[str, Any]) -> Architecture:
    if "architecture" not in raw:
        return _old_format_architecture(path, raw)
    arch = raw["architecture"]
    kind = str(_field(path, arch, "network_class_name")).rsplit(".", 1)[-1]
    kwargs = _field(path, arch, "arch_kwargs")
    blocks_key = "n_blocks_per_stage" if kind == "ResidualEncoderUNet" else "n_conv_per_stage"
    if kind not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise ModelLoadError(f"{path}: unsupported network {arch['network_class_name']!r}")
    for key, expected in (("conv_op", "Conv3d"), ("norm_op", "InstanceNorm3d"), ("nonlin", "LeakyReLU")):
        found = str(kwargs.get(key)).rsplit(".", 1)[-1]
        if found != expected:
            raise ModelLoadError(
                f"{path}: arch_kwargs.{key} is {kwargs.get(key)!r}, only {expected} is supported"
            )
    if kwargs.get("dropout_op") is not None:
        raise ModelLoadError(f"{path}: dropout at inference is not supported")
    norm = kwargs.get("norm_op_kwargs") or {}
    nonlin = kwargs.get("nonlin_kwargs") or {}
    return Architecture(
        kind=kind,
        features_per_stage=_ints(_field(path, kwargs, "features_per_stage")),
        kernel_sizes=tuple(_ints(k) for k in _field(path, kwargs, "kernel_sizes")),
        strides=tuple(_ints(s) for s in _field(path, kwargs, "strides")),
        blocks_per_stage=_ints(_field(path, kwargs, blocks_key)),
        convs_per_decoder_stage=_ints(_field(path, kwargs, "n_conv_per_stage_decoder")),
        conv_bias=bool(kwargs.get("conv_bias", False)),
        norm_eps=float(norm.get("eps", 1e-5)),
        norm_affine=bool(norm.get("affine", True)),
        negative_slope=float(nonlin.get("negative_slope", 0.01)),
    )


def _old_format_architecture(path: Path, raw: dict[str, Any]) -> Architecture:
    """Plans written before nnunetv2 2.4 (TotalSegmentator v2's among them)
    name the class and give a base width doubled per stage up to a maximum;
    their networks used biased convs, affine InstanceNorm (eps 1e-5) and
    LeakyReLU(0.01), nnU-Net's fixed choices of the time."""
    kind = str(_field(path, raw, "UNet_class_name"))
    if kind not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise ModelLoadError(f"{path}: unsupported network {kind!r}")
    blocks = _ints(_field(path, raw, "n_conv_per_stage_encoder"))
    base = int(_field(path, raw, "UNet_base_num_features"))
    ceiling = int(_field(path, raw, "unet_max_num_features"))
    return Architecture(
        kind=kind,
        features_per_stage=tuple(min(base * 2**i, ceiling) for i in range(len(blocks))),
        kernel_sizes=tuple(_ints(k) for k in _field(path, raw, "conv_kernel_sizes")),
        strides=tuple(_ints(s) for s in _field(path, raw, "pool_op_kernel_sizes")),
        blocks_per_stage=blocks,
        convs_per_decoder_stage=_ints(_field(path, raw, "n_conv_per_stage_decoder")),
    )


def _resolve_inheritance(
    path: Path, configurations: dict[str, Any], name: str, visited: tuple[str, ...]
) -> dict[str, Any]:
    if name in visited:
        raise ModelLoadError(f"{path}: configurations inherit in a cycle: {' -> '.join((*visited, name))}")
    if name not in configurations:
        raise ModelLoadError(f"{path}: no configuration {name!r} (has {sorted(configurations)})")
    own = configurations[name]
    if "inherits_from" not in own:
        return own
    parent = _resolve_inheritance(path, configurations, own["inherits_from"], (*visited, name))
    return {**parent, **own}


def _label_names(path: Path, dataset: dict[str, Any]) -> tuple[str, ...]:
    labels = _field(path, dataset, "labels")
    by_value: dict[int, str] = {}
    for label, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelLoadError(f"{path}: label {label!r} is a region ({value!r}), not supported")
        if value in by_value:
            raise ModelLoadError(f"{path}: labels {by_value[value]!r} and {label!r} share value {value}")
        by_value[value] = label
    if sorted(by_value) != list(range(len(by_value))) or 0 not in by_value:
        raise ModelLoadError(f"{path}: label values must be 0..N, got {sorted(by_value)}")
    names = tuple(by_value[v] for v in range(len(by_value)))
    unknown = []
    for label in names[1:]:
        try:
            structure_code(label)
        except UnknownStructureError:
            unknown.append(label)
    if unknown:
        raise ModelLoadError(f"{path}: labels without a code in dicomio.codes: {', '.join(unknown)}")
    return names


def _checkpoints(folder: Path, folds: Sequence[int] | None) -> list[Path]:
    if folds is None:
        found = sorted(
            (int(m.group(1)), p / _CHECKPOINT)
            for p in folder.iterdir()
            if (m := re.fullmatch(r"fold_(\d+)", p.name)) and (p / _CHECKPOINT).is_file()
        )
        if (folder / "fold_all" / _CHECKPOINT).is_file():
            found.append((len(found), folder / "fold_all" / _CHECKPOINT))
        paths = [p for _, p in found]
    else:
        paths = [folder / f"fold_{f}" / _CHECKPOINT for f in folds]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise ModelLoadError(f"{folder}: missing checkpoint(s): {', '.join(missing) or _CHECKPOINT}")
    return paths


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing") from None
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path}: not JSON ({error})") from None


def _field(path: Path, mapping: dict[Any, Any], key: Any) -> Any:
    try:
        return mapping[key]
    except (KeyError, TypeError):
        raise ModelLoadError(f"{path}: missing field {key!r}") from None


def _ints(values: Sequence[Any] | int) -> tuple[int, ...]:
    if isinstance(values, int):
        return (values,)
    return tuple(int(v) for v in values)
