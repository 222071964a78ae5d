"""Label-map clean-up of the read-out (and, alone, a baseline): drop specks, fill pinholes and slivers.

A rule that fills a gap from both ends can stop with a one-cell speck in the middle, and one that
thickens a wall can leave a one-cell pinhole in it: each is a whole beta0 or beta1 error that a
pixel loss barely sees. A rule can also open a long hole one or two cells thin along a dark line inside a
thick wall (TopoMortar's shadowed joints): too large for an area bound that spares small real holes, but
thinner than any real one. The three numbers are chosen on the CV cases after training (readout.py);
0 changes nothing. On bases whose loops are already right (near-correct labels) the read-out can also keep
the base's loops: a setting of the training, since no search on the CV cases can tell it is needed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

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


def _padded_boxes(holes: np.ndarray, wanted: np.ndarray):
    """(index, box grown by one cell, the hole's cells in it) for every component index where `wanted`."""
    for index, box in enumerate(ndimage.find_objects(holes), start=1):
        if box is not None and wanted[index]:
            box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
            yield index, box, holes[box] == index


def _inscribed_radii(holes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Per component index: its largest distance in cells from a cell of the hole to the nearest cell outside
    it (1 for a hole one or two cells thin, 1.41 for a diagonal one, 2 for one three cells thick); 0 where not
    `wanted`. Distances are in cells of the rule's grid: the rule's steps are cells too."""
    radii = np.zeros(len(wanted))
    for index, box, cells in _padded_boxes(holes, wanted):
        radii[index] = ndimage.distance_transform_edt(cells).max()
    return radii


def _per_slice(segmentation: np.ndarray, per_slice: bool) -> List[np.ndarray]:
    return [s[None] for s in segmentation] if per_slice and segmentation.shape[0] > 1 else [segmentation]


def hole_sizes(segmentation: np.ndarray, per_slice: bool) -> np.ndarray:
    """Sizes in cells of the holes `fill_holes` would consider (per slice when `per_slice`)."""
    sizes = []
    for part in _per_slice(segmentation, per_slice):
        holes, enclosed = _enclosed_holes(part)
        sizes.append(np.bincount(holes.ravel())[enclosed])
    return np.concatenate(sizes)


def hole_measures(segmentation: np.ndarray, per_slice: bool) -> np.ndarray:
    """(2, holes): size in cells and inscribed radius in cells of each hole `fill_holes` would consider."""
    measures = []
    for part in _per_slice(segmentation, per_slice):
        holes, enclosed = _enclosed_holes(part)
        measures.append(np.stack([np.bincount(holes.ravel())[enclosed], _inscribed_radii(holes, enclosed)[enclosed]]))
    return np.concatenate(measures, axis=1)


def fill_holes(segmentation: np.ndarray, min_size: int, max_radius: float, per_slice: bool) -> np.ndarray:
    """Give background components that touch no image border and are smaller than `min_size` cells, or no
    thicker than `max_radius` (inscribed radius in cells), the label around them most. (Z, Y, X) label maps;
    holes are 4/6-connected, per slice when `per_slice` (a 2D rule's holes are slice holes; in the volume
    they are tunnels)."""
    if min_size <= 1 and max_radius <= 0:
        return segmentation
    if per_slice and segmentation.shape[0] > 1:
        return np.stack([fill_holes(s[None], min_size, max_radius, False)[0] for s in segmentation])
    holes, enclosed = _enclosed_holes(segmentation)
    fill = enclosed & (np.bincount(holes.ravel()) < min_size)
    if max_radius > 0:
        thin = enclosed & ~fill
        fill |= thin & (_inscribed_radii(holes, thin) <= max_radius)
    out = segmentation.copy()
    for _, box, cells in _padded_boxes(holes, fill):
        around = segmentation[box][ndimage.binary_dilation(cells) & ~cells]
        out[box][cells] = np.bincount(around[around > 0]).argmax()
    return out


def background_regions(segmentation: np.ndarray, base: np.ndarray):
    """Background components (6-connected; the image's outside is one region) of a label map and of its base,
    cropped to the image, and per component index how many of the other map's it overlaps."""
    frame = [(1, 1) if n > 1 else (0, 0) for n in segmentation.shape]
    inner = tuple(slice(p, n + p) for (p, _), n in zip(frame, segmentation.shape))
    ours, theirs = (cc3d.connected_components(np.pad(m == 0, frame, constant_values=True), connectivity=6)
                    for m in (segmentation, base))
    both = (ours > 0) & (theirs > 0)
    pairs = np.unique(np.stack([ours[both], theirs[both]], 1), axis=0)
    return (ours[inner], theirs[inner], np.bincount(pairs[:, 0], minlength=int(ours.max()) + 1),
            np.bincount(pairs[:, 1], minlength=int(theirs.max()) + 1))


def keep_base_loops(segmentation: np.ndarray, base: np.ndarray, per_slice: bool) -> np.ndarray:
    """Make the background regions of `segmentation` match `base`'s one to one, so that it has every loop of
    the base and no other: where one region joins two of the base's, the base's labels come back in it (a wall
    the rule removed); where a base region is covered or split, its background comes back (a brick filled, a
    wall added across one); a region inside the base's foreground gets the base's labels (a hole opened).
    Every other change stays: walls may move, thicken and thin.

    For bases whose loops are right: on TopoMortar's noisy labels (beta1 error 0.30) a rule trained on the
    train walls broke thin joints of the val walls (0.60-0.70, a third of the intact walls broken), and
    neither its CV cases nor its held-out ones showed it. (Z, Y, X) label maps, components as in `fill_holes`."""
    if per_slice and segmentation.shape[0] > 1:
        return np.stack([keep_base_loops(s[None], b[None], False)[0] for s, b in zip(segmentation, base)])
    out = segmentation.copy()
    # repeated, since a cleared brick can reach a moved wall's old place; every step only turns cells back
    # into the base's, so this ends, at the latest at the base itself
    while True:
        before = out.copy()
        ours, _, ours_meets, _ = background_regions(out, base)
        joined = (ours_meets > 1)[ours] & (base > 0)
        out[joined] = base[joined]
        ours, theirs, _, theirs_meets = background_regions(out, base)
        wrong = theirs_meets != 1
        wrong[0] = False
        out[wrong[theirs] & (out > 0)] = 0
        ours, _, ours_meets, _ = background_regions(out, base)
        opened = ours_meets == 0
        opened[0] = False
        out[opened[ours]] = base[opened[ours]]
        if np.array_equal(out, before):
            break
    return out


@dataclass
class CleanUp:
    """The read-out's clean-up of a label map, its numbers chosen by readout.py and kept in rnca.json:
    components smaller than `min_component_size` cells removed, holes smaller than `min_hole_size` cells or
    no thicker than `max_hole_radius` cells filled, after, with `keep_base_loops`, the base's loops were kept
    (none lost, none added). Zeros change nothing."""
    min_component_size: int = 0
    min_hole_size: int = 0
    max_hole_radius: float = 0.0
    keep_base_loops: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "CleanUp":
        """The clean-up of an rnca.json (absent keys: off, as in refiners saved before a setting existed)."""
        values = {name: config.get(name, default) for name, default in asdict(cls()).items()}
        sizes = [values["min_component_size"], values["min_hole_size"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes):
            raise TypeError(f"min_component_size/min_hole_size must be whole numbers >= 0, got {sizes}")
        radius = values["max_hole_radius"]
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius < math.inf:
            raise TypeError(f"max_hole_radius must be a number of cells >= 0, got {radius!r}")
        if not isinstance(values["keep_base_loops"], bool):
            raise TypeError(f"keep_base_loops must be true or false, got {values['keep_base_loops']!r}")
        return cls(values["min_component_size"], values["min_hole_size"], float(radius), values["keep_base_loops"])

    def __call__(self, segmentation: np.ndarray, per_slice: bool, base: Optional[np.ndarray] = None) -> np.ndarray:
        """Clean a (Z, Y, X) label map refined from the label map `base` (needed with `keep_base_loops`);
        holes per slice when `per_slice` (a 2D rule)."""
        if self.keep_base_loops:
            if base is None:
                raise ValueError("keep_base_loops needs the base label map the rule refined")
            segmentation = keep_base_loops(segmentation, base, per_slice)
        if self.min_component_size <= 1 and self.min_hole_size <= 1 and self.max_hole_radius <= 0:
            return segmentation
        labels = [int(v) for v in np.unique(segmentation) if v > 0]
        return fill_holes(remove_small_components(segmentation, labels, self.min_component_size),
                          self.min_hole_size, self.max_hole_radius, per_slice)

    def __str__(self) -> str:
        return (f"specks < {self.min_component_size}, holes < {self.min_hole_size}"
                + (f" or radius <= {self.max_hole_radius:g}" if self.max_hole_radius > 0 else "")
                + (", base loops kept" if self.keep_base_loops else ""))
