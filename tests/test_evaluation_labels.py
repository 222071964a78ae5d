"""Evaluation takes its classes from dataset.json and honours the ignore label, as nnU-Net's own evaluation does."""
import json

import numpy as np
import pytest
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from rnca_nnunet.errors import InputError
from rnca_nnunet.evaluate import evaluate_folders

LABELS = {"background": 0, "vessel": 1, "ignore": 2}


def write(folder, name, array):
    folder.mkdir(exist_ok=True)
    SimpleITKIO().write_seg(array.astype(np.uint8)[None], str(folder / f"{name}.nii.gz"),
                            {"sitk_stuff": {"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": (1, 0, 0, 1)},
                             "spacing": (999.0, 1.0, 1.0)})


@pytest.fixture
def folders(tmp_path):
    reference, prediction = np.zeros((16, 16)), np.zeros((16, 16))
    prediction[4:8, 4:8] = 1  # the reference is empty: every predicted cell is a false positive
    write(tmp_path / "ref", "a", reference)
    write(tmp_path / "pred", "a", prediction)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    return tmp_path


def test_false_positives_of_an_absent_class_are_reported(folders):
    with_json = evaluate_folders(str(folders / "ref"), {"base": str(folders / "pred")}, 1,
                                 dataset_json_file=str(folders / "meta" / "dataset.json"))
    assert with_json["mean"]["base"]["vessel"]["dice"] == 0.0
    assert with_json["mean"]["base"]["vessel"]["beta0_error"] == 1
    without_json = evaluate_folders(str(folders / "ref"), {"base": str(folders / "pred")}, 1)
    assert without_json["mean"]["base"]["label_1"]["dice"] == 0.0


def test_a_label_outside_dataset_json_is_an_error(folders):
    prediction = np.zeros((16, 16))
    prediction[2, 2] = 5
    write(folders / "pred", "a", prediction)
    with pytest.raises(InputError, match=r"a.nii.gz: label values \[5\] are not in dataset.json"):
        evaluate_folders(str(folders / "ref"), {"base": str(folders / "pred")}, 1,
                         dataset_json_file=str(folders / "meta" / "dataset.json"))


def test_the_ignore_label_is_scored_nowhere(folders):
    reference, prediction = np.zeros((16, 16)), np.zeros((16, 16))
    reference[2:6, 2:6] = prediction[2:6, 2:6] = 1
    reference[10:14, 10:14] = 2  # ignore: whatever is predicted there does not count
    prediction[11:13, 11:13] = 1
    write(folders / "ref", "a", reference)
    write(folders / "pred", "a", prediction)
    summary = evaluate_folders(str(folders / "ref"), {"base": str(folders / "pred")}, 1,
                               dataset_json_file=str(folders / "meta" / "dataset.json"))
    assert list(summary["mean"]["base"]) == ["vessel"]
    assert summary["mean"]["base"]["vessel"]["dice"] == 1.0 and summary["mean"]["base"]["vessel"]["beta0_error"] == 0


def test_training_validation_scores_nothing_under_the_ignore_label():
    import torch

    from rnca_nnunet.data import TrainingCase
    from rnca_nnunet.validation import validate

    from test_refiner import random_refiner

    refiner = random_refiner(2)
    torch.nn.init.zeros_(refiner.model.update_out.weight)  # the rule keeps the base mask
    target, mask, valid = np.zeros((2, 1, 16, 16), np.float32), np.zeros((2, 1, 16, 16), np.float32), np.ones((1, 16, 16), np.float32)
    target[0, 0, 2:6, 2:6] = mask[0, 0, 2:6, 2:6] = 1
    valid[0, 10:14, 10:14] = 0  # ignore label there
    mask[1, 0, 11:13, 11:13] = 1  # a MYO speck the label cannot judge
    case = TrainingCase("a", np.zeros((1, 1, 16, 16), np.float32), mask, target, valid, (1.0, 1.0, 1.0))
    result = validate(refiner, [case], 0)
    assert result.before["MYO"]["beta0_error"] == 0 and result.before["MYO"]["dice"] == 1.0
    assert result.after["LV"]["dice"] == 1.0


def test_uncertainty_beside_a_refined_case_is_scored_and_a_damaged_one_is_one_line(folders, tmp_path):
    refined = np.zeros((16, 16))
    refined[4:8, 4:9] = 1
    write(folders / "refined", "a", refined)
    path = folders / "refined" / "a_uncertainty.npz"
    np.savez_compressed(path, uncertainty=np.full((1, 16, 16), 0.25, np.float16), cells=np.float64(0.3),
                        topology=np.float64(0.5))
    both = {"base": str(folders / "pred"), "refined": str(folders / "refined")}
    evaluation = evaluate_folders(str(folders / "ref"), both, 1, png_folder=str(tmp_path / "png"),
                                  dataset_json_file=str(folders / "meta" / "dataset.json"))
    case = evaluation["per_case"][0]
    assert case["uncertainty"] == {"cells": 0.3, "topology": 0.5}
    assert case["changed_cells"]["vessel"] == 4  # one column of 4 cells added
    assert case["rewritten"] == pytest.approx(4 / 20), "the fall-back's score: 4 of the 20 structure cells changed"
    assert (tmp_path / "png" / "a_uncertainty.png").stat().st_size > 0
    np.savez_compressed(path, uncertainty=np.zeros((1, 8, 8), np.float16), cells=0.0, topology=0.0)
    with pytest.raises(InputError, match=r"a_uncertainty.npz: its map \(1, 8, 8\) does not fit the reference"):
        evaluate_folders(str(folders / "ref"), both, 1)
    np.savez_compressed(path, uncertainty=np.full((1, 16, 16), np.nan, np.float16), cells=0.0, topology=0.0)
    with pytest.raises(InputError, match=r"a_uncertainty.npz: holds values outside 0..1 or not finite"):
        evaluate_folders(str(folders / "ref"), both, 1)
    np.savez_compressed(path, uncertainty=np.zeros((1, 16, 16), np.float16), cells=-3.0, topology=0.0)
    with pytest.raises(InputError, match=r"a_uncertainty.npz: holds values outside 0..1"):
        evaluate_folders(str(folders / "ref"), both, 1)
    path.write_bytes(b"not an archive")
    with pytest.raises(InputError, match=r"a_uncertainty.npz: not an uncertainty file of nnUNetv2_predict_rnca"):
        evaluate_folders(str(folders / "ref"), both, 1)
