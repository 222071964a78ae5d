"""Where and how the rule runs: the default device, and per device the arithmetic and the tensor layout that
benchmarks/speed.py measured fastest without changing the labels."""
from __future__ import annotations

from typing import Optional

import torch

from rnca_nnunet.errors import InputError


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: object) -> torch.device:
    """A torch.device, or its name ("cpu", "cuda:1"); None: CUDA when present, else the CPU."""
    if device is None:
        return default_device()
    try:
        device = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a torch device; give 'cpu', 'cuda' or a torch.device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but no CUDA device is available; use 'cpu'")
    return device


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # name -> autocast dtype


def default_precision(device: torch.device) -> Optional[torch.dtype]:
    """The rule's autocast dtype where benchmarks/speed.py measured it faster with labels within 0.1% of
    float32's: float16 on CUDA (as fast as bfloat16, closer to float32), bfloat16 on a CPU that computes it
    natively (2-3x faster), float32 (None) on any other CPU, where PyTorch emulates bfloat16: on an AVX2 CPU
    a 256x256 step of the mesh_2d rule took 316 ms in bfloat16, 43 ms in float32 (channels-last, 2 threads)."""
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_computes_bfloat16() else None


def cpu_computes_bfloat16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX). PyTorch tells only through private
    functions; where a release drops them the answer is no, and the rule runs in float32: slower, never wrong."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and bool(check()) for check in checks)


def default_channels_last(device: torch.device) -> bool:
    """Channels-last tensors where benchmarks/speed.py measured them faster: on the CPU, not on CUDA."""
    return device.type == "cpu"


def precision_for(name: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype named (one of PRECISIONS; None: `default_precision` of the device)."""
    if name is None:
        return default_precision(device)
    if name not in PRECISIONS:
        raise InputError(f"precision {name!r} is not one of {sorted(PRECISIONS)}")
    return PRECISIONS[name]
