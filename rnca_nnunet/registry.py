"""`--refiner NAME` resolves through the `rnca_nnunet.refiners` entry-point group.

Another package registers a refiner with, in its setup.cfg:
    [options.entry_points]
    rnca_nnunet.refiners =
        myrefiner = mypackage.module:load_my_refiner
where `load_my_refiner(model_folder: str, device: torch.device)` returns an object with
`check_compatible(model: ModelFolder)` and
`refine(image, probabilities, steps=None) -> (probabilities, segmentation, steps_used)`, or None for no refinement.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Dict, Optional, Protocol, Tuple

import numpy as np
import torch

from rnca_nnunet.errors import InputError
from rnca_nnunet.data import ModelFolder

ENTRY_POINT_GROUP = "rnca_nnunet.refiners"


class Refiner(Protocol):
    def check_compatible(self, model: ModelFolder) -> None: ...

    def refine(self, image: np.ndarray, probabilities: np.ndarray,
               steps: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, int]: ...


def available_refiners() -> Dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_refiner(name: str, model_folder: str, device: torch.device) -> Optional[Refiner]:
    """The refiner registered as `name` for this nnU-Net model folder (None for `none`)."""
    registered = available_refiners()
    if name not in registered:
        raise InputError(f"unknown refiner '{name}'; installed refiners: {sorted(registered)} "
                         f"(is the package that provides it installed?)")
    return registered[name].load()(model_folder, device)


def load_no_refiner(model_folder: str, device: torch.device) -> None:
    """The `none` refiner: nnU-Net's prediction is written unchanged."""
    return None
