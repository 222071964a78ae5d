"""Quality of the training recipe: held-out generated vessels whose base mask is fragmented.

The base masks are synthetic corruptions of the labels (breaks, specks, holes, thickness changes),
so the check takes minutes on a CPU. An identity refiner fails it: the rule alone must remove at least
half of the beta0 (component) errors without costing more than one Dice point, and the read-out's
clean-up (sizes chosen on the training's held-out cases) must not undo that.
"""
import numpy as np
import pytest

from conftest import (share_of_labels_changed_by_bfloat16, train_on_corrupted,
                      validate_shipped_rule_alone_and_clean_up_alone)
from rnca_nnunet.state import probabilities_from_mask

pytestmark = pytest.mark.slow  # trains a refiner for minutes

ITERATIONS = 600  # about 1.5 minutes on 2 CPU cores; held-out beta0 error fell 80% when calibrated


@pytest.fixture(scope="module")
def trained():
    return train_on_corrupted("vessels2d", "vessels_2d", ITERATIONS, 16, 4, 10)


def test_refiner_halves_beta0_errors_on_held_out_fragmented_vessels(trained):
    refiner, held_out = trained
    shipped, rule_alone, _ = validate_shipped_rule_alone_and_clean_up_alone(refiner, held_out, ITERATIONS)
    before, after, filtered = rule_alone.before["vessel"], rule_alone.after["vessel"], shipped.after["vessel"]
    assert before["beta0_error"] >= 5, "the base masks must be fragmented for the check to mean anything"
    assert after["beta0_error"] <= 0.5 * before["beta0_error"], (before, after)
    assert after["dice"] >= before["dice"] - 0.01, (before, after)
    assert filtered["beta0_error"] <= after["beta0_error"] and filtered["dice"] >= after["dice"] - 0.005, (after, filtered)


def test_reduced_precision_labels_match_float32(trained):
    refiner, held_out = trained
    assert share_of_labels_changed_by_bfloat16(refiner, held_out[:4]) <= 0.001



def test_uncertainty_ranks_broken_cases_above_clean_ones(trained):
    """The uncertainty map's promise: where the structure is in doubt (a broken base the rule must decide how to
    repair), stochastic rollouts disagree more than where it is not (the label itself as the base). An identity
    rule disagrees nowhere and fails; so would a map that does not follow the case. Only the cell score is held to
    it: the topology score ranked the broken bases above the clean ones on one machine (35% vs 21% of the runs)
    and below them on CI's (16% vs 23%), so it is reported, not promised."""
    refiner, held_out = trained
    scores = []
    for case in held_out:
        pair = []
        for mask in (case.target, case.mask):  # clean, then broken
            probabilities = probabilities_from_mask(np.clip(np.asarray(mask, np.float32), 0.02, 0.98),
                                                    refiner.semantics)
            _, segmentation, _ = refiner.refine(case.image, probabilities)
            pair.append(refiner.instability(case.image, probabilities, segmentation, refiner.steps).cells)
        scores.append(pair)
    scores = np.asarray(scores)  # (case, clean/broken)
    clean, broken = scores[:, 0], scores[:, 1]
    assert (broken > clean).sum() >= 0.7 * len(held_out), scores
    assert broken.mean() >= 2 * clean.mean() > 0, scores
