"""Which cells decide the topology: where the loss must look hardest.

A pixel-wise loss barely notices a one-pixel speck or a two-pixel break, yet each one is a whole
beta0 error; nor a one-pixel bridge across a hole of the label, a whole beta1 error. The weights are
taken from the mask the rule produces *now* (not from the base prediction), so the rule is also
punished for specks, breaks and bridges it creates itself.
"""
from __future__ import annotations

import cc3d
import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

from rnca_nnunet.topology import enclosed_background


def _skeleton(channel: np.ndarray) -> np.ndarray:
    """The skeleton; of a volume, also the skeletons of its slices along every axis: a volume's curve skeleton
    misses most of a wall (a myocardium), and a gap in a wall is as much a topology error as a break in a tube."""
    skeleton = skeletonize(channel)
    if channel.ndim == 3:
        for axis in range(3):
            skeleton |= np.stack([skeletonize(s) for s in np.moveaxis(channel, axis, 0)], axis)
    return skeleton


def centreline(target: np.ndarray) -> np.ndarray:
    """(K, *spatial) label -> the cells whose loss breaks a structure: its skeleton, one cell thick each side."""
    out = np.zeros(target.shape, bool)
    for k, channel in enumerate(target > 0.5):
        if channel.any():
            out[k] = ndimage.binary_dilation(_skeleton(channel)) & channel
    return out


def hole_centreline(target: np.ndarray) -> np.ndarray:
    """(K, *spatial) label -> the skeletons of its holes (background it encloses), one cell thick each side: a
    mask covering them bridges a loop in two or fills it (TopoMortar's commonest loop error), the dual of a
    broken centreline."""
    out = np.zeros(target.shape, bool)
    for k, channel in enumerate(target > 0.5):
        holes = enclosed_background(channel, 4 if channel.ndim == 2 else 6)[0] > 0
        if holes.any():
            out[k] = ndimage.binary_dilation(_skeleton(holes)) & holes
    return out


def topology_lines(target: np.ndarray) -> np.ndarray:
    """(K, *spatial) float32: +1 on the label's centreline, -1 on its holes' centreline (one map, so patches,
    augmentation and the case store carry both)."""
    return centreline(target).astype(np.float32) - hole_centreline(target).astype(np.float32)


def spurious_components(mask: np.ndarray, target: np.ndarray, background: bool = False) -> np.ndarray:
    """Cells of the components of `mask` that touch no `target` cell (boolean arrays, 2D or 3D); components
    are 8/26-connected, or 4/6-connected with `background` (the convention for background and holes)."""
    connectivity = (4 if mask.ndim == 2 else 6) if background else (8 if mask.ndim == 2 else 26)
    labels = cc3d.connected_components(mask, connectivity=connectivity)
    touching = np.unique(labels[target])
    return (labels > 0) & ~np.isin(labels, touching)


def topology_focus(mask: np.ndarray, target: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """(K, *spatial) mask, target, `topology_lines` -> (K, *spatial) bool: spurious components, spurious holes
    (background components lying wholly inside the label: each is a beta1 error), broken centreline and
    covered hole centreline (bridges, filled holes)."""
    binary, truth = mask > 0.5, target > 0.5
    focus = ((lines > 0.5) & ~binary) | ((lines < -0.5) & binary)
    for k in range(binary.shape[0]):
        focus[k] |= spurious_components(binary[k], truth[k])
        focus[k] |= spurious_components(~binary[k], ~truth[k], background=True)
    return focus


def loss_weights(mask: torch.Tensor, target: torch.Tensor, lines: torch.Tensor, valid: torch.Tensor,
                 error_weight: float, topology_weight: float) -> torch.Tensor:
    """(B, K, *spatial) weights: 1, plus `error_weight` where the mask is wrong, plus `topology_weight`
    on cells of spurious components and holes, on the broken centreline and on covered hole centreline."""
    with torch.no_grad():
        wrong = ((mask > 0.5) != (target > 0.5)).float()
        masks, targets, lines = (t.cpu().numpy() for t in (mask, target, lines))
        focus = np.stack([topology_focus(m, t, c) for m, t, c in zip(masks, targets, lines)])
        focus = torch.from_numpy(focus).to(mask.device, mask.dtype)
        return valid * (1.0 + error_weight * wrong + topology_weight * focus)
