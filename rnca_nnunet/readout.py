"""Choose the read-out clean-up sizes on the CV cases, beside cleanup.py as nnU-Net keeps its
post-processing search beside its connected-component code."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from rnca_nnunet.data import TrainingCase
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.validation import refine_cases, summary_line, validate


READ_OUT_SIZES = (0, 2, 4, 8, 16, 32, 64)


def choose_read_out(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None],
                    folder: Optional[str] = None) -> None:
    """Set the read-out's smallest kept component, then its smallest kept hole (like nnU-Net's
    post-processing search); a size is taken only when it scores strictly better than every smaller one.

    Two numbers, not a rule: they are chosen on every case with a CV prediction, because rare pinholes
    and specks may not show in the few held-out cases. The cases are refined once (their label maps kept in
    `folder` when given) and every size is scored on those maps."""
    refined = refine_cases(refiner, cases, folder)
    best = None
    for setting in ("min_component_size", "min_hole_size"):
        chosen = 0
        for size in READ_OUT_SIZES:
            setattr(refiner, setting, size)
            result = validate(refiner, cases, 0, refined)
            log(f"{setting} {size} on all {len(cases)} cases: {summary_line(result)} score {result.score:.3f}")
            if best is None or result.score < best.score - 1e-6:
                best, chosen = result, size
        setattr(refiner, setting, chosen)
