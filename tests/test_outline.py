"""Do no harm to outlines: where the rule's change is no topology change, nnU-Net's outline comes back, and
the outline guard is chosen on held-out cases so that a base with right outlines keeps them without a flag."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.metrics import betti_numbers, dice
from rnca_nnunet.outline import keep_base_outline
from rnca_nnunet.readout import choose_guard
from test_cleanup import brick_wall
from test_refiner import random_refiner


def two_bars():
    base = np.zeros((1, 20, 40), np.uint8)
    base[0, 8:12, 2:15] = base[0, 8:12, 25:38] = 1  # two bars with a gap
    return base


def test_moved_outlines_go_back_and_the_repair_stays():
    base = two_bars()
    refined = base.copy()
    refined[0, 9:11, 15:25] = 1  # the gap bridged: a topology change
    refined[0, 8, 2:10] = 0  # one bar thinned
    refined[0, 12, 28:38] = 1  # the other thickened
    kept = keep_base_outline(refined, base, True)
    assert betti_numbers(kept[0]) == betti_numbers(refined[0]) == (1, 0)
    assert (kept[0, 9:11, 15:25] == 1).all(), "the bridge stays"
    assert (kept[0, 8, 2:10] == 1).all() and (kept[0, 12, 28:38] == 0).all(), "both outlines go back"


def test_only_outlines_the_base_was_sure_of_go_back():
    base = two_bars()
    refined = base.copy()
    refined[0, 8, 2:10] = 0
    refined[0, 12, 28:38] = 1
    confidence = np.full(base.shape, 0.95, np.float32)
    confidence[0, 12, 28:38] = 0.55  # nnU-Net doubted the cells the rule added
    kept = keep_base_outline(refined, base, True, confidence, 0.9)
    assert (kept[0, 8, 2:10] == 1).all() and (kept[0, 12, 28:38] == 1).all()
    assert (CleanUp(outline_guard=0.0)(refined, True, base, confidence) == base).all()


def test_a_filled_hole_and_a_cut_handle_are_topology_and_stay():
    base = np.zeros((1, 20, 20), np.uint8)
    base[0, 4:16, 4:16] = 1
    base[0, 8:12, 8:12] = 0  # a square ring
    filled = base.copy()
    filled[0, 8:12, 8:12] = 1
    assert (keep_base_outline(filled, base, True) == filled).all(), "undoing the fill would reopen the hole"
    ring = np.zeros((5, 20, 20), np.uint8)
    ring[2] = base[0]
    ring[2, 4:8, 9:11] = 0  # a gap: in the volume the ring is a handle, broken here
    closed = ring.copy()
    closed[2, 4:8, 9:11] = 1  # the rule closes it: one component and one background either way
    assert betti_numbers(closed)[1] == betti_numbers(ring)[1] + 1
    assert (keep_base_outline(closed, ring, False) == closed).all(), "only the Euler number shows the handle"
    thicker = closed.copy()
    thicker[3, 4:16, 4:6] = 1  # and thickens the ring in the next slice
    assert (keep_base_outline(thicker, ring, False) == closed).all()


def test_labels_are_kept_each_and_together():
    base = np.zeros((1, 20, 30), np.uint8)
    base[0, 5:15, 3:15], base[0, 5:15, 15:27] = 1, 2  # two touching classes
    moved = base.copy()
    moved[0, 5:15, 14] = 2  # their interface moved by a cell
    assert (keep_base_outline(moved, base, True) == base).all()
    split = base.copy()
    split[0, 5:15, 8] = 2  # label 1 cut in two by label 2: the union's topology is the same, label 1's is not
    assert (keep_base_outline(split, base, True) == split).all()


@pytest.mark.parametrize("value", ["yes", 1.5, -0.1, True])
def test_an_impossible_outline_guard_in_rnca_json_is_refused(value):
    with pytest.raises(TypeError, match="outline_guard"):
        CleanUp.from_config({"outline_guard": value})


def bright_filling_refiner():
    """A hand-set rule: foreground grows into bright cells next to it. A bright gap in a wall is a repair, bright
    cells beside a sound wall an outline move that nnU-Net had right."""
    refiner = random_refiner(2)
    model, width = refiner.model, refiner.model.update_in.in_channels // 2
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.context.weight[0, 0, 1, 1] = 1.0  # a context feature: the (normalised) image at the cell
        model.update_in.weight[0, width] = 1.0
        model.update_in.bias[0] = -1.0  # fires where the image is bright
        model.update_out.weight[0, 0] = 1.0  # and grows the first class there
    return refiner.replace(steps=8)


def walls_with_bright_gaps(count: int, seed: int):
    """Brick walls whose base has a two-cell gap in one wall (two bricks merged), bright in the image, and three
    bright 3x3 patches beside sound walls."""
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        label = brick_wall(6, 4)  # walls at rows and columns 0, 7, 14, 21, 28
        base, image = label.copy(), np.zeros(label.shape, np.float32)
        y, x = int(rng.integers(2, 5)), (7, 14, 21)[index % 3]
        base[0, y:y + 2, x] = 0
        image[0, y:y + 2, x] = 1.0
        for row in rng.choice([15, 22], 3):
            column = int(rng.choice([8, 15, 22]))
            image[0, row:row + 3, column:column + 3] = 1.0  # touching the wall to its left
        as_mask = lambda m: np.stack([m == 1, np.zeros_like(m, bool)]).astype(np.float32)  # noqa: E731
        image = (image - image.mean()) / image.std()  # z-scored, as a training case's image is (and stays)
        cases.append(TrainingCase(f"wall{index}", image[None], as_mask(base), as_mask(label),
                                  np.ones(label.shape, np.float32), (1.0, 1.0, 1.0)))
    return cases


def test_a_rule_that_moves_right_outlines_gives_them_back_by_default():
    """Chosen on held-out walls, the read-out keeps the rule's repairs and gives the walls it thickened back to
    the base on new walls: topology repaired at more than the base's Dice. Without the outline guard the same
    read-out writes the thickened walls, so this fails without it."""
    refiner, _ = choose_guard(bright_filling_refiner(), walls_with_bright_gaps(4, seed=1), log=lambda line: None)
    assert refiner.clean_up.outline_guard is not None and 1 not in refiner.clean_up.unrefined_labels
    without = refiner.replace(clean_up=replace(refiner.clean_up, outline_guard=None))
    scores = []
    for case in walls_with_bright_gaps(5, seed=2):
        probabilities = np.concatenate([1 - case.mask.sum(0, keepdims=True), case.mask])
        base, label = probabilities.argmax(0), case.target[0] > 0.5
        kept, moved = (r.refine(case.image, probabilities)[1] for r in (refiner, without))
        assert betti_numbers(kept[0] == 1) == betti_numbers(moved[0] == 1) == betti_numbers(label[0]), case.name
        assert betti_numbers(base[0] == 1) != betti_numbers(label[0])
        scores.append([dice(m[0] == 1, label[0]) for m in (base, kept, moved)])
    base_dice, kept_dice, moved_dice = np.mean(scores, axis=0)
    assert kept_dice > base_dice > moved_dice + 0.01
