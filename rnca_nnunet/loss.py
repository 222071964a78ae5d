"""The training loss: weighted MSE on the mask channels plus soft Dice (weights from loss_weights.py)."""
from __future__ import annotations

import torch


def refinement_loss(state: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE on the raw mask channels (never a zero gradient) plus soft Dice on the clamped mask."""
    k = target.shape[1]
    raw = state[:, :k]
    mse = (weight * (raw - target) ** 2).sum() / (weight.sum() * k + 1e-6)
    mask = raw.clamp(0, 1) * (weight > 0)
    dims = (0, *range(2, target.ndim))
    dice = (2 * (mask * target).sum(dims) + 1) / (mask.sum(dims) + target.sum(dims) + 1)
    return mse + (1 - dice).mean()
