"""Quality of the 3D recipe (default_3d): held-out generated cardiac volumes whose myocardium is broken.

The base masks are synthetic corruptions of the labels (cuts through the wall, specks, holes, thickness
changes), so a real 3D rule trains on a CPU in a few minutes. The rule alone (no read-out clean-up) must
halve the myocardium's loop errors without costing a Dice point, which an identity refiner cannot; the
shipped refiner must halve the broken walls and repair more of them than its clean-up alone does.
"""
import pytest

from conftest import (share_of_labels_changed_by_bfloat16, train_on_corrupted,
                      validate_shipped_rule_alone_and_clean_up_alone)

pytestmark = pytest.mark.slow  # trains a refiner for minutes

ITERATIONS = 300  # about 2 minutes on 2 CPU cores


@pytest.fixture(scope="module")
def trained():
    # 8 cases choose the checkpoint, the guard and the classes to refine: with 4 (3 of them intact) the one wall
    # the rule broke outweighed the one it repaired and the search left the myocardium unrefined
    return train_on_corrupted("cardiac3d", "default_3d", ITERATIONS, 12, 8, 10)


def test_reduced_precision_labels_match_float32(trained):
    refiner, held_out = trained
    assert share_of_labels_changed_by_bfloat16(refiner, held_out[:4]) <= 0.001


def test_3d_rule_repairs_broken_myocardium_walls_of_held_out_volumes(trained):
    refiner, held_out = trained
    shipped, rule_alone, clean_up_alone = validate_shipped_rule_alone_and_clean_up_alone(refiner, held_out,
                                                                                         ITERATIONS)
    before, alone, after = rule_alone.before["MYO"], rule_alone.after["MYO"], shipped.after["MYO"]
    assert before["broken"] >= 0.5 and before["beta1_error"] >= 0.5, "the base walls must be broken"
    assert alone["beta1_error"] <= 0.5 * before["beta1_error"], (before, alone)
    assert alone["dice"] >= before["dice"] - 0.01, (before, alone)
    assert after["broken"] <= 0.5 * before["broken"], (before, after)
    assert after["broken"] < clean_up_alone.after["MYO"]["broken"], (after, clean_up_alone.after["MYO"])
