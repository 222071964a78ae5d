"""Synthetic topological corruptions of labels: extra (imperfect mask, label) pairs for training.

They imitate what nnU-Net gets wrong: breaks in thin structures, loose specks, holes, bridges across the
label's own holes (a brick split in two), and a slightly too thick or thin mask, then soften the result so
it looks like a probability map.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from rnca_nnunet.topology import enclosed_background


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


def _bridges(mask: np.ndarray, rng: np.random.Generator, per_hole: float) -> np.ndarray:
    """Thin foreground segments across holes of `mask`, each from a point of a hole's skeleton to the nearest wall
    and as far again, so it reaches the opposite wall: the hole is split in two. About `per_hole` per hole.
    A (1, Y, X) mask is a 2D image (its holes are 2D holes, which a volume one slice deep has none of)."""
    if mask.ndim == 3 and mask.shape[0] == 1:
        return _bridges(mask[0], rng, per_hole)[None]
    holes, count = enclosed_background(mask, 4 if mask.ndim == 2 else 6)
    out = np.zeros(mask.shape, bool)
    if count == 0:
        return out
    holes = holes > 0
    distance, nearest = ndimage.distance_transform_edt(holes, return_indices=True)
    for point in _random_points(rng, skeletonize(holes), int(rng.poisson(per_hole * count))):
        wall = nearest[(slice(None), *point)]
        reach = point - wall
        length = float(np.linalg.norm(reach))
        along = np.linspace(-1.0 / max(length, 1.0), 2.0 + 1.0 / max(length, 1.0), int(3 * length) + 4)
        centres = np.rint(wall[None] + along[:, None] * reach[None]).astype(int)
        centres = centres[((centres >= 0) & (centres < mask.shape)).all(1)]
        out |= _balls(mask.shape, centres, np.full(len(centres), rng.uniform(0.8, 1.5)))
    return out


def _filled_holes(mask: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """The holes of `mask`, each with probability `share`: what nnU-Net does to bricks it cannot see (under
    TopoMortar's shadows, filled bricks are most of the loop errors left). A (1, Y, X) mask is a 2D image."""
    if mask.ndim == 3 and mask.shape[0] == 1:
        return _filled_holes(mask[0], rng, share)[None]
    holes, count = enclosed_background(mask, 4 if mask.ndim == 2 else 6)
    return np.isin(holes, np.flatnonzero(rng.random(count) < share) + 1)


def corrupt_binary(mask: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                   fill_holes: float = 0.0) -> np.ndarray:
    """Breaks, specks, holes, filled holes (a share `fill_holes` of them) and a thickness change on one binary
    mask; returns a soft mask in [0, 1]."""
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
        out |= _bridges(mask, rng, 0.15 * strength)
        if fill_holes > 0:
            out |= _filled_holes(mask, rng, fill_holes)
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


def corrupt_mask(target: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                 fill_holes: float = 0.0) -> np.ndarray:
    """Corrupt each foreground channel (K, *spatial) of a label mask independently."""
    return np.stack([corrupt_binary(channel, rng, strength, fill_holes) for channel in target]).astype(np.float32)
