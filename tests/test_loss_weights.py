"""The loss looks hardest at the cells that decide the topology, and only there."""
import numpy as np
from skimage.draw import disk

from rnca_nnunet.loss_weights import topology_focus, topology_lines


def ring(size=48, outer=16, inner=9):
    mask = np.zeros((size, size), bool)
    mask[disk((size // 2, size // 2), outer, shape=mask.shape)] = True
    mask[disk((size // 2, size // 2), inner, shape=mask.shape)] = False
    return mask


def focus_of(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    target = label[None].astype(np.float32)
    return topology_focus(prediction[None].astype(np.float32), target, topology_lines(target))[0]


def test_a_correct_mask_has_no_focus():
    assert not focus_of(ring(), ring()).any()


def test_specks_pinholes_and_breaks_are_in_focus_but_a_true_hole_is_not():
    label = ring()
    prediction = label.copy()
    prediction[2, 2] = True  # a speck far from the label
    prediction[24, 24 + 12] = False  # a pinhole in the ring wall
    prediction[:, 22:26] &= np.arange(48)[:, None] > 12  # a break across the top of the ring
    focus = focus_of(prediction, label)
    assert focus[2, 2] and focus[24, 36]
    assert focus[5:12, 22:26].any(), "the missing centreline of the break"
    assert not focus[24, 24], "the ring's own hole is right"
    assert not focus[40:, :].any(), "nothing where the mask is right"


def test_a_bridge_across_a_hole_and_a_filled_hole_are_in_focus():
    """Foreground joined to the label is neither a speck nor a missed centreline: only the holes' own
    centreline sees a bridge that splits a loop in two."""
    label = np.zeros((40, 64), bool)
    label[8:32, 8:56] = True
    label[12:28, 12:52] = False  # one long brick (a hole) in a mortar frame
    bridged = label.copy()
    bridged[12:28, 31:33] = True  # a 2-cell bridge across the brick: two loops instead of one
    focus = focus_of(bridged, label)
    assert focus[12:28, 31:33].any(), "the bridge crosses the brick's centreline"
    assert not focus[:, :28].any() and not focus[:, 36:].any(), "nothing where the mask is right"
    filled = label | (np.arange(64) < 40)[None, :] & (np.arange(40) >= 12)[:, None] & (np.arange(40) < 28)[:, None]
    assert focus_of(filled, label)[12:28, 12:40].any(), "a filled part of the brick is in focus"


def test_a_slot_through_a_wall_of_a_volume_is_in_focus():
    """A myocardium in 3D is a wall (a tube of rings): a gap through every slice is a topology error even where
    the volume's curve skeleton does not pass."""
    label = np.stack([ring()] * 10)
    prediction = label.copy()
    prediction[:, :14, 22:26] = False  # the same break in every slice: the tube becomes an open sheet
    focus = focus_of(prediction, label)
    assert all(focus[z, 8:13, 22:26].any() for z in range(10)), "the gap is in focus in every slice"
    assert not focus[:, 40:, :].any(), "nothing where the mask is right"
