"""Exact tiled refinement with memory bounded by the tile.

A local rule's result at a cell depends only on cells within its reach (`RNCA.receptive_radius`), so a
tile refined together with a halo of that reach gives exactly the untiled result at its core. The
cell budget counts the halo, so peak memory is that of one tile with its halo, whatever the case size;
a 2D rule's slices (the batch) run in chunks. Only the region a rule can reach from its alive cells is run at
all (`reachable_region`). Tiles always run a fixed number of steps: stopping at
steady state is a decision about the whole case, which a tile cannot make.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from rnca_nnunet.model import RuleShape

CPU_CELL_BUDGET = {2: 2 ** 22, 3: 2 ** 21}  # ~4M / 2M cells: about 2-3 GiB of activations with the presets
MIN_CORE = 16  # below this a tile is mostly halo; memory then exceeds the budget rather than work exploding


def bytes_per_cell(shape: RuleShape) -> int:
    """Peak float32 activations of one step per cell: state, perception, the context's drive and hidden."""
    perception = shape.state_channels * (shape.ndim + 1)
    return 4 * (3 * shape.state_channels + 2 * perception + 4 * shape.update_width + shape.context_channels)


def cell_budget(shape: RuleShape, device: torch.device) -> int:
    """Cells one tile (halo included) may hold: half the free memory on CUDA, a fixed budget on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(MIN_CORE ** shape.ndim, free // 2 // bytes_per_cell(shape))
    return CPU_CELL_BUDGET[shape.ndim]


@dataclass(frozen=True)
class TilePlan:
    slices_per_chunk: int  # batch entries (a 2D rule's slices) run together
    core: Tuple[int, ...]  # tile edge per spatial axis, halo excluded


def plan_tiles(batch: int, spatial: Sequence[int], halo: int, max_cells: int) -> TilePlan:
    """Tile cores whose tiles with halo fit `max_cells`, then as many slices per chunk as fit beside them.

    Cores start as the whole case and the longest core is halved until a tile fits (never below MIN_CORE):
    axes that fit stay whole, so a deep halo (2 x steps + 1) is paid on as few tile faces as possible
    (cubic cores would pay it on every axis of an anisotropic volume)."""
    core = list(spatial)

    def outer_cells() -> int:
        return int(np.prod([min(c + 2 * halo, s) for c, s in zip(core, spatial)]))

    while outer_cells() > max_cells and max(core) > MIN_CORE:
        axis = int(np.argmax(core))
        core[axis] = max(MIN_CORE, -(-core[axis] // 2))
    return TilePlan(max(1, min(batch, max_cells // outer_cells())), tuple(core))


def reachable_region(mask: np.ndarray, threshold: float, margin: int) -> Optional[Tuple[slice, ...]]:
    """The box of (B, K, *spatial) mask channels outside which a rule stays dead: from the first to the last batch
    entry with a cell above `threshold`, and in space those cells' box widened by `margin` cells
    (`RNCA.growth_radius`); None when no cell is alive. Refining only that box gives the same result (a heart in
    a large CT, empty slices), and being a box it is a view: no case-sized copy."""
    alive = (mask > threshold).any(1)
    entries = np.flatnonzero(alive.reshape(len(alive), -1).any(1))
    if not len(entries):
        return None
    alive = alive[entries[0]:entries[-1] + 1].any(0)
    box = []
    for axis, size in enumerate(alive.shape):
        present = np.flatnonzero(alive.any(tuple(a for a in range(alive.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, size)))
    return (slice(int(entries[0]), int(entries[-1]) + 1), slice(None), *box)


def tiles(spatial: Sequence[int], core: Sequence[int], halo: int) -> Iterator[Tuple[tuple, tuple, tuple]]:
    """(core, outer, inner) slices: the core cells of a tile, the tile with its halo, and the core inside it."""
    for corner in itertools.product(*(range(0, s, c) for s, c in zip(spatial, core))):
        inner_core = tuple(slice(a, min(a + c, s)) for a, c, s in zip(corner, core, spatial))
        outer = tuple(slice(max(c.start - halo, 0), min(c.stop + halo, s)) for c, s in zip(inner_core, spatial))
        inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(inner_core, outer))
        yield inner_core, outer, inner


def run_tiled(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, out: np.ndarray, halo: int,
              plan: TilePlan) -> None:
    """Apply `run` ((B, C, *tile) -> (B, K, *tile)) tile by tile and chunk by chunk, writing each core into `out`
    (B, K, *spatial, any strides); exact when `halo` is the rule's reach for the steps `run` takes."""
    spatial = batch.shape[2:]
    for start in range(0, batch.shape[0], plan.slices_per_chunk):
        chunk = slice(start, start + plan.slices_per_chunk)
        for core, outer, inner in tiles(spatial, plan.core, halo):
            tile = run(np.ascontiguousarray(batch[(chunk, slice(None), *outer)]))
            out[(chunk, slice(None), *core)] = tile[(slice(None), slice(None), *inner)]
