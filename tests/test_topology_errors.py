"""Each topology error of a mesh gets its cause: a break merges two loops, a bridge splits one, and so on."""
import numpy as np

from rnca_nnunet.metrics import betti_numbers
from rnca_nnunet.experiments.topology_errors import loop_and_piece_errors


def brick_wall() -> np.ndarray:
    """Mortar (True) around a 3 x 3 grid of 10 x 10 bricks: nine loops, one piece."""
    wall = np.ones((40, 40), bool)
    for row in range(3):
        for column in range(3):
            wall[3 + 12 * row: 13 + 12 * row, 3 + 12 * column: 13 + 12 * column] = False
    return wall


def test_a_correct_mask_has_no_errors():
    counts = loop_and_piece_errors(brick_wall(), brick_wall())
    assert counts["label_holes"] == counts["predicted_holes"] == 9
    assert sum(v for k, v in counts.items() if k not in ("label_holes", "predicted_holes")) == 0


def test_every_kind_of_error_is_named_and_the_counts_add_up_to_the_betti_error():
    label = brick_wall()
    prediction = label.copy()
    prediction[3:13, 13:15] = False  # break the mortar between the first two bricks: two loops become one
    prediction[27:37, 27:37] = True  # fill the last brick
    prediction[27:37, 7] = True  # a bridge splits the brick below-left into two loops
    prediction[0, 30] = False  # a notch in the mortar at the image border: no loop
    prediction[1, 20] = False  # a pinhole inside the mortar: a spurious loop
    prediction[20, 20] = True  # a speck in the middle brick
    counts = loop_and_piece_errors(prediction, label)
    assert counts["merged_loops_lost"] == 1 and counts["break_mortar_cells_median"] == 20
    assert counts["filled_holes"] == 1 and counts["filled_small_holes"] == 0
    assert counts["split_loops_added"] == 1
    assert counts["spurious_holes"] == counts["spurious_pinholes"] == 1
    assert counts["specks"] == 1 and counts["fragments_added"] == 0
    beta1_error = betti_numbers(prediction)[1] - betti_numbers(label)[1]
    assert beta1_error == (counts["spurious_holes"] + counts["split_loops_added"] - counts["filled_holes"]
                           - counts["merged_loops_lost"])
