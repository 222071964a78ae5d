"""Choose the read-out clean-up sizes on the CV cases, beside cleanup.py as nnU-Net keeps its
post-processing search beside its connected-component code."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from rnca_nnunet.cleanup import hole_sizes
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.state import segmentation_from_mask
from rnca_nnunet.validation import refine_cases, summary_line, validate


READ_OUT_SIZES = (0, 2, 4, 8, 16, 32, 64)
REAL_HOLE_PERCENTILE = 1.0  # holes as large as the smallest 1% of the labels' own holes are never filled


def largest_hole_fill(refiner: RNCARefiner, cases: Sequence[TrainingCase]) -> Optional[float]:
    """The 1st percentile of the sizes of the labels' own holes (None when the labels have none).

    A fill size is searched on the CV cases, but test cases may hold smaller real holes: TopoMortar's val
    walls have bricks half the size of the train walls', and a fill of holes < 64 cells chosen on the train
    split filled real val bricks (beta1 error 19.0 with < 16, 32.5 with < 64)."""
    per_slice = refiner.model.shape.ndim == 2
    sizes = [hole_sizes(segmentation_from_mask(np.asarray(case.target), refiner.semantics), per_slice)
             for case in cases]
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    return float(np.percentile(sizes, REAL_HOLE_PERCENTILE)) if sizes.size else None


def choose_read_out(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None],
                    folder: Optional[str] = None) -> None:
    """Set the read-out's smallest kept component, then its smallest kept hole (like nnU-Net's
    post-processing search); a size is taken only when it scores strictly better than every smaller one.

    Two numbers, not a rule: they are chosen on every case with a CV prediction, because rare pinholes
    and specks may not show in the few held-out cases. The cases are refined once (their label maps kept in
    `folder` when given) and every size is scored on those maps. Hole fills stop below the size of the
    labels' own small holes (`largest_hole_fill`)."""
    refined = refine_cases(refiner, cases, folder)
    bound = largest_hole_fill(refiner, cases)
    best = None
    for setting in ("min_component_size", "min_hole_size"):
        chosen = 0
        for size in READ_OUT_SIZES:
            if setting == "min_hole_size" and bound is not None and size > bound:
                log(f"min_hole_size {size} not tried: 1% of the labels' holes are smaller than {bound:.0f} cells")
                break
            setattr(refiner, setting, size)
            result = validate(refiner, cases, 0, refined)
            log(f"{setting} {size} on all {len(cases)} cases: {summary_line(result)} score {result.score:.3f}")
            if best is None or result.score < best.score - 1e-6:
                best, chosen = result, size
        setattr(refiner, setting, chosen)
