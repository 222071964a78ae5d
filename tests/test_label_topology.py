"""Keep what every training label agrees on: changes that move a class away from the Betti numbers all its
training labels share go back to nnU-Net, however unsure it was, and repairs toward them stay."""
from pathlib import Path

import cc3d
import numpy as np
import pytest
import torch

from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.label_topology import shared_betti, toward_shared_betti
from rnca_nnunet.metrics import betti_numbers
from rnca_nnunet.readout import choose_guard, choose_read_out
from rnca_nnunet.state import LabelSemantics, segmentation_from_mask
from test_guard import near_correct_cases
from test_refiner import random_refiner

CLASSES = {"LV": [1], "MYO": [2]}


def heart(gap: bool = False) -> np.ndarray:
    """A (Z, Y, X) heart: a solid LV block (label 1) inside a square MYO ring (label 2) five slices thick,
    the ring cut through when `gap`."""
    volume = np.zeros((7, 24, 24), np.uint8)
    volume[1:6, 4:20, 4:20] = 2
    volume[1:6, 8:16, 8:16] = 1
    if gap:
        volume[1:6, 4:8, 11:13] = 0
    return volume


def test_the_betti_numbers_every_label_shares_and_none_that_vary():
    other = heart()
    other[1:6, 9:11, 9:11] = 0  # a tunnel through LV: its beta1 varies, its beta0 and beta2 do not
    assert shared_betti([heart(), other], CLASSES, per_slice=False) == (((1,), (1, None, 0)), ((2,), (1, 1, 0)))
    # slice by slice, slices 0 and 6 are empty: beta0 varies, and MYO's ring has no hole there
    assert shared_betti([heart()], CLASSES, per_slice=True) == (((1,), (None, 0)),)


def test_changes_away_from_the_shared_topology_go_back_and_repairs_toward_it_stay():
    """nnU-Net cut the ring; the rule closes it (toward MYO's (1, 1, 0)), and, all where nnU-Net was unsure,
    also bores a tunnel through LV and lays a MYO bar across the ring's hole, through LV (away from both)."""
    base = heart(gap=True)
    shared = shared_betti([heart()], CLASSES, per_slice=False)
    refined = heart()
    refined[1:6, 10:12, 10:12] = 0  # the tunnel through LV
    refined[3, 8:16, 14] = 2  # the bar: one more MYO handle, and LV wraps around it
    confidence = np.full(base.shape, 0.5, np.float32)
    assert betti_numbers(refined == 2) == (1, 2, 0) and betti_numbers(refined == 1)[1] == 2
    kept = toward_shared_betti(refined, base, confidence, shared, per_slice=False)
    assert betti_numbers(kept == 1) == (1, 0, 0) and betti_numbers(kept == 2) == (1, 1, 0)
    assert (kept[1:6, 4:8, 11:13] == 2).all(), "the ring's repair stays"
    assert (CleanUp(label_topology=shared, keep_label_topology=True)(refined, False, base, confidence) == kept).all()
    assert (CleanUp(label_topology=shared)(refined, False, base, confidence) == refined).all(), "off: no change"
    assert (toward_shared_betti(heart(), base, confidence, shared, False) == heart()).all(), "a repair alone stays"


def test_a_change_no_single_kind_of_piece_can_undo_goes_back_whole():
    """cardiac3d test volume ts_010 (the fresh draw of 2026-12-07, seed 0, the labels bounding box): the rule
    closed nnU-Net's cut MYO ring, and with it laid a MYO bar through LV (a tunnel) that walls off a MYO cavity.
    Given back alone, the bar (LV -> MYO cells) trades LV's tunnel for two MYO handles and the cells beside it
    (background -> MYO) trade the cavity for a handle: only the whole change, both kinds together, lowers the
    summed distance (LV intact again, MYO back to nnU-Net's cut ring, as far from its numbers as the rule's)."""
    data = np.load(Path(__file__).parent / "data" / "cardiac3d_bar_and_cavity.npz")
    refined, base = data["refined"], data["base"]
    shared = (((1,), (1, 0, 0)), ((2,), (1, 1, 0)), ((3,), (1, 0, 0)))

    def distance(volume: np.ndarray) -> int:
        return sum(abs(a - b) for (labels, wanted) in shared
                   for a, b in zip(betti_numbers(np.isin(volume, labels)), wanted))

    assert [betti_numbers(refined == v) for v in (1, 2, 3)] == [(1, 1, 0), (1, 1, 1), (1, 0, 0)]
    kinds = np.where(refined != base, base.astype(np.int64) * 4 + refined + 1, 0)
    pieces = cc3d.connected_components(kinds, connectivity=26)
    singles = [distance(np.where(pieces == index, base, refined)) for index in range(1, pieces.max() + 1)]
    assert min(singles) == distance(refined) == 2, "no piece of one kind of change lowers the distance alone"
    kept = toward_shared_betti(refined, base, None, shared, per_slice=False)
    assert [betti_numbers(kept == v) for v in (1, 2, 3)] == [(1, 0, 0), (1, 0, 0), (1, 0, 0)]
    assert distance(kept) == 1 and ((kept != refined) <= (kept == base)).all(), "only the base's labels come back"


@pytest.mark.parametrize("value", [[[[2], [1, 1, 0, 0]]], [[[0], [1, 0]]], [[[2], [1, -1, 0]]], [[[2], [1, 1.5]]],
                                   [[[], [1, 0]]], "x"])
def test_an_impossible_label_topology_in_rnca_json_is_refused(value):
    with pytest.raises(TypeError, match="label_topology"):
        CleanUp.from_config({"label_topology": value})


def test_the_read_out_keeps_the_labels_topology_unless_held_out_cases_score_it_worse():
    """Ties go to the safer choice: held-out walls the rule leaves as they are turn it on."""
    refiner = random_refiner(2)
    with torch.no_grad():
        for parameter in refiner.model.parameters():
            parameter.zero_()
    cases = near_correct_cases(4, seed=1)
    shared = shared_betti([segmentation_from_mask(case.target, refiner.semantics) for case in cases],
                          refiner.semantics.classes, per_slice=True)
    assert shared[0] == ((1,), (1, 16)), "one wall of 16 bricks each"
    refiner = refiner.replace(steps=4, clean_up=CleanUp(label_topology=shared))
    refiner, _ = choose_guard(refiner, cases, log=lambda line: None)
    assert refiner.clean_up.keep_label_topology


def test_partial_labels_say_nothing_about_the_topology():
    """With an ignore label the labels are partial annotation: their Betti numbers are not the anatomy's, so the
    read-out notes none, where the same walls fully labelled share theirs."""
    refiner = random_refiner(2).replace(steps=2)
    cases = near_correct_cases(2, seed=1)
    assert choose_read_out(refiner, cases, log=lambda line: None).clean_up.label_topology
    partial = refiner.replace(semantics=LabelSemantics({"background": 0, "LV": 1, "MYO": 2, "ignore": 3}))
    assert choose_read_out(partial, cases, log=lambda line: None).clean_up.label_topology == ()
