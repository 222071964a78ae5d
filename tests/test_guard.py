"""Do no harm: the guard undoes the rule's topology changes where the base was sure, with the fewest cells."""
import numpy as np

from rnca_nnunet.cleanup import CleanUp, keep_base_topology, loop_mismatches
from rnca_nnunet.metrics import betti_numbers
from test_cleanup import brick_wall


def test_the_guard_undoes_only_the_changes_the_base_was_sure_of():
    base = brick_wall(5, 3)  # 9 bricks
    confidence = np.full(base.shape, 0.99, np.float32)
    refined = base.copy()
    refined[0, 1:6, 6] = 0  # a sure joint cut: two bricks merged
    refined[0, 8:11, 18] = 0  # a border wall cut where the base was unsure
    confidence[0, 8:11, 18] = 0.55
    refined[0, 13:18, 3] = 1  # a sure brick split by a new wall
    kept = keep_base_topology(refined, base, True, confidence, 0.9)
    assert (kept[0, 1:6, 6] == 1).all(), "a sure joint comes back"
    assert (kept[0, 8:11, 18] == 0).all(), "an unsure one stays as the rule left it"
    assert (kept[0, 13:18, 3] == 0).sum() == 1, "the sure brick gets one gap in the rule's wall"
    assert betti_numbers(kept[0])[1] == betti_numbers(base[0])[1] - 1
    assert loop_mismatches(keep_base_topology(refined, base, True, confidence, 0.5), base, True) == 0, \
        "at 0.5 every change is undone"
    assert (CleanUp(guard=0.999)(refined, True, base, confidence) == refined).all(), "none sure enough: no change"


def test_the_guard_gives_back_sure_components_and_drops_unsure_new_ones():
    base = np.zeros((1, 30, 30), np.uint8)
    base[0, 5:10, 5:10] = 1  # a small, sure component the rule deletes
    base[0, 5:10, 20:25] = 1  # a doubtful one the rule deletes
    base[0, 20:28, 2:28] = 1  # a bar the rule cuts in two
    confidence = np.full(base.shape, 0.98, np.float32)
    confidence[0, 5:10, 20:25] = 0.6
    refined = base.copy()
    refined[0, 5:10, 5:10] = refined[0, 5:10, 20:25] = 0
    refined[0, 20:28, 14] = 0
    refined[0, 14, 14] = 1  # a new speck where the base was sure of background
    kept = keep_base_topology(refined, base, True, confidence, 0.9)
    assert (kept[0, 5:10, 5:10] == 1).all() and (kept[0, 5:10, 20:25] == 0).all()
    assert (kept[0, 20:28, 14] == 1).sum() == 1, "the cut bar is joined by one cell, the rule's cut stays"
    assert kept[0, 14, 14] == 0
    assert betti_numbers(kept[0])[0] == 2


def test_a_join_of_two_sure_components_is_cut_where_the_added_cells_meet_and_thickening_stays():
    base = np.zeros((1, 20, 40), np.uint8)
    base[0, 8:12, 2:15] = base[0, 8:12, 25:38] = 1  # two bars with a gap
    refined = base.copy()
    refined[0, 7:13, 1:39] = 1  # the gap bridged and both bars thickened by a cell
    kept = keep_base_topology(refined, base, True, np.ones(base.shape, np.float32), 0.9)
    assert betti_numbers(kept[0])[0] == 2
    assert (kept[0, 7, 2:15] == 1).all() and (kept[0, 12, 25:38] == 1).all(), "the thickening stays"
    assert ((kept[0, 7:13, 15:25] == 0).sum(axis=1) == 2).all(), "a two-cell cut where the added cells meet"
