"""Held-out cases: the split, and before/after metrics of whole cases refined exactly as at prediction time."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from rnca_nnunet.data import TrainingCase
from rnca_nnunet.metrics import case_metrics, harm_and_repair, mean_metrics
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.state import (base_confidence, probabilities_from_mask, segmentation_from_mask,
                               segmentation_from_probabilities)


HARM_WEIGHT = 1.0  # breaking every intact structure costs as much as leaving every error in place
# a read-out less safe than the guard's safest is kept only when its repairs pay for twice its harm: on TopoMortar's
# noisy labels (seed 0) the guard off scored 0.011 better than guard 0 on 10 held-out walls (3 one-loop walls
# repaired, 1 of 7 intact walls broken) and then broke 5 of 15 intact val walls (beta1 error 0.30 -> 0.85)
DECISION_HARM_WEIGHT = 2.0


def split_cases(cases: Sequence[TrainingCase], val_fraction: float, seed: int,
                error_counts: Optional[Sequence[int]] = None) -> Tuple[List, List]:
    """Hold out a fraction of cases (at least one when there are two or more) for checkpoint selection.

    With `error_counts` (each case's base topology errors) one case is drawn from each of as many equal
    strata of the cases ranked by errors, so the held-out cases span the worst to the best bases: ten
    TopoMortar walls drawn at random held no merged brick at all, and checkpoints tied on them."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cases))
    n_val = min(max(1, round(val_fraction * len(cases))), len(cases) - 1) if len(cases) > 1 else 0
    if error_counts is not None and n_val:
        ranked = order[np.argsort(np.asarray(error_counts)[order], kind="stable")]  # ties in random order
        held = {int(rng.choice(stratum)) for stratum in np.array_split(ranked, n_val)}
        order = np.array([*sorted(held), *(i for i in range(len(cases)) if i not in held)])
    return [cases[i] for i in order[n_val:]], [cases[i] for i in order[:n_val]]


Fold = Tuple[List[TrainingCase], List[TrainingCase]]  # training cases, held-out cases


def read_out_folds(cases: Sequence[TrainingCase], val_fraction: float, seed: int, folds: int,
                   error_counts: Optional[Sequence[int]] = None) -> List[Fold]:
    """`split_cases`'s split (the shipped rule's), then `folds - 1` more that hold out the rest of the cases in
    turn, so that every CV case is held out once and the read-out is chosen on all of them.

    Why: the read-out is an all-or-nothing choice where the base is a hard mask, and ten held-out cases cannot
    make it. On TopoMortar's noisy labels one seed's 10 held-out walls showed 3 of 4 broken walls repaired and
    no intact one broken, so the guard went off, and on the val walls the rule broke 3 of 14 intact walls."""
    train, held_out = split_cases(cases, val_fraction, seed, error_counts)
    splits = [(train, held_out)]
    for part in np.array_split(np.arange(len(train)), folds - 1) if folds > 1 else []:
        fold_held_out = set(part.tolist())
        kept = [case for i, case in enumerate(train) if i not in fold_held_out] + held_out
        if fold_held_out and kept:
            splits.append((kept, [train[i] for i in sorted(fold_held_out)]))
    return splits


# with read_out_folds unset, every CV case chooses the read-out (AUTOMATIC_FOLDS rules) where at least this share
# of them already has the label's topology: TopoMortar's noisy labels (33 of 50 intact) broke 1.0 of 14 intact val
# walls with the 10 held-out walls choosing and none with all 50 (3 seeds); on the demo nnU-Net base (1 of 50
# intact) all 50 chose the same val result and a looser read-out for occluded walls (beta1 7.78 -> 10.14, seed 0)
INTACT_SHARE_FOR_FOLDS = 0.25
AUTOMATIC_FOLDS = 5


def read_out_fold_count(requested: Optional[int], error_counts: Sequence[int]) -> Tuple[int, str]:
    """How many rules choose the read-out (`read_out_folds`): the preset's number, or when it sets none, all CV
    cases (AUTOMATIC_FOLDS) where many of them are already right, else the shipped rule's held-out cases alone.

    Why: harm can only be priced on cases that are right, and where a good share of them are (a well-trained
    nnU-Net, near-correct labels) ten held-out cases hold too few to show it, as nnU-Net chooses its own
    post-processing on every fold's validation cases. Returns the count and a line for the log."""
    intact = sum(1 for count in error_counts if count == 0)
    share = intact / max(1, len(error_counts))
    line = f"{intact} of {len(error_counts)} CV cases ({share:.0%}) already have the label's topology"
    if requested is not None:
        return requested, f"read_out_folds {requested} (the preset's); {line}"
    if share >= INTACT_SHARE_FOR_FOLDS:
        return AUTOMATIC_FOLDS, (f"read_out_folds {AUTOMATIC_FOLDS} (automatic): {line}, at least "
                                 f"{INTACT_SHARE_FOR_FOLDS:.0%}, so every CV case chooses the read-out and prices "
                                 f"its harm ({AUTOMATIC_FOLDS} rules trained)")
    return 1, (f"read_out_folds 1 (automatic): {line}, under {INTACT_SHARE_FOR_FOLDS:.0%}, so the held-out cases "
               f"choose the read-out")


@dataclass
class ValidationResult:
    iteration: Optional[int]  # the training iteration of the rule scored (None: unknown, see run_training)
    before: Dict[str, Dict[str, float]]
    after: Dict[str, Dict[str, float]]
    per_case: List[Dict]

    @property
    def score(self) -> float:
        """Lower is better (1 for the base itself): see `class_score`, over every class."""
        return self.class_score(list(self.after))

    def class_score(self, names: Sequence[str], harm_weight: float = HARM_WEIGHT) -> float:
        """Lower is better, 1 for leaving the base as it is: the remaining share of the classes' topology errors,
        minus a reward for Dice gained, plus the share of intact (case, class) pairs the refinement broke.

        One error per class is added above and below the fraction, so that bases with almost no
        topology errors (refining good labels) do not turn a few new errors into a huge ratio. Mean errors
        alone let repairs on broken cases pay for breaking intact ones (a tunnel through a sound 3D wall, a
        pinhole in a correct mortar line); a user never wants the latter, so it is charged on its own."""
        topo = lambda m: sum(m[n]["beta0_error"] + m[n]["beta1_error"] + 1.0 for n in names)  # noqa: E731
        dice = lambda m: float(np.mean([m[n]["dice"] for n in names]))  # noqa: E731
        harm = self.harm(names)
        return (topo(self.after) / topo(self.before) - 5.0 * (dice(self.after) - dice(self.before))
                + harm_weight * harm["newly_broken_share"])

    def decision_score(self, names: Sequence[str]) -> float:
        """`class_score` with harm charged `DECISION_HARM_WEIGHT` times: what the guard and the per-class
        decision compare (readout.choose_guard), so that a few held-out cases must show clear gains."""
        return self.class_score(names, DECISION_HARM_WEIGHT)

    @property
    def newly_broken_share(self) -> float:
        """Of the (case, class) pairs whose topology was right before, the share that is wrong after."""
        return self.harm(list(self.after))["newly_broken_share"]

    def harm(self, names: Sequence[str]) -> Dict[str, float]:
        """`metrics.harm_and_repair` over the (case, class) pairs of these classes."""
        return harm_and_repair([(case["before"][n], case["after"][n]) for case in self.per_case for n in names])


Refined = Tuple[Union[np.ndarray, str], int]  # label map before the read-out's clean-up (or its .npy), steps


def refine_cases(refiner: RNCARefiner, cases: Sequence[TrainingCase], folder: Optional[str] = None) -> List[Refined]:
    """Label maps before the read-out's clean-up, and the steps used, of whole cases refined exactly as at
    prediction time; with `folder` the maps are saved there and given by path, so memory does not grow with
    the number of cases."""
    refined = []
    for case in cases:
        mask, steps = refiner.refine_context(np.concatenate([case.image, case.mask]), refiner.steps, True)
        segmentation = segmentation_from_mask(mask, refiner.semantics)
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            np.save(os.path.join(folder, case.name + ".npy"), segmentation)
            refined.append((os.path.join(folder, case.name + ".npy"), steps))
        else:
            refined.append((segmentation, steps))
    return refined


def validate(refiner: RNCARefiner, cases: Sequence[TrainingCase], iteration: int,
             refined: Optional[Sequence[Refined]] = None) -> ValidationResult:
    """Before/after metrics of whole held-out cases, one case in memory at a time; `refined` reuses label
    maps already computed by `refine_cases` (the read-out's clean-up is applied here)."""
    semantics, per_case = refiner.semantics, []
    for index, case in enumerate(cases):
        raw, steps = refined[index] if refined is not None else refine_cases(refiner, [case])[0]
        raw = np.load(raw) if isinstance(raw, str) else raw
        reference = segmentation_from_mask(case.target, semantics)
        ignored = np.asarray(case.valid) == 0  # the ignore label is scored nowhere, as in nnU-Net's evaluation
        entry = {"case": case.name, "steps": steps}
        base_probabilities = probabilities_from_mask(np.asarray(case.mask), semantics)
        before = segmentation_from_probabilities(base_probabilities, semantics)
        after = refiner.clean_segmentation(raw, before, base_confidence(base_probabilities, semantics))
        for key, segmentation in (("before", before), ("after", after)):
            entry[key] = case_metrics(np.where(ignored, 0, segmentation), reference, case.spacing, semantics.classes)
        per_case.append(entry)
    return ValidationResult(iteration, mean_metrics([c["before"] for c in per_case]),
                            mean_metrics([c["after"] for c in per_case]), per_case)


def summary_line(result: ValidationResult) -> str:
    parts = []
    for name in result.after:
        b, a = result.before[name], result.after[name]
        parts.append(f"{name}: Dice {b['dice']:.3f}->{a['dice']:.3f} beta0 err {b['beta0_error']:.2f}->"
                     f"{a['beta0_error']:.2f} beta1 err {b['beta1_error']:.2f}->{a['beta1_error']:.2f}")
    return "; ".join(parts)
