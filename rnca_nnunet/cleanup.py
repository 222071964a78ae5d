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

from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import cc3d
import numpy as np
from scipy import ndimage
from skimage.graph import MCP
from skimage.segmentation import expand_labels

from rnca_nnunet.label_topology import SharedBetti, toward_shared_betti
from rnca_nnunet.outline import give_back_changes, keep_base_outline
from rnca_nnunet.topology import (background_regions, distinct_pairs, frame, guarded_per_slice, label_groups,
                                  label_map_holes, overlap_counts, slices)


def remove_small_components(segmentation: np.ndarray, labels: List[int], min_size: int) -> np.ndarray:
    """Drop every 26-connected component of the given labels smaller than `min_size` cells."""
    if min_size <= 1:
        return segmentation
    specks = cc3d.dust(segmentation, min_size, connectivity=26) != segmentation
    out = segmentation.copy()
    out[specks & np.isin(segmentation, labels)] = 0
    return out


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


def hole_measures(segmentation: np.ndarray, per_slice: bool) -> np.ndarray:
    """(2, holes): size in cells and inscribed radius in cells of each hole `fill_holes` would consider."""
    measures = []
    for part in slices(segmentation, per_slice):
        holes, count = label_map_holes(part)
        enclosed = np.arange(count + 1) > 0
        measures.append(np.stack([np.bincount(holes.ravel(), minlength=count + 1)[enclosed],
                                  _inscribed_radii(holes, enclosed)[enclosed]]))
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
    holes, count = label_map_holes(segmentation)
    enclosed = np.arange(count + 1) > 0
    fill = enclosed & (np.bincount(holes.ravel(), minlength=count + 1) < min_size)
    if max_radius > 0:
        thin = enclosed & ~fill
        fill |= thin & (_inscribed_radii(holes, thin) <= max_radius)
    return _fill_from_around(segmentation, holes, fill)


def _fill_from_around(segmentation: np.ndarray, holes: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """A copy of `segmentation` whose holes (labelled `holes`) where `fill` take the label around them most."""
    out = segmentation.copy()
    for _, box, cells in _padded_boxes(holes, fill):
        around = segmentation[box][ndimage.binary_dilation(cells) & ~cells]
        out[box][cells] = np.bincount(around[around > 0]).argmax()
    return out


def fill_joined_pinholes(segmentation: np.ndarray, base: np.ndarray, min_size: int, max_radius: float,
                         per_slice: bool) -> np.ndarray:
    """Fill every hole of the refined label map whose background in the base was nothing but holes that
    `fill_holes` fills there (the base's pinholes): the clean-up alone fills those, and a rule that joins a
    few of them into a larger hole must not let them escape the fill.

    Under occluders (TopoMortar's occluded test walls) nnU-Net opens a hundred pinholes a wall; the clean-up
    alone fills them, the rule joined many into holes of 16-59 cells, above the fill, so it left more loop
    errors than the clean-up alone. A hole the base did not have at all (opened by the rule) is the guard's
    to judge, and one holding any larger base hole or the base's outside stays."""
    if min_size <= 1 and max_radius <= 0:
        return segmentation
    if per_slice and segmentation.shape[0] > 1:
        return np.stack([fill_joined_pinholes(s[None], b[None], min_size, max_radius, False)[0]
                         for s, b in zip(segmentation, base)])
    holes, count = label_map_holes(segmentation)
    if not count:
        return segmentation
    background = (base == 0) & (holes > 0)
    pinholes = background & (fill_holes(base, min_size, max_radius, False) > 0)
    in_background = np.bincount(holes[background], minlength=count + 1)
    in_pinholes = np.bincount(holes[pinholes], minlength=count + 1)
    fill = (in_background > 0) & (in_pinholes == in_background)
    fill[0] = False
    return _fill_from_around(segmentation, holes, fill)


def _opened_holes(segmentation: np.ndarray, base: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A (Z, Y, X) label map's holes (`label_map_holes`) and, per hole index, whether the base labelled at least
    half of its cells foreground: a hole the rule opened in the base's structure, not one it grew from the base's."""
    holes, count = label_map_holes(segmentation)
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    structure = np.bincount(holes.ravel(), weights=(base > 0).ravel(), minlength=count + 1)
    opened = 2 * structure >= sizes
    opened[0] = False
    return holes, opened


def count_opened_holes(segmentation: np.ndarray, base: np.ndarray, per_slice: bool) -> int:
    """How many holes the rule opened in the base's structure (`_opened_holes`), over the slices when `per_slice`."""
    return sum(int(_opened_holes(s, b)[1].sum()) for s, b in zip(slices(segmentation, per_slice),
                                                                 slices(base, per_slice)))


def fill_opened_holes(segmentation: np.ndarray, base: np.ndarray, per_slice: bool) -> np.ndarray:
    """Every hole the rule opened in the base's structure filled with the label around it most.

    Under TopoMortar's occluders the rule (demo base, 3 seeds) opens 1.1-4.0 holes a wall where nnU-Net drew
    mortar, up to 22 in one wall, one in ten of them a brick of the label; on its held-out and val walls at most
    2 in a wall (0.05-0.3 a wall), half of them bricks. nnU-Net's confidence there is the same for both
    (0.5-0.9), so the guard lets them through. A case holding far more of them than any held-out case did is
    out of the rule's depth there (`CleanUp.fill_opened_holes_above`)."""
    if per_slice and segmentation.shape[0] > 1:
        return np.stack([fill_opened_holes(s[None], b[None], False)[0] for s, b in zip(segmentation, base)])
    return _fill_from_around(segmentation, *_opened_holes(segmentation, base))


def loop_mismatches(segmentation: np.ndarray, base: np.ndarray, per_slice: bool) -> int:
    """How many background regions (6-connected, the image's outside as one; per slice when `per_slice`) of a
    label map and of its base do not overlap exactly one of the other's: 0 when both have the same loops."""
    if per_slice and segmentation.shape[0] > 1:
        return sum(loop_mismatches(s[None], b[None], False) for s, b in zip(segmentation, base))
    padding = frame(segmentation.shape)
    ours_meets, theirs_meets = overlap_counts(*(background_regions(np.pad(m, padding)) for m in (segmentation, base)))
    return int((ours_meets[1:] != 1).sum() + (theirs_meets[1:] != 1).sum())


def _neighbouring_regions(pieces: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Per piece index, how many different regions it touches face to face."""
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for axis in (a for a in range(pieces.ndim) if pieces.shape[a] > 1):
        lower, upper = (slice(None),) * axis + (slice(0, -1),), (slice(None),) * axis + (slice(1, None),)
        for here, there in ((lower, upper), (upper, lower)):
            touching = (pieces[here] > 0) & (regions[there] > 0)
            firsts.append(pieces[here][touching].astype(np.int64))
            seconds.append(regions[there][touching].astype(np.int64))
    pairs = distinct_pairs(np.concatenate(firsts), np.concatenate(seconds), int(regions.max()) + 1)
    return np.bincount(pairs[0], minlength=int(pieces.max()) + 1)


class _Guard:
    """Which of the rule's topology changes `keep_base_topology` undoes: those where the base was, on average
    over the cells the change touches, at least `threshold` sure of its own label (all of them without a
    `confidence` map, or at threshold 0)."""

    def __init__(self, confidence: Optional[np.ndarray], threshold: float):
        self.confidence = None if threshold <= 0 else confidence
        self.threshold = threshold

    def pieces(self, labelled: np.ndarray) -> np.ndarray:
        """Per component index of `labelled`: whether its change is undone."""
        size = int(labelled.max()) + 1
        if self.confidence is None:
            return np.ones(size, bool)
        counts = np.bincount(labelled.ravel(), minlength=size)
        sums = np.bincount(labelled.ravel(), weights=self.confidence.ravel(), minlength=size)
        return sums >= self.threshold * np.maximum(counts, 1)

    def cells(self, cells: np.ndarray, box: Tuple[slice, ...]) -> bool:
        """Whether a change of these cells (a boolean map of `box`) is undone."""
        return self.confidence is None or not cells.any() or \
            float(self.confidence[box][cells].mean()) >= self.threshold


def _restore_crossed_walls(out: np.ndarray, base: np.ndarray, theirs: np.ndarray, guard: _Guard) -> None:
    """Where our background joins two of the base's regions, bring back the pieces of base wall it crosses
    between them; pieces it only thinned or moved stay as the rule left them. (Two base regions never touch,
    so every way from one to the other inside our region crosses such a piece.)"""
    ours = background_regions(out)
    joining = (overlap_counts(ours, theirs)[0] > 1)[ours]
    removed = cc3d.connected_components(joining & (base > 0), connectivity=26)
    crossed = (_neighbouring_regions(removed, np.where(ours > 0, theirs, 0)) > 1) & guard.pieces(removed)
    crossed[0] = False
    out[crossed[removed]] = base[crossed[removed]]


def _reopen_base_regions(out: np.ndarray, theirs: np.ndarray, boxes: list, guard: _Guard) -> None:
    """A base region our foreground covers comes back whole (a brick filled); one it splits is joined again
    along the path through it that clears the fewest of our cells (a wall added across a brick gets one gap)."""
    ours = background_regions(out)
    theirs_meets = overlap_counts(ours, theirs)[1]
    for region in np.flatnonzero(theirs_meets[1:] != 1) + 1:
        box = boxes[region - 1]
        cells, view = theirs[box] == region, out[box]
        if not guard.cells(cells & (view > 0), box):
            continue
        if theirs_meets[region] == 0:
            view[cells] = 0
            continue
        pieces = np.where(cells, ours[box], 0)
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        seed = sizes.argmax()
        paths = MCP(np.where(cells, np.where(view > 0, 1.0, 1e-3), -1.0), fully_connected=False)
        # a path leaves the seed piece where it touches our foreground: those cells are enough as starts
        costs, _ = paths.find_costs(np.argwhere((pieces == seed) & ndimage.binary_dilation(cells & (view > 0))))
        for piece in np.flatnonzero(sizes):
            if piece != seed:
                ends = np.argwhere(pieces == piece)
                view[tuple(np.array(paths.traceback(tuple(ends[np.argmin(costs[tuple(ends.T)])]))).T)] = 0


def _fill_opened_holes(out: np.ndarray, base: np.ndarray, theirs: np.ndarray, guard: _Guard) -> None:
    """A background region inside the base's foreground (a hole the rule opened) gets the base's labels."""
    ours = background_regions(out)
    opened = (overlap_counts(ours, theirs)[0] == 0) & guard.pieces(ours)
    opened[0] = False
    out[opened[ours]] = base[opened[ours]]


def _keep_base_components(out: np.ndarray, base: np.ndarray, guard: _Guard) -> None:
    """Foreground components (26-connected) matched one to one with the base's, changing as few cells as it
    can: a base component the rule removed comes back; one it split is joined again along the path through the
    base component that restores the fewest cells; a component the rule made where the base had none goes; one
    that joins several base components is cut where the cells it added meet (each added cell goes with its
    nearest base component; added cells next to another's are cleared), so thickening elsewhere stays."""
    ours = cc3d.connected_components(out > 0, connectivity=26)
    theirs = cc3d.connected_components(base > 0, connectivity=26)
    ours_meets, theirs_meets = overlap_counts(ours, theirs)
    for index, box in enumerate(ndimage.find_objects(theirs), start=1):
        if box is None or theirs_meets[index] == 1:
            continue
        cells, view = theirs[box] == index, out[box]
        if not guard.cells(cells & (view == 0), box):
            continue
        if theirs_meets[index] == 0:
            view[cells] = base[box][cells]
            continue
        _join_pieces(np.where(cells, ours[box], 0), cells, view, base[box])
    for index, box in enumerate(ndimage.find_objects(ours), start=1):
        if box is None or ours_meets[index] == 1:
            continue
        cells, view = ours[box] == index, out[box]
        added = cells & (base[box] == 0)
        if not guard.cells(added, box):
            continue
        if ours_meets[index] == 0:
            view[added] = 0
            continue
        zones = expand_labels(np.where(cells, theirs[box], 0), distance=max(view.shape))
        view[added & _meets_another(np.where(cells, zones, 0))] = 0


def _join_pieces(pieces: np.ndarray, cells: np.ndarray, view: np.ndarray, base: np.ndarray) -> None:
    """Within `cells` (one base component), join every piece of our foreground to the largest along the path
    that gives back the fewest of the base's cells (`view`, our labels, is changed in place)."""
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    seed = sizes.argmax()
    paths = MCP(np.where(cells, np.where(view > 0, 1e-3, 1.0), -1.0), fully_connected=True)
    costs, _ = paths.find_costs(np.argwhere(pieces == seed))
    for piece in np.flatnonzero(sizes):
        if piece != seed:
            ends = np.argwhere(pieces == piece)
            path = tuple(np.array(paths.traceback(tuple(ends[np.argmin(costs[tuple(ends.T)])]))).T)
            view[path] = np.where(view[path] > 0, view[path], base[path])


def _meets_another(zones: np.ndarray) -> np.ndarray:
    """Cells of a zone with a 26-neighbour in another zone (0 is no zone)."""
    meets = np.zeros(zones.shape, bool)
    padded = np.pad(zones, 1)
    for offset in np.ndindex(*(3,) * zones.ndim):
        other = padded[tuple(slice(o, o + n) for o, n in zip(offset, zones.shape))]
        meets |= (other > 0) & (other != zones)
    return meets & (zones > 0)


def keep_base_topology(segmentation: np.ndarray, base: np.ndarray, per_slice: bool,
                       confidence: Optional[np.ndarray] = None, threshold: float = 0.0) -> np.ndarray:
    """Undo the rule's topology changes against the label map `base` where the base was sure (see `_Guard`:
    all of them at `threshold` 0), for each label and for the union of all labels, changing as few cells as it can: its loops (background
    regions matched one to one: a wall the rule removed comes back only where its gap joins two of the base's
    regions, a wall it added across one gets a one-cell gap, a brick it filled comes back, a hole it opened is
    filled) and its components (matched one to one: a component it removed or split gets its cells back, one
    it made or joined loses the cells it added). Every other change stays: walls may move, thicken and thin.

    The guard of "do no harm": a refiner must not break what nnU-Net got right, and the base's own confidence
    is what tells a sure structure from a doubtful one (a one-cell gap nnU-Net gave 0.4 is a break to close, a
    joint it gave 0.95 is not to be cut). On TopoMortar's noisy labels (hard masks: sure everywhere) a rule
    broke thin joints of a third of the intact val walls, which neither its CV cases nor its held-out ones
    showed. (Z, Y, X) label maps and a (Z, Y, X) confidence; loops as in `fill_holes`: per slice a slice's
    holes, in a volume its cavities. A volume's handles (a ring, a tunnel) are kept piece by piece: every
    change the base was sure of that alters a label's components, cavities or Euler number where it lies goes
    back whole (`outline.give_back_changes`): on generated hearts a rule cut an intact myocardium ring that
    nnU-Net was sure of, and neither the components nor the cavities showed it."""
    if per_slice and segmentation.shape[0] > 1:
        return guarded_per_slice(keep_base_topology, segmentation, base, confidence, threshold)
    padding = frame(segmentation.shape)
    out, base = np.pad(segmentation, padding), np.pad(base, padding)
    guard = _Guard(None if confidence is None else np.pad(confidence, padding, constant_values=1.0), threshold)
    groups = label_groups(out, base)
    # group by group, repeated until none changes: every step only turns cells into the base's values, so this
    # ends, at the latest at the base itself
    while True:
        before = out.copy()
        for group in groups:
            mask = np.isin(out, group)
            kept = _keep_binary_topology(mask.view(np.uint8), np.isin(base, group).view(np.uint8), guard)
            changed = kept.astype(bool) != mask
            out[changed] = base[changed]
        if segmentation.shape[0] > 1:  # a volume's handles: no component or cavity shows a ring cut or closed
            give_back_changes(out, base, guard.confidence, threshold, topology_changes=True)
        if np.array_equal(out, before):
            return out[tuple(slice(p, n + p) for (p, _), n in zip(padding, segmentation.shape))]


def _keep_binary_topology(out: np.ndarray, base: np.ndarray, guard: _Guard) -> np.ndarray:
    """`keep_base_topology` of one label: (Z, Y, X) 0/1 maps already framed (`topology.frame`); returns a new map."""
    out = out.copy()
    theirs = background_regions(base)
    boxes = ndimage.find_objects(theirs)
    # repeated, since a brick given back can reach a moved wall's old place
    while True:
        before = out.copy()
        _restore_crossed_walls(out, base, theirs, guard)
        _reopen_base_regions(out, theirs, boxes, guard)
        _fill_opened_holes(out, base, theirs, guard)
        _keep_base_components(out, base, guard)
        if np.array_equal(out, before):
            return out


def rewritten_share(segmentation: np.ndarray, base: np.ndarray) -> float:
    """The share of the structure (cells foreground in `base` or `segmentation`) whose label differs: how much
    of nnU-Net's mask the rule rewrote."""
    structure = (segmentation > 0) | (base > 0)
    return float(np.count_nonzero((segmentation != base) & structure) / max(np.count_nonzero(structure), 1))


MAX_SIZE = 2 ** 31  # cells: larger than any case nnU-Net reads, so a larger size is an edit, not a choice
MAX_RADIUS = 1024.0  # cells; the read-out never searches beyond 3


@dataclass(frozen=True)
class CleanUp:
    """The read-out's clean-up of a label map refined from a base, its numbers chosen by readout.py and kept in
    rnca.json: first components smaller than `min_component_size` cells are removed and holes smaller than
    `min_hole_size` cells or no thicker than `max_hole_radius` cells filled; then, with `guard` (None: off),
    the topology changes of the rule and of that clean-up are undone where the base was at least `guard` sure
    of its label (`keep_base_topology`; 0: all of them); the guard comes after the sizes so that nothing
    breaks what it kept (pieces of a join it cut are not specks to drop). Then, with `outline_guard` (None:
    off), every change against the base that is no topology change is given back to the base where it was at
    least that sure (`outline.keep_base_outline`). Then, with `fill_joined_pinholes`, holes the rule made
    of nothing but base holes the sizes fill are filled too (`fill_joined_pinholes`). Then, with
    `remove_guarded_specks`, components smaller than `min_component_size` are removed once more: specks the
    sizes had removed and the guard gave back because the base was sure of them. Then, with
    `keep_label_topology`, changes that move a class away from the Betti numbers all its training labels share
    (`label_topology`, found beside the sizes) go back to the base, however unsure nnU-Net was
    (`label_topology.toward_shared_betti`). Then, with `fill_opened_holes_above` (None: off), a case holding more
    holes the rule opened in the base's structure than that gets them filled (`fill_opened_holes`; the limit is
    set above every held-out case's count, out_of_depth.py). Last, every cell that has or had one
    of `unrefined_labels` takes the base's label (classes the refinement did not help on held-out cases).
    Before that, with `fall_back_above` (None: off), a case whose base structure the rule rewrote more than
    that share of (`rewritten_share`) gets the sizes alone on the base instead: the rule is out of its depth
    there (out_of_depth.py). Zeros and empties change nothing."""
    min_component_size: int = 0
    min_hole_size: int = 0
    max_hole_radius: float = 0.0
    guard: Optional[float] = None
    unrefined_labels: Tuple[int, ...] = ()
    fall_back_above: Optional[float] = None
    outline_guard: Optional[float] = None
    fill_joined_pinholes: bool = False
    remove_guarded_specks: bool = False
    label_topology: SharedBetti = ()
    keep_label_topology: bool = False
    fill_opened_holes_above: Optional[float] = None

    @classmethod
    def from_config(cls, config: dict) -> "CleanUp":
        """The clean-up of an rnca.json (absent keys: off, as in refiners saved before a setting existed; the
        `keep_base_loops: true` of refiners before the guard is guard 0)."""
        values = {name: config.get(name, default) for name, default in asdict(cls()).items()}
        sizes = [values["min_component_size"], values["min_hole_size"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SIZE for v in sizes):
            raise TypeError(f"min_component_size/min_hole_size must be whole numbers from 0 to {MAX_SIZE}, got {sizes}")
        radius = values["max_hole_radius"]
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius <= MAX_RADIUS:
            raise TypeError(f"max_hole_radius must be a number of cells from 0 to {MAX_RADIUS}, got {radius!r}")
        legacy = config.get("keep_base_loops", False)
        if not isinstance(legacy, bool):
            raise TypeError(f"keep_base_loops must be true or false, got {legacy!r}")
        guard = 0.0 if legacy and values["guard"] is None else values["guard"]
        for name, value in (("guard", guard), ("outline_guard", values["outline_guard"])):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise TypeError(f"{name} must be null or a confidence from 0 to 1, got {value!r}")
        limit = values["fall_back_above"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 <= limit <= 1):
            raise TypeError(f"fall_back_above must be null or a share from 0 to 1, got {limit!r}")
        opened = values["fill_opened_holes_above"]
        if opened is not None and (isinstance(opened, bool) or not isinstance(opened, (int, float))
                                   or not 0 <= opened <= MAX_SIZE):
            raise TypeError(f"fill_opened_holes_above must be null or a count of holes from 0 to {MAX_SIZE}, "
                            f"got {opened!r}")
        for name in ("fill_joined_pinholes", "remove_guarded_specks", "keep_label_topology"):
            if not isinstance(values[name], bool):
                raise TypeError(f"{name} must be true or false, got {values[name]!r}")
        labels = values["unrefined_labels"]
        if not isinstance(labels, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in labels):
            raise TypeError(f"unrefined_labels must be a list of label values from 1 to 65535, got {labels!r}")
        return cls(values["min_component_size"], values["min_hole_size"], float(radius),
                   None if guard is None else float(guard), tuple(labels), None if limit is None else float(limit),
                   None if values["outline_guard"] is None else float(values["outline_guard"]),
                   values["fill_joined_pinholes"], values["remove_guarded_specks"],
                   _shared_betti_from_config(values["label_topology"]), values["keep_label_topology"],
                   None if opened is None else float(opened))

    @property
    def needs_base(self) -> bool:
        """Whether `__call__` needs the base label map (and the base's confidence)."""
        return (self.guard is not None or self.outline_guard is not None or bool(self.unrefined_labels)
                or self.fall_back_above is not None or self.fill_joined_pinholes or self.keep_label_topology
                or self.fill_opened_holes_above is not None)

    @property
    def sizes(self) -> "CleanUp":
        """The sizes alone: the clean-up-alone baseline, and what a case out of the rule's depth gets."""
        return CleanUp(self.min_component_size, self.min_hole_size, self.max_hole_radius)

    def __call__(self, segmentation: np.ndarray, per_slice: bool, base: Optional[np.ndarray] = None,
                 confidence: Optional[np.ndarray] = None) -> np.ndarray:
        """Clean a (Z, Y, X) label map refined from the label map `base`, whose cells the base was `confidence`
        sure of (see `state.base_confidence`; both needed when `needs_base`); holes per slice when `per_slice`
        (a 2D rule)."""
        return self.apply(segmentation, per_slice, base, confidence)[0]

    def apply(self, segmentation: np.ndarray, per_slice: bool, base: Optional[np.ndarray] = None,
              confidence: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[float], bool, Optional[int]]:
        """`__call__`'s label map, the share of the base's structure the rule rewrote (None unless
        `fall_back_above` is set), whether that share made the case fall back to the sizes alone, and how many
        holes the rule opened in the base's structure (None unless `fill_opened_holes_above` is set; filled
        when more than that)."""
        if self.needs_base and base is None:
            raise ValueError("the guards, the fall-back and unrefined labels need the base label map the rule refined")
        if self.min_component_size > 1 or self.min_hole_size > 1 or self.max_hole_radius > 0:
            segmentation = fill_holes(self._without_specks(segmentation), self.min_hole_size, self.max_hole_radius,
                                      per_slice)
        if self.guard is not None:
            segmentation = keep_base_topology(segmentation, base, per_slice, confidence, self.guard)
        if self.outline_guard is not None:
            segmentation = keep_base_outline(segmentation, base, per_slice, confidence, self.outline_guard)
        if self.fill_joined_pinholes:
            segmentation = fill_joined_pinholes(segmentation, base, self.min_hole_size, self.max_hole_radius, per_slice)
        if self.remove_guarded_specks:
            segmentation = self._without_specks(segmentation)
        if self.keep_label_topology:
            segmentation = toward_shared_betti(segmentation, base, confidence, self.label_topology, per_slice)
        opened = None
        if self.fill_opened_holes_above is not None:
            opened = count_opened_holes(segmentation, base, per_slice)
            if opened > self.fill_opened_holes_above:
                segmentation = fill_opened_holes(segmentation, base, per_slice)
        rewritten, fell_back = None, False
        if self.fall_back_above is not None:
            rewritten = rewritten_share(segmentation, base)
            fell_back = rewritten > self.fall_back_above
            if fell_back:
                segmentation = self.sizes(base, per_slice)
        if self.unrefined_labels:
            kept = np.isin(base, self.unrefined_labels) | np.isin(segmentation, self.unrefined_labels)
            segmentation = np.where(kept, base, segmentation)
        return segmentation, rewritten, fell_back, opened

    def _without_specks(self, segmentation: np.ndarray) -> np.ndarray:
        """The label map without components smaller than `min_component_size`, of every label in it."""
        labels = [int(v) for v in np.unique(segmentation) if v > 0]
        return remove_small_components(segmentation, labels, self.min_component_size)

    def __str__(self) -> str:
        return (f"specks < {self.min_component_size}, holes < {self.min_hole_size}"
                + (f" or radius <= {self.max_hole_radius:g}" if self.max_hole_radius > 0 else "")
                + ("" if self.guard is None else f", base topology kept where the base was >= {self.guard:g} sure")
                + ("" if self.outline_guard is None else
                   f", base outline kept where the base was >= {self.outline_guard:g} sure")
                + (", holes joined from the base's pinholes filled" if self.fill_joined_pinholes else "")
                + (", specks the guard gave back removed again" if self.remove_guarded_specks else "")
                + (", classes kept toward the Betti numbers their training labels share"
                   if self.keep_label_topology else "")
                + ("" if self.fill_opened_holes_above is None else
                   f", holes the rule opened in the base's structure filled where a case has more than "
                   f"{self.fill_opened_holes_above:g}")
                + (f", labels {list(self.unrefined_labels)} left as the base" if self.unrefined_labels else "")
                + ("" if self.fall_back_above is None else
                   f", the sizes alone where the rule rewrote > {100 * self.fall_back_above:.1f}% of the structure"))


def _shared_betti_from_config(value) -> SharedBetti:
    """`label_topology` of an rnca.json: [[labels], [beta0, beta1(, beta2)]] per class, a Betti number null where
    the training labels differ."""
    def whole(v, low: int, high: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    if not isinstance(value, (list, tuple)) or not all(
            isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], (list, tuple))
            and isinstance(entry[1], (list, tuple)) and entry[0] and all(whole(v, 1, 65535) for v in entry[0])
            and len(entry[1]) in (2, 3) and all(v is None or whole(v, 0, MAX_SIZE) for v in entry[1])
            for entry in value):
        raise TypeError(f"label_topology must be a list of [[labels], [beta0, beta1(, beta2)]] with whole numbers "
                        f"or null, got {value!r}")
    return tuple((tuple(labels), tuple(betti)) for labels, betti in value)
