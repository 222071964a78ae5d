"""Choose the read-out on the CV cases, beside cleanup.py as nnU-Net keeps its post-processing search beside
its connected-component code: the clean-up's sizes on the training cases (the largest within
`READ_OUT_TOLERANCE` of the best score), then the guard of the base's topology and the classes left unrefined on
the held-out ones, each of these kept only where it scores strictly better than the safer choice (an on/off
switch: better by more than `READ_OUT_TOLERANCE`); `guard_search: false` in a preset: sizes on every CV case
and no guard, as before."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from rnca_nnunet.cleanup import CleanUp, hole_measures
from rnca_nnunet.config import TrainConfig
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.label_topology import shared_betti
from rnca_nnunet.metrics import harm_line
from rnca_nnunet.out_of_depth import with_fall_back, with_opened_hole_limit
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.state import segmentation_from_mask
from rnca_nnunet.validation import Refined, ValidationResult, refine_cases, summary_line, validate


READ_OUT_SIZES = (0, 2, 4, 8, 16, 32, 64)
READ_OUT_RADII = (0, 1.0, 1.5, 2.0, 3.0)  # cells; a hole's inscribed radius takes the values 1, 1.41, 2, 2.24, ...
# the guard's thresholds, safest first: 0 undoes every topology change the rule made against the base, a higher
# one only those where the base was at least that sure, None none (see cleanup.keep_base_topology)
GUARD_THRESHOLDS = (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, None)
# the outline guard's, safest first: 0 gives nnU-Net back every outline the rule moved, a higher one only those
# nnU-Net was at least that sure of, None none (see outline.keep_base_outline); a search on the held-out cases,
# since on TopoMortar's 5x base nnU-Net's outlines were the better ones and on generated membranes the rule's
OUTLINE_THRESHOLDS = GUARD_THRESHOLDS
# whether holes the rule joined from the base's pinholes are filled (cleanup.fill_joined_pinholes), safest first:
# on is what the clean-up alone does with those pinholes
JOINED_PINHOLE_FILLS = (True, False)
# whether specks the guard gave back are removed again (cleanup.CleanUp.remove_guarded_specks), safest first: on
# is what the clean-up alone does with them. Searched last, with the guard already chosen: searched with the
# guard, it made guard 0.8 beat 0.9 on one of 10 held-out TopoMortar walls and undo real repairs on the val walls
GUARDED_SPECK_REMOVALS = (True, False)
# whether changes that move a class away from the Betti numbers all its training labels share go back to nnU-Net
# (label_topology.py), safest first; searched last, on held-out cases, where it mostly ties
LABEL_TOPOLOGY_KEEPS = (True, False)
REAL_HOLE_PERCENTILE = 1.0  # holes as large, or as thick, as the smallest 1% of the labels' own are never filled
# a larger clean-up value is kept when it scores within this much of the best (0.005: half a percent of the base's
# topology errors). On the training cases the rule leaves few small holes, so fills of 4 and 16 cells tie there,
# while on images unlike them the larger fill decides: TopoMortar's occluded walls, demo base, the seed that kept
# holes < 4 had 29.1 loop errors a wall with the clean-up alone, the two that kept < 16 had 7.0 and 6.0
READ_OUT_TOLERANCE = 0.005
# an on/off switch leaves its safe side (what the clean-up alone does) only where the other side scores better by
# more than READ_OUT_TOLERANCE, as a larger clean-up value is kept within it: TopoMortar's demo base, the pinhole
# fill switched off by 0.001 on the held-out walls left occluded walls 10.14 loop errors instead of 8.26 (and
# 6.58 instead of 6.30 on another seed), with val and shadowed walls unchanged
SWITCHES = ("fill_joined_pinholes", "remove_guarded_specks", "keep_label_topology")


def real_hole_bounds(refiner: RNCARefiner, cases: Sequence[TrainingCase]) -> Optional[np.ndarray]:
    """The 1st percentiles of the size and of the inscribed radius of the labels' own holes (None when the
    labels have none).

    Fills are searched on the CV cases, but test cases may hold smaller real holes: TopoMortar's val walls
    have bricks half the size of the train walls', and a fill of holes < 64 cells chosen on the train split
    filled real val bricks (beta1 error 19.0 with < 16, 32.5 with < 64). Thickness varies far less than
    area: the thinnest 1% of the 4710 train bricks have radius 2, and so do the val walls' small bricks."""
    per_slice = refiner.model.shape.ndim == 2
    measures = [hole_measures(segmentation_from_mask(np.asarray(case.target), refiner.semantics), per_slice)
                for case in cases]  # one label map in memory at a time
    measures = np.concatenate(measures, axis=1) if measures else np.zeros((2, 0))
    return np.percentile(measures, REAL_HOLE_PERCENTILE, axis=1) if measures.shape[1] else None


def choose_read_out(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None],
                    folder: Optional[str] = None) -> RNCARefiner:
    """The refiner with the read-out's smallest kept component, its smallest kept hole, then its thinnest kept
    hole (like nnU-Net's post-processing search): of the values tried, the largest that scores within
    `READ_OUT_TOLERANCE` of the best one.

    Numbers, not a rule: they are chosen on the training cases (not the held-out ones, which then score the
    refiner honestly), because rare pinholes and specks may not show in the few held-out cases. The cases
    are refined once (their label maps kept in `folder` when given) and every value is scored on those maps.
    Hole fills stop below the size and the thickness of the labels' own small holes (`real_hole_bounds`), so a
    larger fill that ties removes holes smaller than all but 1% of the labels' own; where the images change,
    such holes are what the base and the rule add. The Betti numbers all these cases' labels share, per class,
    are kept with the sizes (`label_topology.shared_betti`), for `choose_guard` to decide on."""
    refined = refine_cases(refiner, cases, folder)
    bounds = real_hole_bounds(refiner, cases)
    if refiner.semantics.ignore_label is None:
        shared = shared_betti((segmentation_from_mask(np.asarray(case.target), refiner.semantics) for case in cases),
                              refiner.semantics.classes, refiner.model.shape.ndim == 2)
        log("Betti numbers every training label shares: " + ("; ".join(
            f"labels {list(labels)} {tuple('-' if v is None else v for v in values)}" for labels, values in shared)
            or "none"))
    else:  # labels with an ignore label are partial: their Betti numbers are the annotation's, not the anatomy's
        shared = ()
        log("Betti numbers of the training labels not used: the labels have an ignore label (partial annotation)")
    clean_up = replace(refiner.clean_up, label_topology=shared)
    for setting, values in (("min_component_size", READ_OUT_SIZES), ("min_hole_size", READ_OUT_SIZES),
                            ("max_hole_radius", READ_OUT_RADII)):
        scores = {}
        for value in values:
            refused = _fills_real_holes(setting, value, bounds)
            if refused:
                log(f"{setting} {value:g} not tried: {refused}")
                break
            result = validate(refiner.replace(clean_up=replace(clean_up, **{setting: value})), cases, 0, refined)
            log(f"{setting} {value:g} on all {len(cases)} cases: {summary_line(result)} score {result.score:.3f}")
            scores[value] = result.score
        chosen = max(v for v, score in scores.items() if score <= min(scores.values()) + READ_OUT_TOLERANCE)
        log(f"{setting} {chosen:g} kept (the largest within {READ_OUT_TOLERANCE} of the best score)")
        clean_up = replace(clean_up, **{setting: chosen})
    return refiner.replace(clean_up=clean_up)


def _fills_real_holes(setting: str, value: float, bounds: Optional[np.ndarray]) -> Optional[str]:
    """Why a fill would reach the labels' own small holes (None when it would not)."""
    if bounds is not None and setting == "min_hole_size" and value > bounds[0]:
        return f"1% of the labels' holes are smaller than {bounds[0]:.0f} cells"
    if bounds is not None and setting == "max_hole_radius" and value >= bounds[1]:
        return f"1% of the labels' holes are at most {bounds[1]:.2f} cells thick"
    return None


def decide_read_out(refiner: RNCARefiner, train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase],
                    config: TrainConfig, log: Callable[[str], None], folder: Optional[str] = None,
                    refined: Optional[Sequence[Refined]] = None, own_cases: Optional[int] = None
                    ) -> Tuple[RNCARefiner, ValidationResult]:
    """The whole read-out of a trained rule (its clean-up is replaced) and its result on the held-out cases:
    the sizes, then the guards and the classes to refine (`choose_guard`), then the limit of holes opened in the
    base's structure (`out_of_depth.with_opened_hole_limit`), then the fall-back where the config asks for it.
    With the guard search (the default) the sizes come from the training cases only, so the held-out ones
    choose the guards and score honestly; without it, from every CV case, as before the search.
    `refined`: the held-out cases' label maps before the read-out, made by the rule that did not train on each
    (`validation.read_out_folds`; default: this rule's, made here). `own_cases`: how many of `val_cases`, first,
    this rule held out itself (default: all). The two limits are ceilings of this rule on cases it never saw, so
    they are measured on those alone: other folds' rules are other rules, and a maximum over five times the
    cases is a looser ceiling (TopoMortar's demo base: 0 opened holes on the 10 walls, 3 on the 50)."""
    refiner = refiner.replace(clean_up=CleanUp())
    refiner = choose_read_out(refiner, train_cases if config.guard_search else [*train_cases, *val_cases], log, folder)
    if refined is None:  # the rule's maps do not depend on the read-out: made once
        refined = refine_cases(refiner, val_cases, folder)
    if config.guard_search:
        refiner, final = choose_guard(refiner, val_cases, log, folder,
                                      (0.0,) if config.keep_base_loops else GUARD_THRESHOLDS, refined)
    else:
        if config.keep_base_loops:
            refiner = refiner.replace(clean_up=replace(refiner.clean_up, guard=0.0))
        final = validate(refiner, val_cases, 0, refined)
    own = len(val_cases) if own_cases is None else own_cases
    if own < len(val_cases):
        log(f"the limits below are this rule's own: measured on the {own} cases it held out, not on the other "
            f"read-out folds' {len(val_cases) - own}")
    own_val, own_refined = list(val_cases)[:own], list(refined)[:own]
    refiner = with_opened_hole_limit(refiner, own_val, log, own_refined)
    if config.fall_back:
        refiner = with_fall_back(refiner, own_val, log, own_refined)
    return refiner, final


def choose_guard(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None],
                 folder: Optional[str] = None, guards: Sequence[Optional[float]] = GUARD_THRESHOLDS,
                 refined: Optional[Sequence[Refined]] = None) -> Tuple[RNCARefiner, ValidationResult]:
    """Choose the guard of the base's topology (`guards`, safest first: a less safe one is taken only when it
    scores strictly better; `--keep_base_loops` offers 0 alone), then the guard of its outline
    (`OUTLINE_THRESHOLDS`, the same way: it changes no topology, so Dice alone decides), then whether holes the
    rule joined from the base's pinholes are filled (on, as the clean-up alone would, unless off scores better
    by more than `READ_OUT_TOLERANCE`), then whether specks
    the guard gave back are removed again (on first, the same way; only with a guard and a speck size); neither
    at guard 0, which keeps the base's topology (on TopoMortar's noisy labels both tied on the held-out walls,
    and the pinhole fill then filled real bricks under 32 cells on val walls the labels had right), then
    whether changes that move a class away from the Betti numbers its training labels share go back (on first,
    the same way), then leave unrefined every class on which the refinement does not score better than the
    base; returns the refiner with that read-out and its held-out result. `refined`: the rule's maps of the
    cases from `refine_cases`, if already made.

    Scored by `decision_score`, which charges harm twice, so that repairs on a few held-out cases must clearly
    outweigh what they break. Chosen on held-out cases, which the rule never trained on: on its training
    cases a rule rarely breaks what is right (TopoMortar's noisy labels: beta1 error 0.24 on the 50 train
    walls, and one in three intact val walls broken). Ties go to the safer choice, so a refiner whose
    held-out cases show no gain from changing the base's topology keeps it (train.py, unless a preset sets
    `guard_search: false`)."""
    refined = refine_cases(refiner, cases, folder) if refined is None else refined
    refiner, _ = _choose_threshold(refiner, "guard", guards, cases, refined, log)
    refiner, best = _choose_threshold(refiner, "outline_guard", OUTLINE_THRESHOLDS, cases, refined, log)
    if refiner.clean_up.guard != 0.0:  # guard 0 keeps the base's topology: nothing after it may change it
        refiner, best = _choose_threshold(refiner, "fill_joined_pinholes", JOINED_PINHOLE_FILLS, cases, refined, log)
    if refiner.clean_up.guard not in (None, 0.0) and refiner.clean_up.min_component_size > 1:
        refiner, best = _choose_threshold(refiner, "remove_guarded_specks", GUARDED_SPECK_REMOVALS, cases, refined,
                                          log)
    if refiner.clean_up.label_topology:  # gives back to the base only, so at guard 0 too
        refiner, best = _choose_threshold(refiner, "keep_label_topology", LABEL_TOPOLOGY_KEEPS, cases, refined, log)
    unhelped = [name for name in best.after if best.decision_score([name]) >= 1.0 - 1e-6]
    for name in best.after:
        log(f"{name}: refiner {'OFF' if name in unhelped else 'on'} (held-out score {best.decision_score([name]):.3f},"
            f" nnU-Net's own masks 1; {harm_line(best.harm([name]))})")
    if unhelped:
        labels = sorted({label for name in unhelped for label in refiner.semantics.classes[name]})
        refiner = refiner.replace(clean_up=replace(refiner.clean_up, unrefined_labels=tuple(labels)))
        log(f"labels {labels} keep nnU-Net's prediction: the refiner does not help them on cases it never saw")
        best = validate(refiner, cases, 0, refined)
    return refiner, best


def _choose_threshold(refiner: RNCARefiner, setting: str, thresholds: Sequence[Optional[float]],
                      cases: Sequence[TrainingCase], refined: Sequence, log: Callable[[str], None]
                      ) -> Tuple[RNCARefiner, ValidationResult]:
    """The refiner with the clean-up's `setting` at the threshold `safest_choice` keeps by decision score, and
    that threshold's held-out result."""
    results, scores = [], []
    for threshold in thresholds:
        result = validate(refiner.replace(clean_up=replace(refiner.clean_up, **{setting: threshold})), cases, 0,
                          refined)
        results.append(result)
        scores.append(result.decision_score(list(result.after)))
        shown = ("yes" if threshold else "no") if isinstance(threshold, bool) else \
            "off" if threshold is None else f"{threshold:g}"
        log(f"{setting.replace('_', ' ')} {shown} on {len(cases)} held-out cases: {summary_line(result)} "
            f"{harm_summary(result)} score {scores[-1]:.3f}")
    index = safest_choice(scores, READ_OUT_TOLERANCE if setting in SWITCHES else 1e-6)
    return refiner.replace(clean_up=replace(refiner.clean_up, **{setting: thresholds[index]})), results[index]


def safest_choice(scores: Sequence[float], margin: float) -> int:
    """The index of the choice kept, `scores` safest first (lower is better): a later, less safe one replaces
    the one kept so far only where it scores lower by more than `margin` (1e-6 for the guards, whose levels
    each undo a share of the rule's changes; `READ_OUT_TOLERANCE` for the on/off `SWITCHES`)."""
    kept = 0
    for index, score in enumerate(scores):
        if score < scores[kept] - margin:
            kept = index
    return kept


def harm_summary(result: ValidationResult) -> str:
    """Intact (case, class) pairs newly broken and pairs made worse (much worse), for the log."""
    harm = result.harm(list(result.after))
    return (f"newly broken {harm['newly_broken']} of {harm['intact_before']} intact, "
            f"made worse {harm['made_worse']} ({harm['made_much_worse']} by more than one error)")


def unrefined_classes(refiner: RNCARefiner) -> List[str]:
    """The classes the read-out leaves as the base predicted them."""
    off = set(refiner.clean_up.unrefined_labels)
    return [name for name, labels in refiner.semantics.classes.items() if off and set(labels) <= off]
