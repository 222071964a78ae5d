"""The rNCA rule: fixed perception, a tiny per-cell update network, alive masking, the step loop.

One class serves 2D and 3D (`ndim`). The state is (B, mask_channels + hidden_channels, *spatial);
its first `mask_channels` channels are foreground probabilities. Nothing here knows nnU-Net.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RuleShape:
    """Everything needed to rebuild the network (stored in rnca.json)."""

    ndim: int
    context_channels: int  # image channels + initial mask channels, seen through a 3^n conv
    mask_channels: int
    hidden_channels: int = 12
    update_width: int = 96
    alive_threshold: float = 0.1

    @property
    def state_channels(self) -> int:
        return self.mask_channels + self.hidden_channels


def _perception_kernels(ndim: int) -> torch.Tensor:
    """Identity plus one Sobel gradient per axis, each normalised by its sum of absolute weights."""
    smooth, diff = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])
    identity = torch.zeros((3,) * ndim)
    identity[(1,) * ndim] = 1.0
    kernels = [identity]
    for axis in range(ndim):
        factors = [diff if a == axis else smooth for a in range(ndim)]
        kernel = factors[0]
        for factor in factors[1:]:
            kernel = torch.tensordot(kernel, factor, dims=0)
        kernels.append(kernel / kernel.abs().sum())
    return torch.stack(kernels)


def memory_format(ndim: int, channels_last: bool) -> torch.memory_format:
    """The layout of the rule's tensors and weights: channels-last runs its 1x1 convolutions 1.5-2.5x faster on
    the CPU (oneDNN), and slower on CUDA (benchmarks/speed.py)."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


def dilate(cells: torch.Tensor) -> torch.Tensor:
    """3^n binary dilation of a boolean (B, 1, *spatial) map, one axis at a time: the same as a 3^n max-pool
    of the map, and on the CPU 10-100x faster (PyTorch's 3D max-pool was a fifth of a 3D step)."""
    for axis in range(2, cells.ndim):
        size, grown = cells.shape[axis], cells.clone()
        grown.narrow(axis, 1, size - 1).logical_or_(cells.narrow(axis, 0, size - 1))
        grown.narrow(axis, 0, size - 1).logical_or_(cells.narrow(axis, 1, size - 1))
        cells = grown
    return cells


def _cells(tensor: torch.Tensor) -> torch.Tensor:
    """A (B, C, *spatial) tensor as (cells, C): a view when it is channels-last."""
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def _from_cells(cells: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(cells, C) back to a channels-last (B, C, *spatial) view of `shape`'s batch and spatial size."""
    return cells.view(shape[0], *shape[2:], cells.shape[1]).movedim(-1, 1)


class RNCA(nn.Module):
    """A refinement neural cellular automaton; `forward` runs `steps` updates from an initial state."""

    def __init__(self, shape: RuleShape):
        super().__init__()
        self.shape = shape
        n, s = shape.ndim, shape.state_channels
        conv = nn.Conv2d if n == 2 else nn.Conv3d
        kernels = _perception_kernels(n)
        self.register_buffer("perception_kernels", kernels.repeat(s, *([1] * n)).unsqueeze(1), persistent=False)
        perception_width = s * kernels.shape[0]
        self.context = conv(shape.context_channels, perception_width, 3, padding=1)
        self.update_in = conv(2 * perception_width, shape.update_width, 1)
        self.update_out = conv(shape.update_width, s, 1, bias=False)
        nn.init.zeros_(self.update_out.weight)
        self._conv = F.conv2d if n == 2 else F.conv3d

    def initial_state(self, mask: torch.Tensor, layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """Mask channels hold the base prediction; hidden channels start at zero. `layout` should be the
        context's (`memory_format`): in another layout every step adds strided tensors (2D: 10% slower)."""
        hidden = mask.new_zeros((mask.shape[0], self.shape.hidden_channels, *mask.shape[2:]))
        return torch.cat([mask, hidden], 1).contiguous(memory_format=layout)

    def alive(self, state: torch.Tensor) -> torch.Tensor:
        """Cells near any foreground: only they may change; all others are background."""
        return dilate(state[:, : self.shape.mask_channels].amax(1, keepdim=True) > self.shape.alive_threshold)

    def context_drive(self, context_input: torch.Tensor) -> torch.Tensor:
        """The image context's share of the update's first layer (its bias included): it never changes during a
        rollout, so it is computed once instead of at every step (the same sum, about half the work per step)."""
        width = self.update_in.in_channels // 2
        return self._conv(self.context(context_input), self.update_in.weight[:, width:], self.update_in.bias)

    def step(self, state: torch.Tensor, drive: torch.Tensor, fire_rate: float,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One synchronous update given the `context_drive`; in training, or given a `generator` (stochastic
        inference, drawn from it alone), each cell fires with probability `fire_rate`."""
        alive_before = self.alive(state)
        perceived = self._conv(state, self.perception_kernels, padding=1, groups=state.shape[1])
        width = self.update_in.in_channels // 2
        # the ReLU and the alive mask act in place on tensors made here (out of place, a sum keeps the wider
        # precision of its two sides, as autocast's bfloat16 convolutions need): the same numbers, less traffic
        weight = self.update_in.weight[:, :width]
        if state.is_contiguous(memory_format=memory_format(self.shape.ndim, True)):
            # channels-last (the CPU's layout): both 1x1 convolutions as matrix products over the cells, views
            # of the same memory; PyTorch's convolution of the weight slice took its slow path (2-3x slower)
            hidden = torch.addmm(_cells(drive), _cells(perceived), weight.flatten(1).t()).relu_()
            delta = _from_cells(hidden @ self.update_out.weight.flatten(1).t(), state.shape)
        else:
            hidden = (self._conv(perceived, weight) + drive).relu_()
            delta = self.update_out(hidden)
        if (self.training or generator is not None) and fire_rate < 1.0:
            draw = state[:, :1]
            draw = torch.rand_like(draw) if generator is None else \
                torch.rand(draw.shape, generator=generator, device=draw.device, dtype=draw.dtype)
            delta = delta * (draw < fire_rate) / fire_rate
        state = state + delta
        return state.mul_(alive_before & self.alive(state))

    def forward(self, state: torch.Tensor, context_input: torch.Tensor, steps: int,
                fire_rate: float = 1.0) -> torch.Tensor:
        return self.rollout(state, context_input, steps, fire_rate)[0]

    def rollout(self, state: torch.Tensor, context_input: torch.Tensor, steps: int, fire_rate: float = 1.0,
                on_step: Optional[Callable[[int, torch.Tensor], bool]] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, int]:
        """Run up to `steps` updates (cells firing at random with a `generator`, see `step`); `on_step(step,
        state)` sees every state and may return True to stop (steady state, or recording the evolution).
        Returns the final state and the steps run."""
        drive = self.context_drive(context_input)
        for step in range(1, steps + 1):
            state = self.step(state, drive, fire_rate, generator)
            if on_step is not None and on_step(step, state):
                return state, step
        return state, steps

    def receptive_radius(self, steps: int) -> int:
        """How far (in cells) a result can depend on its input: the halo a tile needs."""
        return 2 * steps + 1

    def growth_radius(self, steps: int) -> int:
        """How far (in cells) from every initially alive cell nothing changes and nothing is read in `steps`
        steps: the alive region grows one cell a step, and an alive cell's context reads one cell further."""
        return steps + 2

    @staticmethod
    def read_mask(state: torch.Tensor, mask_channels: int) -> torch.Tensor:
        return state[:, :mask_channels].clamp(0.0, 1.0)
