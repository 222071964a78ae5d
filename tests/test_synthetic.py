"""The generated cell membranes (the second domain the mesh_2d preset is benchmarked on) have what makes them
hard for nnU-Net: a dense network of loops, faint stretches of membrane, and dark organelles that are not
membrane."""
import cc3d
import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize

from rnca_nnunet.experiments.synthetic import GENERATORS, membrane_case_2d


def _membrane_cases(count: int = 6):
    rng = np.random.default_rng(7)
    return [membrane_case_2d(rng) for _ in range(count)]


def test_membranes_are_one_network_around_dozens_of_cells():
    for image, label in _membrane_cases():
        assert image.shape == label.shape == (128, 128) and image.dtype == np.float32
        assert 0.05 < label.mean() < 0.3
        cells = cc3d.connected_components((label == 0).astype(np.uint8), connectivity=4).max()
        pieces = cc3d.connected_components(label, connectivity=8).max()
        assert cells >= 15, f"only {cells} cells: not a loop network"
        assert pieces <= 2, f"the membranes fall apart into {pieces} pieces in the label itself"
        centre_line = skeletonize(label == 1)
        ends = centre_line & (ndimage.convolve(centre_line.astype(int), np.ones((3, 3), int), mode="constant") == 2)
        assert ends[4:-4, 4:-4].sum() <= 1, "membranes end inside the image: a cell with no inside is left"


def test_some_membrane_is_faint_and_some_dark_spots_are_not_membrane():
    faint_shares, dark_spot_shares = [], []
    for image, label in _membrane_cases():
        smooth = ndimage.gaussian_filter(image, 1.0)
        cytoplasm = np.median(smooth[label == 0])
        darkness = cytoplasm - smooth
        centre_line = skeletonize(label == 1)
        typical = np.median(darkness[centre_line])
        assert typical > 0, "membranes must be darker than the cytoplasm"
        faint_shares.append(np.mean(darkness[centre_line] < 0.4 * typical))
        far_from_membrane = ndimage.distance_transform_edt(label == 0) >= 3
        dark_spot_shares.append(np.mean(darkness[far_from_membrane] > 0.8 * typical))
    assert np.mean(faint_shares) > 0.07, f"faint membrane share {np.mean(faint_shares):.3f}"
    assert np.mean(dark_spot_shares) > 0.008, f"dark spots off the membrane {np.mean(dark_spot_shares):.4f}"


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_every_generator_is_repeatable_from_its_seed(kind):
    generate = GENERATORS[kind][0]
    (image_a, label_a), (image_b, label_b) = (generate(np.random.default_rng(3)) for _ in range(2))
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
