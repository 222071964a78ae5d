"""The refiner folder, `rnca/`, and its format: `refiner.safetensors` (weights, never pickled) and `rnca.json`
(rule shape, label semantics, normalisation, step count, read-out clean-up, what it was trained on, and
`format_version`, checked on load). Every value is checked before anything is built from it, and a folder is
written atomically, so a crash never leaves a half-written rnca/."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.config import check_steps
from rnca_nnunet.errors import InputError
from rnca_nnunet.files import folder_identity, replace_folder, shared_folder_permissions
from rnca_nnunet.model import RNCA, RuleShape
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.state import LabelSemantics, Normalisation

FOLDER_NAME = "rnca"
WEIGHTS_FILE = "refiner.safetensors"
CONFIG_FILE = "rnca.json"
FOLD_RULE_FILE = "read_out_fold_{}.safetensors"  # with read_out_folds K > 1: the rules of folds 2..K, which
# held out the cases named in rnca.json's trained_on.read_out_fold_cases (fold 1's rule is refiner.safetensors)
FORMAT_VERSION = 1
READ_ATTEMPTS = 5
# the intensity properties nnU-Net's normalisation schemes read (preprocessing/normalization)
NEEDED_PROPERTIES = {"CTNormalization": {"mean", "std", "percentile_00_5", "percentile_99_5"}}


def load_rnca_refiner(model_folder: str, device: Optional[torch.device] = None) -> RNCARefiner:
    """Entry point of the `rnca` refiner: the rnca/ folder inside an nnU-Net model folder."""
    return read_refiner(os.path.join(model_folder, FOLDER_NAME), device)


def read_refiner(folder: str, device: Optional[torch.device] = None, **settings) -> RNCARefiner:
    """Load a refiner folder; every value of rnca.json is checked, and the weights' shapes are checked
    against the safetensors header before anything is allocated. Read again when the folder was replaced
    while it was read (a training finishing beside a prediction), so rnca.json and the weights always
    come from one folder."""
    for _ in range(READ_ATTEMPTS):
        identity = folder_identity(folder)
        refiner = _read_folder(folder, device, settings)
        if folder_identity(folder) == identity:
            return refiner
    raise InputError(f"{folder} was replaced {READ_ATTEMPTS} times while it was read: another process keeps "
                     f"saving a refiner there; load it when that process has finished")


def _read_folder(folder: str, device: Optional[torch.device], settings: dict) -> RNCARefiner:
    config_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise InputError(f"{path} not found: a refiner folder holds {CONFIG_FILE} and {WEIGHTS_FILE}; "
                             f"train one with nnUNetv2_train_rnca")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        version = config.get("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(f"format_version {version!r} is not one this rnca-nnunet reads (1 to "
                             f"{FORMAT_VERSION}); a newer rnca-nnunet wrote it: upgrade the package")
        shape = check_rule_shape(RuleShape(**config["rule"]))
        semantics = LabelSemantics(config["labels"], config.get("regions_class_order"))
        semantics.manager  # nnU-Net's LabelManager validates the label definition
        normalisation = check_normalisation(Normalisation(**config["normalisation"]))
        steps = check_steps(config["inference_steps"], f"{config_path}: inference_steps")
        clean_up = CleanUp.from_config(config)
        counts = {len(betti) for _, betti in clean_up.label_topology} - {shape.ndim}
        if counts:
            raise ValueError(f"label_topology holds {counts.pop()} Betti numbers a class, a {shape.ndim}D rule "
                             f"counts {shape.ndim}")
        transpose_forward = check_transpose(config.get("transpose_forward", [0, 1, 2]))
        trained_on = check_trained_on(config.get("trained_on", {}))
        check_channels(shape, semantics, normalisation)
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError, RecursionError, InputError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{config_path}: not a valid rnca.json ({first_line}); copy the whole rnca/ folder "
                         f"again or retrain with nnUNetv2_train_rnca") from None
    weights = _load_weights(weights_path, shape)
    model = RNCA(shape)
    model.load_state_dict(weights)
    return RNCARefiner(model, semantics, normalisation, steps, trained_on, device, clean_up,
                       transpose_forward=transpose_forward, **settings)


def save_refiner(refiner: RNCARefiner, folder: str, extra_files: Sequence[str] = ()) -> None:
    """Write the refiner folder atomically: a crash never leaves a half-written rnca/."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".rnca-partial-", dir=parent)
    save_weights(refiner.model, os.path.join(staging, WEIGHTS_FILE))
    with open(os.path.join(staging, CONFIG_FILE), "w") as handle:
        json.dump(refiner_config(refiner), handle, indent=2)
    for path in extra_files:
        shutil.copy2(path, staging)
    shared_folder_permissions(staging)
    replace_folder(staging, folder)


def save_weights(model: RNCA, path: str) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)


def save_fold_rules(rules: Sequence[RNCA], folder: str) -> List[str]:
    """The read-out folds' rules (folds 2, 3, ...) as `FOLD_RULE_FILE`s in `folder`; returns their paths."""
    paths = [os.path.join(folder, FOLD_RULE_FILE.format(index)) for index in range(2, len(rules) + 2)]
    for rule, path in zip(rules, paths):
        save_weights(rule, path)
    return paths


def read_fold_rule(folder: str, index: int, shape: RuleShape) -> RNCA:
    """Read-out fold `index`'s rule from a refiner folder, checked as the shipped rule's weights are."""
    path = os.path.join(folder, FOLD_RULE_FILE.format(index))
    if not os.path.isfile(path):
        raise InputError(f"{path} not found: the refiner was trained with read_out_folds and its folder holds every "
                         f"fold's rule; copy the whole rnca/ folder again or retrain with nnUNetv2_train_rnca")
    model = RNCA(shape)
    model.load_state_dict(_load_weights(path, shape))
    return model


def refiner_config(refiner: RNCARefiner) -> dict:
    """rnca.json: everything but the weights."""
    return {"format_version": FORMAT_VERSION, "rule": vars(refiner.model.shape).copy(),
            "labels": refiner.semantics.labels, "regions_class_order": refiner.semantics.regions_class_order,
            "normalisation": vars(refiner.normalisation).copy(), "inference_steps": refiner.steps,
            **asdict(refiner.clean_up),
            "transpose_forward": refiner.transpose_forward, "trained_on": refiner.trained_on}


def check_rule_shape(shape: RuleShape) -> RuleShape:
    """Sizes from a file are bounded before anything is built from them (a size of 1e8 would allocate gigabytes)."""
    limits = {"ndim": (2, 3), "context_channels": (1, 512), "mask_channels": (1, 255), "hidden_channels": (0, 256),
              "update_width": (1, 4096)}
    for name, (low, high) in limits.items():
        value = getattr(shape, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"rule {name} = {value!r} must be a whole number from {low} to {high}")
    if not isinstance(shape.alive_threshold, (int, float)) or not 0 <= shape.alive_threshold < 1:
        raise ValueError(f"rule alive_threshold = {shape.alive_threshold!r} must be in [0, 1)")
    return shape


def check_channels(shape: RuleShape, semantics: LabelSemantics, normalisation: Normalisation) -> None:
    """The rule sees the image channels and the mask channels: sizes that disagree with the labels or the
    normalisation would fail inside a convolution at the first case."""
    if shape.mask_channels != semantics.mask_channels:
        raise ValueError(f"rule mask_channels = {shape.mask_channels} but the labels give {semantics.mask_channels}")
    if shape.context_channels != len(normalisation.schemes) + semantics.mask_channels:
        raise ValueError(f"rule context_channels = {shape.context_channels} but {len(normalisation.schemes)} image "
                         f"and {semantics.mask_channels} mask channels give "
                         f"{len(normalisation.schemes) + semantics.mask_channels}")


def check_transpose(axes: object) -> List[int]:
    if not isinstance(axes, list) or sorted(axes) != [0, 1, 2]:
        raise ValueError(f"transpose_forward = {axes!r} must be a permutation of [0, 1, 2]")
    return axes


def check_trained_on(trained_on: object) -> dict:
    """A mapping, and the model the read-out was chosen on, where named, a trainer and plans: the zero-shot and
    read-out warnings read them."""
    if not isinstance(trained_on, dict):
        raise ValueError(f"trained_on must be a mapping, got {trained_on!r}")
    read_out_on = trained_on.get("read_out_on", {"trainer": "", "plans": ""})
    if not (isinstance(read_out_on, dict) and sorted(read_out_on) == ["plans", "trainer"]
            and all(isinstance(name, str) for name in read_out_on.values())):
        raise ValueError(f"trained_on.read_out_on must name a trainer and plans, got {read_out_on!r}")
    return trained_on


def check_normalisation(normalisation: Normalisation) -> Normalisation:
    """Scheme names and finite numbers only: a NaN percentile would turn every image into NaN and every mask
    empty, with no error."""
    if not isinstance(normalisation.schemes, list) or not all(isinstance(s, str) for s in normalisation.schemes):
        raise ValueError(f"normalisation schemes must be a list of nnU-Net scheme names, got {normalisation.schemes!r}")
    properties = normalisation.intensity_properties
    for channel, values in (properties.items() if isinstance(properties, dict) else [("", properties)]):
        if not isinstance(values, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values.values()):
            raise ValueError(f"normalisation intensity_properties of channel {channel!r} must be finite numbers, "
                             f"got {values!r}")
    for channel, scheme in enumerate(normalisation.schemes):
        missing = sorted(NEEDED_PROPERTIES.get(scheme, set()) - set(properties.get(str(channel), {})))
        if missing:
            raise ValueError(f"normalisation {scheme} of channel {channel} needs intensity_properties {missing}")
    return normalisation


def _load_weights(path: str, shape: RuleShape) -> Dict[str, torch.Tensor]:
    """Weights whose names and shapes fit `shape` (read from the header first) and whose values are finite."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in RNCA(shape).state_dict().items()}
    try:
        with safe_open(path, framework="pt") as handle:
            found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            if found != expected:
                differ = sorted(n for n in set(found) | set(expected) if found.get(n) != expected.get(n))
                raise ValueError(f"{differ[0]} is {found.get(differ[0])} in the file, {expected.get(differ[0])} "
                                 f"in {CONFIG_FILE}")
            weights = {name: handle.get_tensor(name) for name in found}
    except (SafetensorError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit {CONFIG_FILE} ({first_line}); copy the whole rnca/ folder "
                         f"from one training run") from None
    wrong_type = sorted(name for name, tensor in weights.items() if tensor.dtype != torch.float32)
    if wrong_type:
        raise InputError(f"{path}: weights {wrong_type[:3]} are {weights[wrong_type[0]].dtype}, not float32 as "
                         f"nnUNetv2_train_rnca writes them; copy the whole rnca/ folder from one training run")
    broken = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    if broken:
        raise InputError(f"{path}: weights {broken} contain NaN or infinite values; retrain with nnUNetv2_train_rnca")
    return weights
