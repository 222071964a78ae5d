"""Training configuration as one dataclass, loaded from a preset in plugin_configs/ or a JSON file."""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import List, Optional

from rnca_nnunet.errors import InputError


@dataclass
class TrainConfig:
    hidden_channels: int = 12
    update_width: int = 96
    patch_size: List[int] = (64, 64)
    batch_size: int = 8
    pool_size: int = 128
    fresh_per_batch: int = 2
    steps_min: int = 24
    steps_max: int = 48
    inference_steps: int = 64
    fire_rate: float = 0.5
    iterations: int = 1000
    validate_every: int = 100
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # checkpoints are the weights' moving average with this decay (0: the weights themselves)
    error_weight: float = 4.0
    topology_weight: float = 50.0
    corrupted_fraction: float = 0.25
    p_scale_rotate: float = 0.0
    p_local_intensity: float = 0.0  # nnU-Net DA5's occluding rectangles, brightness gradients, local gamma (sampling.py)
    fill_holes: float = 0.0  # share of the label's holes a synthetic corruption fills (corrupt.py)
    case_error_power: float = 0.0
    val_fraction: float = 0.2
    holdout_by_errors: bool = False
    # rules trained to choose the read-out: 1, the shipped rule alone (its held-out cases choose); K > 1, K - 1 more,
    # each holding out other cases, so that every CV case scores the read-out once (validation.read_out_folds);
    # None (the default): chosen from the CV cases' topology (validation.read_out_fold_count)
    read_out_folds: Optional[int] = None
    keep_base_loops: bool = False
    guard_search: bool = True  # choose the guard and the classes to refine on the held-out cases (readout.choose_guard)
    # the clean-up alone on cases the rule rewrites beyond the held-out ones (out_of_depth.py); off: with 4 held-out
    # generated vessel cases it fell back on unseen ones of the same kind (Dice 0.921 -> 0.831)
    fall_back: bool = False
    seed: int = 0


def preset_names() -> List[str]:
    folder = resources.files("rnca_nnunet.plugin_configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str, overrides: Optional[dict] = None) -> TrainConfig:
    """A preset name from plugin_configs/ (e.g. vessels_2d) or a path to a JSON file."""
    if os.path.isfile(name_or_path):
        path = name_or_path
        try:
            with open(name_or_path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: cannot be read as a UTF-8 JSON preset ({type(error).__name__}); save it "
                             f"as UTF-8 text") from None
    elif name_or_path in preset_names():
        path = f"plugin_configs/{name_or_path}.json"
        text = resources.files("rnca_nnunet.plugin_configs").joinpath(f"{name_or_path}.json").read_text()
    else:
        raise InputError(f"preset '{name_or_path}' is neither a file nor one of {preset_names()}")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: a preset is a JSON object of settings")
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{path}: unknown settings {unknown}; allowed are {sorted(known)}")
    config = TrainConfig(**values)
    check_config(config, path)
    for name, value in (overrides or {}).items():
        setattr(config, name, value)
    check_config(config, "command line (--iterations, --val_fraction)")
    return config


MAX_STEPS = 4096  # a local rule reaches 2 cells a step: 4096 steps cross any image nnU-Net can predict


def check_steps(value: object, name: str) -> int:
    """A step count from a user or a file: a whole number (NumPy's too) from 1 to MAX_STEPS."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= int(value) <= MAX_STEPS:
        raise InputError(f"{name} must be a whole number of steps from 1 to {MAX_STEPS}, got {value!r}")
    return int(value)


def _check(ok: bool, source: str, name: str, value: object, rule: str) -> None:
    if not ok:
        raise InputError(f"{source}: {name} = {value!r} is invalid; it must be {rule}")


def check_config(config: TrainConfig, source: str) -> None:
    """Every setting's type and range, so a typo fails at once with the setting named, not hours later."""
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name == "read_out_folds":
            _check(value is None or isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10,
                   source, f.name, value, "null (automatic) or a whole number from 1 to 10 (1: one held-out split)")
        elif f.name == "patch_size":
            _check(isinstance(value, (list, tuple)) and len(value) in (2, 3)
                   and all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 1024 for v in value),
                   source, f.name, value, "2 or 3 whole numbers from 8 to 1024")
        elif isinstance(f.default, bool):
            _check(isinstance(value, bool), source, f.name, value, "true or false")
        elif isinstance(f.default, int):
            _check(isinstance(value, int) and not isinstance(value, bool), source, f.name, value, "a whole number")
        else:
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                   source, f.name, value, "a finite number")
    c = config
    _check(c.iterations >= 1, source, "iterations", c.iterations, ">= 1")
    _check(c.validate_every >= 1, source, "validate_every", c.validate_every, ">= 1")
    _check(1 <= c.batch_size <= c.pool_size, source, "batch_size", c.batch_size, "from 1 to pool_size")
    _check(0 <= c.fresh_per_batch <= c.batch_size, source, "fresh_per_batch", c.fresh_per_batch,
           "from 0 to batch_size")
    _check(1 <= c.steps_min <= c.steps_max <= MAX_STEPS, source, "steps_min/steps_max",
           (c.steps_min, c.steps_max), f"1 <= steps_min <= steps_max <= {MAX_STEPS}")
    check_steps(c.inference_steps, f"{source}: inference_steps")
    _check(0 <= c.hidden_channels <= 256, source, "hidden_channels", c.hidden_channels, "from 0 to 256")
    _check(1 <= c.update_width <= 4096, source, "update_width", c.update_width, "from 1 to 4096")
    _check(0 < c.fire_rate <= 1, source, "fire_rate", c.fire_rate, "in (0, 1]")
    _check(c.learning_rate > 0, source, "learning_rate", c.learning_rate, "> 0")
    for name in ("weight_decay", "error_weight", "topology_weight"):
        _check(getattr(c, name) >= 0, source, name, getattr(c, name), ">= 0")
    _check(c.grad_clip > 0, source, "grad_clip", c.grad_clip, "> 0")
    _check(0 <= c.ema_decay < 1, source, "ema_decay", c.ema_decay, "in [0, 1) (0: off)")
    for name in ("corrupted_fraction", "p_scale_rotate", "p_local_intensity", "fill_holes"):
        _check(0 <= getattr(c, name) <= 1, source, name, getattr(c, name), "in [0, 1]")
    _check(0 <= c.case_error_power <= 1, source, "case_error_power", c.case_error_power, "in [0, 1] (0: uniform)")
    _check(0 <= c.val_fraction < 1, source, "val_fraction", c.val_fraction, "in [0, 1)")
    _check(0 <= c.seed < 2 ** 32, source, "seed", c.seed, "a whole number from 0 to 2**32 - 1 (NumPy's seeds)")


def config_to_dict(config: TrainConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
