"""Pictures: overlays show the slice that changed and colour fixed and broken cells apart."""
import numpy as np
from PIL import Image

from rnca_nnunet.pictures import BAD, GOOD, representative_slice, write_evolution, write_overlay


def volumes():
    label = np.zeros((4, 20, 20), np.uint8)
    label[:, 5:15, 8:12] = 1
    base = label.copy()
    base[2, 9:11, 8:12] = 0  # a break in slice 2 ...
    base[2, 1, 1] = 1  # ... and a speck
    refined = label.copy()
    refined[2, 18, 18] = 1  # the refinement repairs both but adds a wrong cell
    return label, base, refined


def colour_count(picture: np.ndarray, colour: np.ndarray) -> int:
    return int((picture == colour.astype(np.uint8)).all(-1).sum())


def test_overlay_shows_the_changed_slice_with_fixed_and_broken_cells(tmp_path):
    label, base, refined = volumes()
    assert representative_slice(base, refined) == 2
    image = np.random.default_rng(0).normal(size=label.shape).astype(np.float32)
    path = write_overlay(str(tmp_path / "case.png"), image, base, refined, label)
    picture = np.asarray(Image.open(path).convert("RGB"))
    scale = 256 // 20 + 1
    assert picture.shape[1] == 3 * 20 * scale + 2 * 4, "three panels: label, base, refined"
    refined_panel = picture[16:, -20 * scale:]
    assert colour_count(refined_panel, GOOD) == 9 * scale ** 2, "8 gap cells and the removed speck are fixed"
    assert colour_count(refined_panel, BAD) == 1 * scale ** 2, "one wrong new cell"
    assert colour_count(picture[:, : 20 * scale], GOOD) == 0


def test_overlay_without_label_or_refinement_has_fewer_panels(tmp_path):
    _, base, refined = volumes()
    two = np.asarray(Image.open(write_overlay(str(tmp_path / "a.png"), None, base, refined)).convert("RGB"))
    one = np.asarray(Image.open(write_overlay(str(tmp_path / "b.png"), None, base)).convert("RGB"))
    assert two.shape[1] > one.shape[1] and colour_count(one, GOOD) == 0
    assert colour_count(two, GOOD) > 0 and colour_count(two, BAD) > 0, "added and removed cells are marked"


def test_evolution_gif_has_a_frame_per_step_and_the_written_mask(tmp_path):
    label, base, refined = volumes()
    frames = [base[2], refined[2], refined[2]]
    path = write_evolution(str(tmp_path / "case.gif"), None, frames, final=label[2])
    gif = Image.open(path)
    assert gif.n_frames == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.gif"], "no partial files left behind"
