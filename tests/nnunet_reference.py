"""nnunetv2's own ``nnUNetPredictor`` on a model folder: the parity reference.

nnunetv2 is a test-only dependency. Its usual entry point,
``initialize_from_trained_model_folder``, finds the trainer class by
importing every trainer module, some of which need torchvision (not
installable here), so the network is built with nnunetv2's
``get_network_from_plans`` and handed over with ``manual_initialization``:
everything from preprocessing to export is still nnunetv2's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def nnunet_labels(
    folder: Path,
    array: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    folds: tuple[int, ...] = (0,),
    mirroring: bool = True,
    tile_step: float = 0.5,
    device: torch.device | None = None,
) -> np.ndarray:
    """nnUNetPredictor's label map of `array` ``[slice, row, column]`` with
    voxel `spacing` (same order), as SimpleITKIO would hand them over."""
    device = device or torch.device("cpu")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans_manager = PlansManager(str(folder / "plans.json"))
    configuration = plans_manager.get_configuration(folder.name.rsplit("__", 1)[-1])
    checkpoints = [torch.load(folder / f"fold_{f}" / "checkpoint_final.pth", map_location="cpu",
                              weights_only=False) for f in folds]
    network = get_network_from_plans(
        configuration.network_arch_class_name,
        configuration.network_arch_init_kwargs,
        configuration.network_arch_init_kwargs_req_import,
        len(dataset_json["channel_names"]),
        len(dataset_json["labels"]),
        allow_init=True,
        deep_supervision=False,
    )
    predictor = nnUNetPredictor(tile_step_size=tile_step, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(
        network, plans_manager, configuration, [c["network_weights"] for c in checkpoints],
        dataset_json, checkpoints[0]["trainer_name"],
        tuple(checkpoints[0]["inference_allowed_mirroring_axes"]) or None,
    )
    return predictor.predict_single_npy_array(array[None].astype(np.float32),
                                              {"spacing": list(spacing)})


def dice_per_class(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """Dice of every label present in either map (background excluded)."""
    result = {}
    for label in np.union1d(np.unique(a), np.unique(b)):
        if label == 0:
            continue
        x, y = a == label, b == label
        result[int(label)] = 2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum())
    return result
