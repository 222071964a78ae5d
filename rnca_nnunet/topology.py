"""Components, holes, region overlaps and per-slice application: the topology vocabulary that the metrics, the
read-out's clean-up and guard, the loss weights, the corruptions and the error classification share, so each
counts a hole or an overlap the same way.

Conventions: 2D foreground 8- / background 4-connected, 3D 26 / 6; a hole (a cavity in 3D) is a background
component that touches no image border. Label maps are (Z, Y, X); a 2D case is one slice (Z = 1)."""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import cc3d
import numpy as np


def enclosed_background(mask: np.ndarray, connectivity: int) -> Tuple[np.ndarray, int]:
    """Background components of a binary mask that do not touch the image border (holes in 2D, cavities in
    3D), labelled 1..n (0 elsewhere), and n. The padded border is the first background cc3d meets, so it is
    label 1."""
    padded = np.pad(~np.asarray(mask, bool), 1, constant_values=True)
    labels = cc3d.connected_components(padded.astype(np.uint8), connectivity=connectivity)
    inner = labels[(slice(1, -1),) * mask.ndim].astype(np.int64)
    return np.maximum(inner - 1, 0), int(labels.max()) - 1


def label_map_holes(segmentation: np.ndarray) -> Tuple[np.ndarray, int]:
    """`enclosed_background` of a (Z, Y, X) label map's foreground (any label): its slice's holes when Z = 1,
    else its cavities."""
    if segmentation.shape[0] == 1:
        holes, count = enclosed_background(segmentation[0] > 0, 4)
        return holes[None], count
    return enclosed_background(segmentation > 0, 6)


def frame(shape: Tuple[int, ...]) -> List[Tuple[int, int]]:
    """One cell of padding on every axis longer than one: the image's outside becomes one background region."""
    return [(1, 1) if n > 1 else (0, 0) for n in shape]


def background_regions(framed: np.ndarray) -> np.ndarray:
    """The 6-connected background regions of a framed (`frame`) label map, the outside among them."""
    return cc3d.connected_components(framed == 0, connectivity=6)


def distinct_pairs(first: np.ndarray, second: np.ndarray, bound: int) -> Tuple[np.ndarray, np.ndarray]:
    """The distinct (first, second) label pairs, `second` < `bound`; one flat key per pair sorts far faster
    than unique rows."""
    keys = np.unique(first.astype(np.int64) * bound + second)
    return keys // bound, keys % bound


def overlapping_pairs(ours: np.ndarray, theirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The distinct (label of ours, label of theirs) pairs of two labellings where both are non-zero."""
    both = (ours > 0) & (theirs > 0)
    return distinct_pairs(ours[both], theirs[both], int(theirs.max()) + 1)


def matched_one_to_one(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Whether two labellings' labels pair up one to one, each with the other's label it overlaps most (ties to the
    lower label): every label has a partner, and the partner's partner is itself. A region that overlaps a
    second one by a sliver (an outline one cell off) still pairs with its own; one that overlaps nothing, or a
    second region as much as its own, does not."""
    n, m = int(ours.max()), int(theirs.max())
    if n != m:
        return False
    if n == 0:
        return True
    both = (ours > 0) & (theirs > 0)
    keys, counts = np.unique(ours[both].astype(np.int64) * (m + 1) + theirs[both], return_counts=True)
    first, second = keys // (m + 1), keys % (m + 1)
    partners = []
    for mine, other in ((first, second), (second, first)):
        order = np.lexsort((other, -counts, mine))  # per label, its largest overlap first
        labels, starts = np.unique(mine[order], return_index=True)
        if len(labels) != n:
            return False  # a region that overlaps none of the other's
        best = np.zeros(n + 1, np.int64)
        best[labels] = other[order][starts]
        partners.append(best)
    return bool((partners[1][partners[0][1:]] == np.arange(1, n + 1)).all())


def overlap_counts(ours: np.ndarray, theirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per label of each of two labellings, how many of the other's labels it overlaps."""
    pairs = overlapping_pairs(ours, theirs)
    return (np.bincount(pairs[0], minlength=int(ours.max()) + 1),
            np.bincount(pairs[1], minlength=int(theirs.max()) + 1))


def slices(segmentation: np.ndarray, per_slice: bool) -> List[np.ndarray]:
    """A (Z, Y, X) map as (1, Y, X) slices when `per_slice` (a 2D rule's view of a volume), else whole."""
    return [s[None] for s in segmentation] if per_slice and segmentation.shape[0] > 1 else [segmentation]


def apply_per_slice(ndim: int, function: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """A function of (K, *spatial) arrays, applied slice by slice when a 2D rule meets (K, Z, Y, X) volumes."""
    if ndim == 2 and arrays[0].ndim == 4:
        return np.stack([function(*(a[:, z] for a in arrays)) for z in range(arrays[0].shape[1])], 1)
    return function(*arrays)


def guarded_per_slice(guard: Callable[..., np.ndarray], segmentation: np.ndarray, base: np.ndarray,
                      confidence: Optional[np.ndarray], *settings) -> np.ndarray:
    """A guard of the base's topology or outline, `guard(segmentation, base, False, confidence, *settings)` on
    (Z, Y, X) maps, applied slice by slice: a 2D rule's topology is a slice's."""
    return np.stack([guard(s[None], b[None], False, None if confidence is None else c[None], *settings)[0]
                     for s, b, c in zip(segmentation, base, confidence if confidence is not None else base)])


def label_groups(segmentation: np.ndarray, base: np.ndarray) -> List[List[int]]:
    """Each label of either map, and all of them together when there are several: the label sets whose
    topology a guard keeps."""
    labels = [int(v) for v in np.union1d(np.unique(segmentation), np.unique(base)) if v > 0]
    return [[label] for label in labels] + ([labels] if len(labels) > 1 else [])
