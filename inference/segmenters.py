"""Which segmenter a pipeline's model name means, loaded on a device.

A name is ``builtin`` or that of a model installed in a ``ModelStore``
(inference/model_store.py); both open as a ``Segmenter``, so what runs a
pipeline never asks which kind it got. The store only keeps models; loading
one is done here, once, by the engine.
"""

from __future__ import annotations

import hashlib

from inference.model_store import (
    BUILTIN,
    MANIFEST,
    InstalledModel,
    ModelConfiguration,
    ModelPart,
    ModelStore,
    ModelStoreError,
)
from inference.segmenter import Segmenter

__all__ = ["DeviceUnavailableError", "ModelLoadFailedError", "open_segmenter"]


class DeviceUnavailableError(ModelStoreError):
    """A ``--device`` this machine does not have (``cuda`` with the CPU build of PyTorch)."""


class ModelLoadFailedError(ModelStoreError):
    """An installed model that the nnU-Net engine cannot load."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"model {name!r} cannot be loaded: {detail}")
        self.name = name
        self.detail = detail


def open_segmenter(name: str, store: ModelStore, device: str) -> Segmenter:
    """The segmenter ``--model NAME`` selects: the built-in one or an installed model.

    Parameters
    ----------
    name : str
        ``builtin`` or the name of an installed model.
    store : ModelStore
        Where installed models are looked up.
    device : str
        ``cpu`` or ``cuda``.

    Raises
    ------
    UnknownModelError
        If `name` is neither built in nor installed.
    DeviceUnavailableError
        If `device` is ``cuda`` and PyTorch sees no CUDA device.
    ModelLoadFailedError
        If the engine cannot load an installed model.
    """
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                "--device cuda: PyTorch sees no CUDA device (is its CPU build installed?)"
            )
    if name == BUILTIN:
        from inference.builtin import BuiltinSegmenter

        return BuiltinSegmenter()
    return _open_nnunet(store.model(name), device)


def _open_nnunet(model: InstalledModel, device: str) -> Segmenter:
    # Imported here: the engine imports torch, which listing the store does not need.
    from inference.nnunet_model import ModelLoadError, load_model
    from inference.predictor import NnUNetSegmenter

    folders = [part.configuration_dir(model.path, _configuration(model, part)) for part in model.parts]
    try:
        loaded = load_model(folders, name=model.name, version=_algorithm_version(model))
    except ModelLoadError as exc:
        raise ModelLoadFailedError(model.name, str(exc)) from exc
    # `models list` shows the manifest's numbering; the label maps must use it.
    numbering = tuple((s.value, s.code.name) for s in loaded.structures)
    if numbering != tuple((s.value, s.structure) for s in model.structures):
        raise ModelLoadFailedError(model.name, f"the engine numbers its structures unlike {MANIFEST}")
    return NnUNetSegmenter(loaded, device)


def _configuration(model: InstalledModel, part: ModelPart) -> ModelConfiguration:
    """The configuration of `part` that runs: 3d_fullres, nnU-Net's default, or the only one."""
    if len(part.configurations) == 1:
        return part.configurations[0]
    for configuration in part.configurations:
        if configuration.configuration == "3d_fullres":
            return configuration
    raise ModelLoadFailedError(
        model.name,
        f"{part.dataset} has several configurations and no 3d_fullres: "
        + ", ".join(c.folder for c in part.configurations),
    )


def _algorithm_version(model: InstalledModel) -> str:
    """What the SEG records as the Algorithm Version (LO: at most 64 characters).

    The archives' checksums identify the weights exactly; a model installed
    from a folder has none, and its installation time is the best there is.
    """
    digests = [part.sha256 for part in model.parts]
    if None in digests:
        return f"installed {model.installed_at}"
    return "sha256 " + hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
