"""Post-processing baselines and the TopoMortar converter, on small hand-made data."""
import json
import os

import numpy as np
import pytest
from skimage import io

from rnca_nnunet.experiments.baselines import apply_to_folder, keep_largest_component, morphological_closing
from rnca_nnunet.metrics import betti_numbers
from rnca_nnunet.state import Normalisation
from rnca_nnunet.experiments.topomortar import convert, imperfect_label_cases


def bar_with_gap_and_speck() -> np.ndarray:
    segmentation = np.zeros((1, 32, 32), np.uint8)
    segmentation[0, 10:13, 2:14] = 1
    segmentation[0, 10:13, 16:30] = 1  # a two-pixel gap at x = 14, 15
    segmentation[0, 25, 5] = 1  # a speck
    return segmentation


def test_keep_largest_component_removes_the_speck_and_a_broken_half():
    result = keep_largest_component(bar_with_gap_and_speck(), [1])
    assert betti_numbers(result[0] == 1)[0] == 1
    assert result[0, 25, 5] == 0 and result[0, 11, 20] == 1 and result[0, 11, 5] == 0


def test_closing_bridges_the_gap_and_keeps_the_speck():
    result = morphological_closing(bar_with_gap_and_speck(), [1], radius=2)
    assert result[0, 11, 14] == 1 and result[0, 11, 15] == 1
    assert result[0, 25, 5] == 1
    assert betti_numbers(result[0] == 1)[0] == 2


def test_apply_to_folder_writes_every_case_with_the_readers_format(tmp_path):
    for name in ("a", "b"):
        io.imsave(str(tmp_path / f"{name}.png"), bar_with_gap_and_speck()[0], check_contrast=False)
    written = apply_to_folder(keep_largest_component, [1], str(tmp_path), str(tmp_path / "out"), ".png")
    assert len(written) == 2
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png"]
    assert io.imread(str(tmp_path / "out" / "a.png"))[25, 5] == 0


def fake_topomortar(root, rng):
    """The TopoMortar layout with tiny random images: dataset/{train,val}/{images,accurate,noisy,pseudo}."""
    for split, count in (("train", 3), ("val", 2)):
        for index in range(count):
            name = f"{split[0]}{index:02d}.png"
            folders = {kind: root / "dataset" / split / kind for kind in ("images", "accurate", "noisy", "pseudo")}
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            io.imsave(str(folders["images"] / name), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            label = np.zeros((16, 16), np.uint8)
            label[4:8, :] = 255
            io.imsave(str(folders["accurate"] / name), label, check_contrast=False)
            io.imsave(str(folders["noisy"] / name), np.roll(label, 2, 0), check_contrast=False)
            io.imsave(str(folders["pseudo"] / name), label[:, ::-1], check_contrast=False)


def test_topomortar_converter_writes_an_nnunet_dataset_with_imperfect_labels(tmp_path):
    fake_topomortar(tmp_path / "TopoMortar", np.random.default_rng(0))
    folder = convert(str(tmp_path / "TopoMortar"), str(tmp_path / "raw"), 950, downsample=2)
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["numTraining"] == 3 and dataset["file_ending"] == ".png" and len(dataset["channel_names"]) == 3
    assert len(os.listdir(os.path.join(folder, "imagesTr"))) == 3 and len(os.listdir(os.path.join(folder, "labelsTs"))) == 2
    label = io.imread(os.path.join(folder, "labelsTr", "topomortar_t00.png"))
    assert label.shape == (8, 8) and set(np.unique(label)) == {0, 1}
    cases = imperfect_label_cases(folder, "Ts", "noisy", Normalisation(["ZScoreNormalization"] * 3, {}))
    assert [c.name for c in cases] == ["topomortar_v00", "topomortar_v01"]
    case = cases[0]
    assert case.image.shape == (3, 1, 8, 8) and case.mask.shape == case.target.shape == (1, 1, 8, 8)
    assert not np.array_equal(case.mask, case.target)


def test_image_files_are_found_as_nnunet_finds_them(tmp_path):
    from rnca_nnunet.data import image_files
    from rnca_nnunet.errors import InputError

    for name in ("rgb_0000.png", "mr_0000.nii.gz", "mr_0001.nii.gz", "mr_10_0000.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert image_files(str(tmp_path), "rgb", ".png") == [str(tmp_path / "rgb_0000.png")]
    assert image_files(str(tmp_path), "mr", ".nii.gz") == [str(tmp_path / f"mr_000{c}.nii.gz") for c in (0, 1)]
    with pytest.raises(InputError, match="nope_0000.png not found"):
        image_files(str(tmp_path), "nope", ".png")
