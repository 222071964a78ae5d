"""Training configuration as one dataclass, loaded from a preset in plugin_configs/ or a JSON file."""
from __future__ import annotations

import json
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
    error_weight: float = 4.0
    topology_weight: float = 50.0
    corrupted_fraction: float = 0.25
    val_fraction: float = 0.2
    seed: int = 0


def preset_names() -> List[str]:
    folder = resources.files("rnca_nnunet.plugin_configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str, overrides: Optional[dict] = None) -> TrainConfig:
    """A preset name from plugin_configs/ (e.g. vessels_2d) or a path to a JSON file."""
    if os.path.isfile(name_or_path):
        path, text = name_or_path, open(name_or_path).read()
    elif name_or_path in preset_names():
        path = f"plugin_configs/{name_or_path}.json"
        text = resources.files("rnca_nnunet.plugin_configs").joinpath(f"{name_or_path}.json").read_text()
    else:
        raise InputError(f"preset '{name_or_path}' is neither a file nor one of {preset_names()}")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    values.update(overrides or {})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{path}: unknown settings {unknown}; allowed are {sorted(known)}")
    return TrainConfig(**values)


def config_to_dict(config: TrainConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
