"""Training cases on disk, read piece by piece: training memory independent of the number of cases.

Each CV case is loaded once, together with its sampling maps and patch centres (sampling.py), and
written as .npy files into the training run's staging folder. After that an array is opened
memory-mapped only while a patch is cut from it or the case is validated, and released again, so the
process holds one case at most besides the sample pool; the operating system's page cache does the
caching. This is what lets a dataset of hundreds of large volumes train on a small machine.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Tuple

import numpy as np

from rnca_nnunet.data import TrainingCase
from rnca_nnunet.sampling import CENTRE_KINDS, patch_centres, sampling_maps

class StoredCase:
    """A training case whose arrays are read from disk on each access (memory-mapped, released after use)."""

    def __init__(self, folder: str):
        self.folder = folder
        with open(os.path.join(folder, "case.json")) as handle:
            meta = json.load(handle)
        self.name: str = meta["name"]
        self.spacing: Tuple[float, ...] = tuple(meta["spacing"])

    def _load(self, name: str) -> np.ndarray:
        return np.load(os.path.join(self.folder, name + ".npy"), mmap_mode="r")

    image = property(lambda self: self._load("image"))
    mask = property(lambda self: self._load("mask"))
    target = property(lambda self: self._load("target"))
    valid = property(lambda self: self._load("valid"))
    focus = property(lambda self: self._load("focus"))
    line = property(lambda self: self._load("line"))

    @property
    def centres(self) -> Dict[str, np.ndarray]:
        return {kind: self._load("centres_" + kind) for kind in CENTRE_KINDS}


def store_case(case: TrainingCase, folder: str, ndim: int) -> StoredCase:
    """Write a case with its sampling maps and patch centres into `folder`/<name>/; returns it read from disk."""
    case_folder = os.path.join(folder, case.name)
    os.makedirs(case_folder, exist_ok=True)
    focus, line = sampling_maps(case, ndim)
    arrays = {"image": case.image, "mask": case.mask, "target": case.target, "valid": case.valid, "focus": focus,
              "line": line, **{"centres_" + k: v for k, v in patch_centres(case, focus).items()}}
    for name, array in arrays.items():
        np.save(os.path.join(case_folder, name + ".npy"), np.ascontiguousarray(array))
    with open(os.path.join(case_folder, "case.json"), "w") as handle:
        json.dump({"name": case.name, "spacing": list(case.spacing)}, handle)
    return StoredCase(case_folder)
