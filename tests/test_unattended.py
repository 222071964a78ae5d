"""Unattended runs on real nnU-Net output: multi-process prediction, nnU-Net's own argument parsing,
one-line errors with exit code 2, no code run from data files, and a good refiner never replaced by a bad one."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from rnca_nnunet.data import find_cv_predictions, partial_cv_note, read_model_folder
from rnca_nnunet.errors import InputError

from conftest import TEST_TRAINER, NnunetModel
from rnca_nnunet.refiner_folder import read_refiner


def files_of(folder) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name.endswith((".nii.gz", ".pkl"))}


def test_parts_running_at_once_write_what_one_run_writes(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    model.run("nnUNetv2_predict_rnca", *model.predict_args(images, str(tmp_path / "one"), ["0"]), "--refiner", "rnca",
              "--save_probabilities")
    parts = []
    for part in ("0", "1"):
        args = model.predict_args(images, "unused", ["0"], processes=1)  # nnU-Net ignores parts without pools
        args[args.index("-o"):args.index("-o") + 2] = [f"-o{tmp_path / 'parts'}"]  # attached value, as argparse allows
        parts.append(subprocess.Popen(["nnUNetv2_predict_rnca", *args, "-num_parts", "2", "-part_id", part,
                                       "--refiner", "rnca", "--save_prob"],  # an abbreviation nnU-Net accepts
                                      env=model.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in parts:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    one, both = files_of(tmp_path / "one"), files_of(tmp_path / "parts")
    assert len(one) == 6 and one.keys() == both.keys()
    for name in one:
        if name.endswith(".nii.gz"):
            assert one[name] == both[name], name
    for case in ("vessels2d_ts_000", "vessels2d_ts_001"):
        np.testing.assert_array_equal(np.load(tmp_path / "one" / f"{case}.npz")["probabilities"],
                                      np.load(tmp_path / "parts" / f"{case}.npz")["probabilities"])
    assert not [n for n in os.listdir(tmp_path / "parts") if n.startswith(".")], "no staging, nothing partial"


def test_python_api_refines_what_nnunet_predicts(trained_vessel_refiner, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from rnca_nnunet.predictor import RNCAPredictor

    monkeypatch.setenv("nnUNet_extTrainer", trained_vessel_refiner.env["nnUNet_extTrainer"])
    image, properties = SimpleITKIO().read_images(
        [os.path.join(trained_vessel_refiner.raw_dataset, "imagesTs", "vessels2d_ts_001_0000.nii.gz")])
    plain = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    plain.initialize_from_trained_model_folder(trained_vessel_refiner.model_folder, (0,))
    _, probabilities = plain.predict_single_npy_array(image, properties, None, None, True)
    refining = RNCAPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    refining.initialize_from_trained_model_folder(trained_vessel_refiner.model_folder, (0,))
    segmentation = refining.predict_single_npy_array(image, properties)
    _, expected, _ = refining.refiner.refine(image, probabilities)
    np.testing.assert_array_equal(segmentation, expected)


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """Exit 2 and a last line naming the problem; no traceback of ours (one of nnU-Net's preprocessing
    worker processes may print its own before dying: the line below it names the file it could not read)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr[-2000:]
    ours = [block for block in result.stderr.split("Traceback")[1:] if "multiprocessing/process.py" not in block]
    assert not ours, result.stderr[-2000:]


def test_prediction_errors_name_the_file_or_flag(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    empty, broken, two_channels = (tmp_path / name for name in ("empty", "broken", "two_channels"))
    empty.mkdir(), broken.mkdir(), two_channels.mkdir()
    (broken / "case_0000.nii.gz").write_bytes(b"not an image at all")
    for channel in ("0000", "0001"):
        shutil.copy(os.path.join(images, "vessels2d_ts_000_0000.nii.gz"), two_channels / f"case_{channel}.nii.gz")
    (tmp_path / "a_file").write_text("x")
    out = str(tmp_path / "out")
    cases = [
        (model.predict_args(str(tmp_path / "missing"), out, ["0"]), "is not a folder"),
        (model.predict_args(str(empty), out, ["0"]), "no images <case>_0000.nii.gz"),
        (model.predict_args(images, out, ["3"]), "fold_3/checkpoint_final.pth not found"),
        (model.predict_args(images, str(tmp_path / "a_file"), ["0"]), "is a file"),
        ([*model.predict_args(images, out, ["0"]), "-num_parts", "2", "-part_id", "2"], "part IDs run from 0"),
        ([*model.predict_args(images, out, ["0"]), "--refiner", "rnca", "--refiner_steps", "-5"],
         "--refiner_steps must be a whole number of steps"),
        ([*model.predict_args(images, out, ["0"]), "--png", out], "need a refiner"),
        ([*model.predict_args(str(broken), out, ["0"]), "--refiner", "rnca"], "case_0000.nii.gz: cannot be read"),
        ([*model.predict_args(str(two_channels), out, ["0"]), "--refiner", "rnca"],
         "case_0000.nii.gz: 2 image channel(s), the model was trained on 1"),
    ]
    if not torch.cuda.is_available():
        args = model.predict_args(images, out, ["0"])
        args[args.index("-device") + 1] = "cuda"
        cases.append((args, "-device cuda was requested but no CUDA device"))
    results = model.run_all([["nnUNetv2_predict_rnca", *args] for args, _ in cases])
    for result, (_, expected) in zip(results, cases):
        assert_one_line_error(result, expected)
    segmentations = [n for n in os.listdir(out) if n.endswith(".nii.gz")] if os.path.isdir(out) else []
    assert segmentations == [], segmentations


class WritesAFile:
    """A pickle that creates a file when unpickled: proof that nothing unpickles it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_refining_a_folder_never_unpickles_and_never_overwrites_its_input(trained_vessel_refiner,
                                                                          vessel_base_probabilities, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    base = tmp_path / "base"
    shutil.copytree(vessel_base_probabilities, base)
    marker = tmp_path / "unpickled"
    crafted = pickle.dumps(WritesAFile(str(marker)))
    (base / "vessels2d_ts_001.pkl").write_bytes(crafted)
    refine = ["nnUNetv2_refine_rnca", "-i", str(base), "-images", images, "-m", model.model_folder, "-device", "cpu"]
    model.run(*refine, "-o", str(tmp_path / "out"), "--save_probabilities")
    assert not marker.exists(), "a .pkl was unpickled"
    assert (tmp_path / "out" / "vessels2d_ts_001.pkl").read_bytes() == crafted, ".pkl copied byte for byte"
    written, properties = SimpleITKIO().read_seg(str(tmp_path / "out" / "vessels2d_ts_001.nii.gz"))
    _, image_properties = SimpleITKIO().read_images([os.path.join(images, "vessels2d_ts_001_0000.nii.gz")])
    assert np.allclose(properties["spacing"], image_properties["spacing"])
    before = files_of(base)
    into_input, no_images, no_input = model.run_all([
        [*refine, "-o", str(base)], [*refine[:4], str(tmp_path / "no_images"), *refine[5:], "-o", str(tmp_path / "o2")],
        [*refine[:2], str(tmp_path / "o2"), *refine[3:], "-o", str(tmp_path / "o3")]])
    assert_one_line_error(into_input, "is the input folder -i")
    assert files_of(base) == before
    assert_one_line_error(no_images, "-images")
    assert_one_line_error(no_input, "-i")


def copy_model(model: NnunetModel, tmp_path, name: str) -> tuple:
    """The trained model folder (CV outputs and rnca/ included) under another dataset name."""
    folder = tmp_path / name / os.path.basename(model.model_folder)
    shutil.copytree(model.model_folder, folder)
    env = dict(model.env, nnUNet_results=str(tmp_path))
    return NnunetModel(env, model.raw_dataset, str(folder), 0, "2d"), folder


def test_bad_training_data_never_replaces_a_good_refiner(trained_vessel_refiner, tmp_path):
    copy, folder = copy_model(trained_vessel_refiner, tmp_path, "Dataset905_Bad")
    weights = (folder / "rnca" / "refiner.safetensors").read_bytes()
    train = ["nnUNetv2_train_rnca", "Dataset905_Bad", "-c", "2d", "-tr", TEST_TRAINER, "-device", "cpu",
             "--iterations", "2", "--disable_progress_bar"]
    bad_fraction, no_iterations = copy.run_all([[*train, "--val_fraction", "1.5"], [*train[:-3], "--iterations", "0"]])
    assert_one_line_error(bad_fraction, "val_fraction = 1.5")
    assert_one_line_error(no_iterations, "iterations = 0")
    npz = sorted((folder / "fold_0" / "validation").glob("*.npz"))[0]
    probabilities = np.load(npz)["probabilities"]
    probabilities[:, 0, 5, 5] = np.nan
    np.savez_compressed(npz, probabilities=probabilities)
    assert_one_line_error(copy.run(*train, check=False), f"{npz}: probabilities contain NaN")
    assert os.listdir(folder / "rnca.training") == ["training_log.txt"], "a failed run keeps its log, not its data"
    npz.write_bytes(npz.read_bytes()[:100])
    assert_one_line_error(copy.run(*train, check=False), f"{npz}: not a readable nnU-Net probability file")
    assert (folder / "rnca" / "refiner.safetensors").read_bytes() == weights
    read_refiner(str(folder / "rnca"))


def test_fold_all_is_not_training_data(trained_vessel_refiner, tmp_path):
    _, folder = copy_model(trained_vessel_refiner, tmp_path, "Dataset906_All")
    shutil.copytree(folder / "fold_0", folder / "fold_all")
    notes = []
    predictions = find_cv_predictions(read_model_folder(str(folder)), notes.append)
    assert predictions and all("/fold_all/" not in path for path in predictions.values())
    assert {os.path.basename(os.path.dirname(os.path.dirname(p))) for p in predictions.values()} == {"fold_0", "fold_1"}
    assert len(notes) == 1 and "fold_all ignored" in notes[0]


def test_folds_without_cv_predictions_are_named_from_nnunets_splits(vessel_model, tmp_path):
    model = read_model_folder(vessel_model.model_folder)
    predictions = find_cv_predictions(model, lambda line: None)
    cases = sorted(predictions)
    two_folds = [{"train": [], "val": cases[:2]}, {"train": [], "val": cases[2:]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(two_folds))
    assert partial_cv_note(model, predictions, str(tmp_path)) is None, "every fold of the split has predictions"
    splits = [{"train": [], "val": cases}, {"train": [], "val": ["other_a"]}, {"train": [], "val": ["other_b"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    note = partial_cv_note(model, predictions, str(tmp_path))
    assert note.startswith(f"CV predictions of {len(cases)} of the {len(cases) + 2} training cases only")
    assert " 2d 1 -tr" in note and " 2d 2 -tr" in note and " 2d 0 -tr" not in note
    assert partial_cv_note(model, predictions, str(tmp_path / "absent")) is None
    for damaged in ("[{\"train\": [], \"val\"", json.dumps([{"train": []}]), json.dumps({"val": cases}),
                    json.dumps([{"train": [], "val": cases[0]}])):
        (tmp_path / "splits_final.json").write_text(damaged)
        with pytest.raises(InputError, match="splits_final.json: not nnU-Net's split file"):
            partial_cv_note(model, predictions, str(tmp_path))
