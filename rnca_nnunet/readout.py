"""Choose the read-out clean-up sizes on the CV cases, beside cleanup.py as nnU-Net keeps its
post-processing search beside its connected-component code."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from rnca_nnunet.data import TrainingCase
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.validation import ValidationResult, refine_cases, summary_line, validate


READ_OUT_SIZES = (0, 2, 4, 8, 16, 32, 64)


def choose_read_out(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None],
                    folder: Optional[str] = None, iteration: int = 0) -> ValidationResult:
    """Set the read-out's smallest kept component, then its smallest kept hole (like nnU-Net's
    post-processing search); a size is taken only when it scores strictly better than every smaller one.
    Returns the result of the sizes chosen.

    Two numbers, not a rule: after training they are chosen on every case with a CV prediction, because rare
    pinholes and specks may not show in the few held-out cases; during training each checkpoint is scored
    with its own sizes on the held-out cases, so that it is judged on what would ship and not on pinholes
    the clean-up fills. The cases are refined once (their label maps kept in `folder` when given) and every
    size is scored on those maps."""
    refined = refine_cases(refiner, cases, folder)
    refiner.min_component_size = refiner.min_hole_size = 0
    best = None
    for setting in ("min_component_size", "min_hole_size"):
        chosen = 0
        for size in READ_OUT_SIZES:
            setattr(refiner, setting, size)
            result = validate(refiner, cases, iteration, refined)
            log(f"{setting} {size} on all {len(cases)} cases: {summary_line(result)} score {result.score:.3f}")
            if best is None or result.score < best.score - 1e-6:
                best, chosen = result, size
        setattr(refiner, setting, chosen)
    return best
