"""Synthetic topological corruptions of labels: extra (imperfect mask, label) pairs for training.

They imitate what nnU-Net gets wrong: breaks in thin structures, loose specks, holes, and a slightly
too thick or thin mask, then soften the result so it looks like a probability map.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize


def _balls(shape, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """A boolean mask of balls (discs in 2D) with the given centres and radii."""
    out = np.zeros(shape, bool)
    for centre, radius in zip(centres, radii):
        r = int(np.ceil(radius))
        lo = np.maximum(centre - r, 0)
        hi = np.minimum(centre + r + 1, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] |= dist2 <= radius ** 2
    return out


def _random_points(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    coords = np.argwhere(candidates)
    if len(coords) == 0 or count == 0:
        return np.zeros((0, candidates.ndim), int)
    return coords[rng.choice(len(coords), size=min(count, len(coords)), replace=False)]


def corrupt_binary(mask: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Breaks, specks, holes and a thickness change on one binary mask; returns a soft mask in [0, 1]."""
    mask = mask.astype(bool)
    size_scale = mask.size / 128 ** 2 if mask.ndim == 2 else mask.size / 48 ** 3
    n = lambda mean: int(rng.poisson(mean * strength * max(size_scale, 0.25)))  # noqa: E731
    out = mask.copy()
    if out.any():
        skeleton = skeletonize(out)
        cuts = _random_points(rng, skeleton, n(4))
        out &= ~_balls(out.shape, cuts, rng.uniform(1.5, 3.5, len(cuts)))
        holes = _random_points(rng, ndimage.binary_erosion(out, iterations=3), n(1))
        out &= ~_balls(out.shape, holes, rng.uniform(1.0, 2.0, len(holes)))
    near = ndimage.binary_dilation(mask, iterations=8) & ~ndimage.binary_dilation(mask, iterations=2)
    specks = np.concatenate([_random_points(rng, near, n(3)), _random_points(rng, ~mask, n(2))])
    out |= _balls(out.shape, specks, rng.uniform(0.8, 2.5, len(specks)))
    change = rng.choice([-1, 0, 0, 1])
    if change > 0:
        out = ndimage.binary_dilation(out)
    elif change < 0:
        out = ndimage.binary_erosion(out) | (out & skeletonize(out))
    soft = ndimage.gaussian_filter(out.astype(np.float32), rng.uniform(0.5, 1.0))
    return np.clip(soft * rng.uniform(0.9, 1.2), 0.0, 1.0)


def corrupt_mask(target: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Corrupt each foreground channel (K, *spatial) of a label mask independently."""
    return np.stack([corrupt_binary(channel, rng, strength) for channel in target]).astype(np.float32)
