"""RNCARefiner: a trained rule plus everything needed to apply it to an nnU-Net prediction.

A refiner is one folder, `rnca/`: `refiner.safetensors` (weights, never pickled) and `rnca.json`
(rule shape, label semantics, normalisation, step count, read-out clean-up sizes, what it was trained on).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rnca_nnunet.cleanup import fill_small_holes, remove_small_components
from rnca_nnunet.errors import InputError
from rnca_nnunet.data import ModelFolder
from rnca_nnunet.model import RNCA, RuleShape
from rnca_nnunet.state import (LabelSemantics, Normalisation, mask_from_probabilities, probabilities_from_mask,
                               segmentation_from_mask, target_from_label)

FOLDER_NAME = "rnca"
WEIGHTS_FILE = "refiner.safetensors"
CONFIG_FILE = "rnca.json"
FORMAT_VERSION = 1


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RNCARefiner:
    """Refines nnU-Net probabilities of one case: `refine(image, probabilities)`."""

    def __init__(self, model: RNCA, semantics: LabelSemantics, normalisation: Normalisation, steps: int,
                 trained_on: Dict, device: Optional[torch.device] = None, min_component_size: int = 0,
                 min_hole_size: int = 0):
        self.device = device or default_device()
        self.model = model.to(self.device).eval()
        self.semantics = semantics
        self.normalisation = normalisation
        self.steps = steps
        self.trained_on = trained_on
        self.min_component_size = min_component_size
        self.min_hole_size = min_hole_size
        self.max_tile_cells = 256 ** 2 * 16 if model.shape.ndim == 2 else 128 ** 3

    @classmethod
    def from_folder(cls, folder: str, device: Optional[torch.device] = None) -> "RNCARefiner":
        config_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise InputError(f"{path} not found: a refiner folder holds {CONFIG_FILE} and {WEIGHTS_FILE}; "
                                 f"train one with nnUNetv2_train_rnca")
        try:
            with open(config_path) as handle:
                config = json.load(handle)
            shape = RuleShape(**config["rule"])
            semantics = LabelSemantics(config["labels"], config.get("regions_class_order"))
            normalisation = Normalisation(**config["normalisation"])
            steps = int(config["inference_steps"])
            read_out = (int(config.get("min_component_size", 0)), int(config.get("min_hole_size", 0)))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{config_path}: not a valid rnca.json ({error!r}); retrain with nnUNetv2_train_rnca") \
                from None
        model = RNCA(shape)
        try:
            model.load_state_dict(load_file(weights_path))
        except (SafetensorError, RuntimeError, OSError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise InputError(f"{weights_path}: weights do not fit {CONFIG_FILE} ({first_line}); "
                             f"copy the whole rnca/ folder from one training run") from None
        return cls(model, semantics, normalisation, steps, config.get("trained_on", {}), device, *read_out)

    def save(self, folder: str, extra_files: Sequence[str] = ()) -> None:
        """Write the refiner folder atomically: a crash never leaves a half-written rnca/."""
        parent = os.path.dirname(os.path.abspath(folder))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".rnca-partial-", dir=parent)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(weights, os.path.join(staging, WEIGHTS_FILE))
        with open(os.path.join(staging, CONFIG_FILE), "w") as handle:
            json.dump(self.config(), handle, indent=2)
        for path in extra_files:
            shutil.copy2(path, staging)
        replace_folder(staging, folder)

    def config(self) -> dict:
        return {"format_version": FORMAT_VERSION, "rule": vars(self.model.shape).copy(),
                "labels": self.semantics.labels, "regions_class_order": self.semantics.regions_class_order,
                "normalisation": vars(self.normalisation).copy(), "inference_steps": self.steps,
                "min_component_size": self.min_component_size, "min_hole_size": self.min_hole_size,
                "trained_on": self.trained_on}

    def check_compatible(self, model: ModelFolder) -> None:
        """Refuse a refiner for other labels; warn when it was trained on another dataset (zero-shot)."""
        theirs = LabelSemantics(model.dataset_json["labels"], model.dataset_json.get("regions_class_order"))
        if theirs != self.semantics:
            raise InputError(f"refiner was trained for labels {self.semantics.labels}, but {model.path} predicts "
                             f"{theirs.labels}; train a refiner for this model with nnUNetv2_train_rnca")
        if len(model.dataset_json["channel_names"]) != len(self.normalisation.schemes):
            raise InputError(f"refiner expects {len(self.normalisation.schemes)} image channels, {model.path} has "
                             f"{len(model.dataset_json['channel_names'])}; train a refiner for this model")
        origin = (self.trained_on.get("dataset"), self.trained_on.get("configuration"))
        if origin != (model.dataset_name, model.configuration):
            warnings.warn(f"refiner was trained on {origin[0]} ({origin[1]}) and is applied zero-shot to "
                          f"{model.dataset_name} ({model.configuration})", stacklevel=2)

    # ---------------------------------------------------------------- refinement
    def refine(self, image: np.ndarray, probabilities: np.ndarray, steps: Optional[int] = None,
               stop_when_stable: bool = True) -> Tuple[np.ndarray, np.ndarray, int]:
        """Raw image (I, Z, Y, X) + nnU-Net probabilities (C, Z, Y, X) -> (probabilities, segmentation, steps).

        Runs `steps` updates, or fewer when the mask has stopped changing. Cases larger than
        `max_tile_cells` are refined in tiles whose halo covers the rule's reach, so tiling changes nothing;
        tiles always run the full step count so that every tile sees the same rule.
        """
        steps = self.steps if steps is None else steps
        if image.shape[1:] != probabilities.shape[1:]:
            raise InputError(f"image shape {image.shape[1:]} differs from probabilities shape {probabilities.shape[1:]}")
        context = np.concatenate([self.normalisation(image), mask_from_probabilities(probabilities, self.semantics)])
        mask, used = self.refine_context(context, steps, stop_when_stable)
        mask = self.clean(mask)
        return probabilities_from_mask(mask, self.semantics), segmentation_from_mask(mask, self.semantics), used

    def clean(self, mask: np.ndarray) -> np.ndarray:
        """Mask channels (K, Z, Y, X) without components smaller than `min_component_size` cells and with
        holes smaller than `min_hole_size` cells filled (see cleanup.py); both sizes are chosen on the CV
        cases at training time."""
        if self.min_component_size <= 1 and self.min_hole_size <= 1:
            return mask
        segmentation = segmentation_from_mask(mask, self.semantics)
        labels = [int(v) for v in np.unique(segmentation) if v > 0]
        cleaned = fill_small_holes(remove_small_components(segmentation, labels, self.min_component_size),
                                   self.min_hole_size, per_slice=self.model.shape.ndim == 2)
        changed = cleaned != segmentation
        mask = mask.copy()
        mask[:, changed] = target_from_label(cleaned[changed], self.semantics)[0]
        return mask

    def segment(self, mask: np.ndarray) -> np.ndarray:
        """Refined mask channels -> the label map that prediction writes."""
        return segmentation_from_mask(self.clean(mask), self.semantics)

    def refine_context(self, context: np.ndarray, steps: int, stop_when_stable: bool,
                       tile_size: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, int]:
        """Context (I + K, Z, Y, X) -> refined mask channels (K, Z, Y, X) and the steps used."""
        k = self.semantics.mask_channels
        if self.model.shape.ndim == 2:  # slices become the batch
            batch = np.ascontiguousarray(np.moveaxis(context, 1, 0))
        else:
            batch = context[None]
        spatial = batch.shape[2:]
        if tile_size is None and int(np.prod(spatial)) * batch.shape[0] <= self.max_tile_cells:
            mask, used = self._run(batch, steps, stop_when_stable)
        else:
            tile_size = tile_size or self._default_tile(spatial)
            mask, used = self._run_tiled(batch, steps, tile_size), steps
        mask = mask[:, :k]
        return (np.moveaxis(mask, 0, 1) if self.model.shape.ndim == 2 else mask[0]), used

    def _default_tile(self, spatial: Sequence[int]) -> Tuple[int, ...]:
        edge = 192 if self.model.shape.ndim == 2 else 96
        return tuple(min(edge, s) for s in spatial)

    def evolution(self, image: np.ndarray, probabilities: np.ndarray, z: int,
                  steps: Optional[int] = None) -> List[np.ndarray]:
        """Label maps of slice `z` at the start and after each of `steps` steps (give the steps `refine` used).

        A 2D rule needs only that slice; a 3D rule only the slab its reach covers, so this stays cheap."""
        steps = self.steps if steps is None else steps
        context = np.concatenate([self.normalisation(image), mask_from_probabilities(probabilities, self.semantics)])
        if self.model.shape.ndim == 2:
            batch, index = context[:, z][None], (0, slice(None), None)
        else:
            reach = self.model.receptive_radius(steps)
            low, high = max(z - reach, 0), min(z + reach + 1, context.shape[1])
            batch, index = context[None, :, low:high], (0, slice(None), slice(z - low, z - low + 1))
        frames = [segmentation_from_mask(batch[index][-self.semantics.mask_channels:], self.semantics)[0]]
        self._run(np.ascontiguousarray(batch), steps, False,
                  on_step=lambda mask: frames.append(segmentation_from_mask(mask[index], self.semantics)[0]))
        return frames

    @torch.inference_mode()
    def _run(self, batch: np.ndarray, steps: int, stop_when_stable: bool, check_every: int = 8,
             on_step: Optional[Callable[[np.ndarray], None]] = None) -> Tuple[np.ndarray, int]:
        k = self.semantics.mask_channels
        context_input = torch.from_numpy(batch).to(self.device)
        state = self.model.initial_state(context_input[:, -k:])
        context = self.model.context(context_input)
        previous = None
        for step in range(1, steps + 1):
            state = self.model.step(state, context, 1.0)
            if on_step is not None:
                on_step(RNCA.read_mask(state, k).cpu().numpy())
            if stop_when_stable and step % check_every == 0:
                binary = state[:, :k] > 0.5
                if previous is not None and torch.equal(binary, previous):
                    return RNCA.read_mask(state, k).cpu().numpy(), step
                previous = binary
        return RNCA.read_mask(state, k).cpu().numpy(), steps

    def _run_tiled(self, batch: np.ndarray, steps: int, tile_size: Sequence[int]) -> np.ndarray:
        halo = self.model.receptive_radius(steps)
        spatial = batch.shape[2:]
        out = np.zeros((batch.shape[0], self.semantics.mask_channels, *spatial), np.float32)
        starts = [range(0, s, t) for s, t in zip(spatial, tile_size)]
        for corner in itertools.product(*starts):
            core = tuple(slice(c, min(c + t, s)) for c, t, s in zip(corner, tile_size, spatial))
            outer = tuple(slice(max(c.start - halo, 0), min(c.stop + halo, s)) for c, s in zip(core, spatial))
            tile, _ = self._run(np.ascontiguousarray(batch[(slice(None), slice(None), *outer)]), steps, False)
            inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
            out[(slice(None), slice(None), *core)] = tile[(slice(None), slice(None), *inner)]
        return out


def replace_folder(staging: str, folder: str) -> None:
    """Move a fully written staging folder into place, replacing an older folder of that name."""
    old = None
    if os.path.exists(folder):
        old = tempfile.mkdtemp(prefix=".rnca-old-", dir=os.path.dirname(os.path.abspath(folder)))
        os.rmdir(old)
        os.replace(folder, old)
    os.replace(staging, folder)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def load_rnca_refiner(model_folder: str, device: Optional[torch.device] = None) -> RNCARefiner:
    """Entry point of the `rnca` refiner: the rnca/ folder inside an nnU-Net model folder."""
    return RNCARefiner.from_folder(os.path.join(model_folder, FOLDER_NAME), device)
