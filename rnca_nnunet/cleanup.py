"""Label-map clean-up of the read-out (and, alone, a baseline): drop specks, fill pinholes.

A rule that fills a gap from both ends can stop with a one-cell speck in the middle, and one that
thickens a wall can leave a one-cell pinhole in it: each is a whole beta0 or beta1 error that a
pixel loss barely sees. Sizes are chosen on the CV cases after training; 0 changes nothing.
"""
from __future__ import annotations

from typing import List, Tuple

import cc3d
import numpy as np
from scipy import ndimage


def remove_small_components(segmentation: np.ndarray, labels: List[int], min_size: int) -> np.ndarray:
    """Drop every 26-connected component of the given labels smaller than `min_size` cells."""
    if min_size <= 1:
        return segmentation
    specks = cc3d.dust(segmentation, min_size, connectivity=26) != segmentation
    out = segmentation.copy()
    out[specks & np.isin(segmentation, labels)] = 0
    return out


def _enclosed_holes(segmentation: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(Z, Y, X) label map -> its background components (6-connected) and, per component index, whether it
    touches no image border (a hole); index 0 is never a hole."""
    holes = cc3d.connected_components(segmentation == 0, connectivity=6)
    border = np.zeros(holes.shape, bool)
    for axis in (a for a in range(holes.ndim) if holes.shape[a] > 1):
        border[(slice(None),) * axis + (0,)] = border[(slice(None),) * axis + (-1,)] = True
    enclosed = ~np.isin(np.arange(int(holes.max()) + 1), holes[border])
    enclosed[0] = False
    return holes, enclosed


def hole_sizes(segmentation: np.ndarray, per_slice: bool) -> np.ndarray:
    """Sizes in cells of the holes `fill_small_holes` would consider (per slice when `per_slice`)."""
    if per_slice and segmentation.shape[0] > 1:
        return np.concatenate([hole_sizes(s[None], False) for s in segmentation])
    holes, enclosed = _enclosed_holes(segmentation)
    return np.bincount(holes.ravel())[enclosed]


def fill_small_holes(segmentation: np.ndarray, min_size: int, per_slice: bool) -> np.ndarray:
    """Give background components smaller than `min_size` cells that touch no image border the label
    around them most. (Z, Y, X) label maps; holes are 4/6-connected, per slice when `per_slice`
    (a 2D rule's holes are slice holes; in the volume they are tunnels)."""
    if min_size <= 1:
        return segmentation
    if per_slice and segmentation.shape[0] > 1:
        return np.stack([fill_small_holes(s[None], min_size, False)[0] for s in segmentation])
    holes, enclosed = _enclosed_holes(segmentation)
    small = enclosed & (np.bincount(holes.ravel()) < min_size)
    out = segmentation.copy()
    for index, box in enumerate(ndimage.find_objects(holes), start=1):
        if box is None or not small[index]:
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        cells = holes[box] == index
        around = segmentation[box][ndimage.binary_dilation(cells) & ~cells]
        out[box][cells] = np.bincount(around[around > 0]).argmax()
    return out
