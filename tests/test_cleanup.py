"""The read-out's clean-up: specks go, pinholes close, true structure stays."""
import numpy as np
from skimage.draw import disk

from rnca_nnunet.cleanup import fill_small_holes, remove_small_components
from rnca_nnunet.metrics import betti_numbers


def ring_slices(depth=3, size=40):
    """(Z, Y, X): MYO ring (2) around an LV (1) with a small background hole, per slice."""
    out = np.zeros((depth, size, size), np.uint8)
    out[:, disk((20, 20), 15, shape=(size, size))[0], disk((20, 20), 15, shape=(size, size))[1]] = 2
    out[:, disk((20, 20), 9, shape=(size, size))[0], disk((20, 20), 9, shape=(size, size))[1]] = 1
    out[:, 20, 20] = 0  # a one-cell hole in the LV of every slice
    return out


def test_speck_removal_keeps_large_parts_and_other_labels():
    segmentation = np.zeros((1, 32, 32), np.uint8)
    segmentation[0, 10:13, 2:14] = segmentation[0, 10:13, 16:30] = 1  # two halves of a broken bar
    segmentation[0, 25, 5] = 1  # a speck
    segmentation[0, 2, 2] = 2  # a one-cell component of a label that is not filtered
    result = remove_small_components(segmentation, [1], min_size=4)
    assert result[0, 25, 5] == 0 and result[0, 2, 2] == 2
    assert betti_numbers(result[0] == 1)[0] == 2 and (result == 1).sum() == (segmentation == 1).sum() - 1


def test_pinholes_are_filled_with_the_surrounding_label_but_big_and_open_background_is_kept():
    segmentation = ring_slices()
    segmentation[1, 32, 20] = 0  # a pinhole in the MYO wall of slice 1
    segmentation[:, 0:3, 0:3] = 0
    filled = fill_small_holes(segmentation, min_size=4, per_slice=True)
    assert (filled[:, 20, 20] == 1).all() and filled[1, 32, 20] == 2
    assert (filled[:, 0, 0] == 0).all() and (filled == 0).sum() == (segmentation == 0).sum() - 4
    assert betti_numbers(filled[1] == 2)[1] == 1, "the ring's own hole, filled by the LV, stays"
    assert (fill_small_holes(segmentation, min_size=1, per_slice=True) == segmentation).all()


def test_holes_of_a_volume_are_cavities_unless_taken_per_slice():
    segmentation = ring_slices(depth=5)
    segmentation[0] = segmentation[-1] = 0  # the LV hole runs through the volume's slices: a tunnel in 3D
    segmentation[2, 20, 20] = 1  # ... closed in the middle slice
    as_volume = fill_small_holes(segmentation, min_size=4, per_slice=False)
    assert as_volume[1, 20, 20] == 0, "a tunnel to the outside is not a hole of the volume"
    assert fill_small_holes(segmentation, min_size=4, per_slice=True)[1, 20, 20] == 1
