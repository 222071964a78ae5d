"""When the rule is out of its depth: a case it rewrites far more than any case it was checked on.

On images unlike its training cases (shadows, occluders, another stain) the rule can redraw large parts of
nnU-Net's mask, and there its learned part stops paying while the clean-up alone still does. How much of
nnU-Net's structure the rule rewrote (`cleanup.rewritten_share`) costs nothing to measure, and on the held-out
CV cases it has a ceiling; a case rewritten more than `FACTOR` times that ceiling gets the clean-up alone
(`CleanUp.fall_back_above`, kept in rnca.json). With FACTOR above 1 no held-out case falls back, so the
held-out figures the refiner was chosen on stay as they are. Off unless a preset asks (`"fall_back": true`):
a ceiling taken from a handful of held-out cases is not a safe bound for a whole case (docs/do-no-harm.md).
The same ceiling for one kind of change, on by default: holes the rule opened where nnU-Net drew structure
(`cleanup.count_opened_holes`); a case with more of them than FACTOR times the held-out ceiling gets those
holes filled (`CleanUp.fill_opened_holes_above`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from rnca_nnunet.cleanup import count_opened_holes, rewritten_share
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.state import base_confidence, probabilities_from_mask, segmentation_from_probabilities
from rnca_nnunet.validation import Refined, refine_cases

# chosen on TopoMortar's shifted test groups (shadows, occlusion; benchmarks/TOPOMORTAR_SHIFT.md), never on a
# case the refiner trains or is checked on
FACTOR = 1.5


def _held_out_maps(refiner: RNCARefiner, cases: Sequence[TrainingCase], refined: Optional[Sequence[Refined]]
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(the refiner's label map with its read-out, the base's label map) of each held-out case; `refined`: the
    rule's maps from `refine_cases`, if already made."""
    clean_up = refiner.clean_up
    per_slice = refiner.model.shape.ndim == 2
    for case, (raw, _) in zip(cases, refine_cases(refiner, cases) if refined is None else refined):
        base_probabilities = probabilities_from_mask(np.asarray(case.mask), refiner.semantics)
        base = segmentation_from_probabilities(base_probabilities, refiner.semantics)
        cleaned = clean_up.apply(np.load(raw) if isinstance(raw, str) else raw, per_slice, base,
                                 base_confidence(base_probabilities, refiner.semantics))[0]
        yield cleaned, base


def held_out_shares(refiner: RNCARefiner, cases: Sequence[TrainingCase],
                    refined: Optional[Sequence[Refined]] = None) -> List[float]:
    """The share of each case's base structure the refiner (with its read-out, without a fall-back) rewrote."""
    return [rewritten_share(cleaned, base) for cleaned, base in _held_out_maps(refiner, cases, refined)]


def with_opened_hole_limit(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None],
                           refined: Optional[Sequence[Refined]] = None) -> RNCARefiner:
    """The refiner with `fill_opened_holes_above` set to FACTOR times the most holes it opened in the base's
    structure on a held-out case (`cleanup.count_opened_holes`), so that no held-out case changes (none without
    cases). On by default, unlike the fall-back: it gives back only those holes, and on TopoMortar's val and
    held-out walls it changes nothing, where the fall-back sent whole unseen vessel cases to the clean-up."""
    if not cases:
        return refiner
    per_slice = refiner.model.shape.ndim == 2
    counts = [count_opened_holes(cleaned, base, per_slice) for cleaned, base in _held_out_maps(
        refiner.replace(clean_up=replace(refiner.clean_up, fill_opened_holes_above=None, fall_back_above=None)),
        cases, refined)]
    limit = FACTOR * max(counts)
    log(f"opened holes: the rule opened {min(counts)}-{max(counts)} holes in nnU-Net's structure on the "
        f"{len(cases)} held-out cases; a case with more than {limit:g} ({FACTOR:g}x the most) gets them filled")
    return refiner.replace(clean_up=replace(refiner.clean_up, fill_opened_holes_above=limit))


def with_fall_back(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None],
                   refined: Optional[Sequence[Refined]] = None) -> RNCARefiner:
    """The refiner with its fall-back limit set from the held-out `cases` (none without cases)."""
    if not cases:
        return refiner
    shares = held_out_shares(refiner.replace(clean_up=replace(refiner.clean_up, fall_back_above=None)), cases,
                             refined)
    limit = min(1.0, FACTOR * max(shares))
    log(f"fall-back: the rule rewrote {100 * min(shares):.1f}-{100 * max(shares):.1f}% of nnU-Net's structure on "
        f"the {len(cases)} held-out cases; a case rewritten more than {100 * limit:.1f}% ({FACTOR:g}x the most) "
        f"gets the clean-up alone")
    return refiner.replace(clean_up=replace(refiner.clean_up, fall_back_above=limit))
