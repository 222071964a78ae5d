"""The whole product path on real nnU-Net output: train the refiner from --npz CV predictions,
predict with and without --refiner, drop the refiner folder into another model folder."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from rnca_nnunet.data import read_image, read_model_folder
from rnca_nnunet.errors import ReadOutElsewhereWarning
from rnca_nnunet.refiner_folder import read_refiner

from conftest import TEST_TRAINER


def test_refiner_folder_states_what_it_was_trained_on(trained_vessel_refiner):
    folder = os.path.join(trained_vessel_refiner.model_folder, "rnca")
    assert sorted(os.listdir(folder)) == ["progress.png", "refiner.safetensors", "rnca.json",
                                          "training_log.txt", "validation.json"]
    config = json.load(open(os.path.join(folder, "rnca.json")))
    assert config["trained_on"]["dataset"] == os.path.basename(trained_vessel_refiner.raw_dataset)
    assert config["trained_on"]["configuration"] == "2d"
    assert config["labels"] == {"background": 0, "vessel": 1}
    assert config["rule"]["ndim"] == 2
    validation = json.load(open(os.path.join(folder, "validation.json")))
    assert set(validation["mean_before"]["vessel"]) >= {"dice", "beta0_error", "beta1_error"}
    assert validation["per_case"], "held-out cases were evaluated"
    decision = validation["per_class"]["vessel"]
    assert decision["refined"] == (config["unrefined_labels"] == []), "rnca.json and validation.json agree"
    assert "guard" in config and decision["intact_before"] + decision["broken_before"] == len(validation["per_case"])
    log = open(os.path.join(folder, "training_log.txt")).read()
    assert config["fall_back_above"] is None and "fall-back:" not in log, "the fall-back is off unless asked for"
    assert config["fill_opened_holes_above"] is not None and "opened holes: the rule opened" in log, \
        "the limit of holes opened in nnU-Net's structure is set from the held-out cases by default"
    assert config["trained_on"]["train"]["read_out_folds"] == 1 and "read_out_folds 1 (automatic): 0 of 4" in log, \
        "nnU-Net's short training breaks every CV case, so the held-out cases choose the read-out"
    assert "CV predictions of 4 of the 10 training cases only" in log, "folds 0 and 1 of 5 were trained"
    assert f"nnUNetv2_train {config['trained_on']['dataset']} 2d 2 -tr {TEST_TRAINER}" in log
    assert " 2d 1 -tr" not in log, "a fold with CV predictions is not asked for again"
    assert not any(name.startswith(".rnca") or name.endswith(".training")
                   for name in os.listdir(trained_vessel_refiner.model_folder))


def test_prediction_without_refiner_is_byte_identical_to_nnunet(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    model.run_all([[command, *model.predict_args(images, str(tmp_path / name), ["0", "1"], processes=1)]
                   for command, name in (("nnUNetv2_predict", "nnunet"), ("nnUNetv2_predict_rnca", "ours"))],
                  check=True)
    segmentations = sorted(f for f in os.listdir(tmp_path / "nnunet") if f.endswith(".nii.gz"))
    assert len(segmentations) == 3
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "nnunet", tmp_path / "ours", segmentations, shallow=False)
    assert mismatch == [] and errors == []


def test_prediction_with_refiner_writes_what_the_refiner_produced(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    base, refined = tmp_path / "base", tmp_path / "refined"
    _, result = model.run_all([
        ["nnUNetv2_predict", *model.predict_args(images, str(base), ["0", "1"]), "--save_probabilities"],
        ["nnUNetv2_predict_rnca", *model.predict_args(images, str(refined), ["0", "1"], processes=1), "--refiner",
         "rnca", "--save_probabilities", "--png", str(tmp_path / "png"), "--gif", str(tmp_path / "gif")]], check=True)
    assert "refined vessels2d_ts_000" in result.stdout
    assert not [name for name in os.listdir(refined) if name.startswith(".")], "nothing staged or half-written"
    for kind in ("png", "gif"):
        assert sorted(os.listdir(tmp_path / kind)) == [f"vessels2d_ts_00{i}.{kind}" for i in range(3)]
    refiner = read_refiner(os.path.join(model.model_folder, "rnca"))
    io = SimpleITKIO()
    for case in ("vessels2d_ts_000", "vessels2d_ts_002"):
        image, _ = io.read_images([os.path.join(images, f"{case}_0000.nii.gz")])
        probabilities = np.load(base / f"{case}.npz")["probabilities"]
        _, expected, _ = refiner.refine(image, probabilities)
        written, _ = io.read_seg(str(refined / f"{case}.nii.gz"))
        np.testing.assert_array_equal(written[0], expected)
        refined_probabilities = np.load(refined / f"{case}.npz")["probabilities"]
        np.testing.assert_array_equal(refined_probabilities.argmax(0), expected)
        assert (refined / f"{case}.pkl").is_file()


def test_refine_folder_of_saved_probabilities(trained_vessel_refiner, vessel_base_probabilities, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    model.run("nnUNetv2_refine_rnca", "-i", vessel_base_probabilities, "-images", images, "-o", str(tmp_path / "out"),
              "-m", model.model_folder, "-device", "cpu")
    assert sorted(os.listdir(tmp_path / "out")) == [f"vessels2d_ts_00{i}.nii.gz" for i in range(3)]


def test_dropped_in_refiner_is_found_warned_or_refused(trained_vessel_refiner, vessel_base_probabilities, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    other = tmp_path / "Dataset903_Other" / f"{TEST_TRAINER}__nnUNetPlans__2d"
    shutil.copytree(model.model_folder, other, ignore=shutil.ignore_patterns("rnca", "fold_*"))
    shutil.copytree(os.path.join(model.model_folder, "rnca"), other / "rnca")
    refine = ["nnUNetv2_refine_rnca", "-i", vessel_base_probabilities, "-images", images, "-m", str(other),
              "-device", "cpu"]
    zero_shot = model.run(*refine, "-o", str(tmp_path / "zero_shot"))
    assert "zero-shot" in zero_shot.stderr
    assert len(os.listdir(tmp_path / "zero_shot")) == 3

    dataset = json.load(open(other / "dataset.json"))
    dataset["labels"] = {"background": 0, "artery": 1, "vein": 2}
    json.dump(dataset, open(other / "dataset.json", "w"))
    refused = model.run(*refine, "-o", str(tmp_path / "refused"), check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "train a refiner for this model" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_missing_cv_probabilities_name_the_command(vessel_model, tmp_path):
    other = tmp_path / "Dataset904_NoNpz" / f"{TEST_TRAINER}__nnUNetPlans__2d"
    shutil.copytree(vessel_model.model_folder, other, ignore=shutil.ignore_patterns("rnca", "*.npz"))
    env = dict(vessel_model.env, nnUNet_results=str(tmp_path))
    from conftest import NnunetModel

    result = NnunetModel(env, vessel_model.raw_dataset, str(other), 904, "2d").run(
        "nnUNetv2_train_rnca", "Dataset904_NoNpz", "-c", "2d", "-tr", TEST_TRAINER, "-device", "cpu", check=False)
    assert result.returncode == 2
    assert f"nnUNetv2_train Dataset904_NoNpz 2d 0 -tr {TEST_TRAINER} -p nnUNetPlans --val --npz" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluation_compares_base_and_refined_and_draws_them(trained_vessel_refiner, vessel_evaluation):
    model = trained_vessel_refiner
    folder, summary, stdout = vessel_evaluation
    assert len(summary["per_case"]) == 3 and set(summary["mean"]) == {"base", "refined"}
    label, _ = SimpleITKIO().read_seg(os.path.join(model.raw_dataset, "labelsTs", "vessels2d_ts_001.nii.gz"))
    refined, _ = SimpleITKIO().read_seg(str(folder / "refined" / "vessels2d_ts_001.nii.gz"))
    dice = 2 * ((label > 0) & (refined > 0)).sum() / ((label > 0).sum() + (refined > 0).sum())
    assert summary["per_case"][1]["refined"]["vessel"]["dice"] == pytest.approx(dice)
    assert "| change | vessel |" in stdout
    assert [f"vessels2d_ts_00{i}.png" for i in range(3)] == sorted(
        name for name in os.listdir(folder / "html" / "cases") if not name.endswith("_uncertainty.png"))
    missing = model.run("nnUNetv2_evaluate_rnca", "-ref", os.path.join(model.raw_dataset, "labelsTs"),
                        "-pred", str(folder / "base"), "--png", str(folder / "png2"), "-images",
                        str(folder / "base"), check=False)
    assert missing.returncode == 2 and "_0000.nii.gz not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def _copied_model_folder(model, results: Path, trainer: str = TEST_TRAINER) -> Tuple[Path, Dict[str, str], List[str]]:
    """A copy of the model folder (rnca/ included) under `results`, as `trainer`'s: (its path, the environment
    that finds it, the --read_out_only command)."""
    copy = results / os.path.basename(model.raw_dataset) / f"{trainer}__nnUNetPlans__2d"
    shutil.copytree(model.model_folder, copy)
    command = ["nnUNetv2_train_rnca", str(model.dataset_id), "-c", "2d", "-tr", trainer, "-device", "cpu",
               "--read_out_only", "--disable_progress_bar"]
    return copy, dict(model.env, nnUNet_results=str(results)), command


def test_read_out_only_chooses_the_read_out_again_and_keeps_the_rule(trained_vessel_refiner, tmp_path):
    """A refiner from before the outline guard (its key taken out of rnca.json) gets the read-out training would
    choose now, on the same held-out cases, with its weights and training log untouched."""
    model = trained_vessel_refiner
    copy, env, again = _copied_model_folder(model, tmp_path)
    config_path = copy / "rnca" / "rnca.json"
    trained = json.load(open(config_path))
    assert trained["trained_on"]["cv_folds"] is None, "trained on every fold"
    older = {key: value for key, value in trained.items() if key != "outline_guard"}
    json.dump(older, open(config_path, "w"))
    model.run(*again, env=env)
    folder = copy / "rnca"
    assert sorted(os.listdir(folder)) == ["progress.png", "read_out_log.txt", "refiner.safetensors", "rnca.json",
                                          "training_log.txt", "validation.json"]
    assert json.load(open(config_path)) == trained, "the read-out training chose, outline guard included"
    original = os.path.join(model.model_folder, "rnca")
    for kept in ("refiner.safetensors", "training_log.txt", "progress.png"):
        assert filecmp.cmp(folder / kept, os.path.join(original, kept), shallow=False), kept
    chosen, before = (json.load(open(os.path.join(f, "validation.json"))) for f in (folder, original))
    assert [chosen[key] for key in ("iteration", "per_class")] == [before[key] for key in ("iteration", "per_class")]
    assert "outline guard 0 on" in open(folder / "read_out_log.txt").read()

    json.dump({key: value for key, value in older.items() if key != "trained_on"}, open(config_path, "w"))
    refused = model.run(*again, env=env, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "names no held-out cases" in refused.stderr and "retrain" in refused.stderr
    assert "trained_on" not in json.load(open(config_path)), "nothing was written"
    mixed = model.run(*again, "--iterations", "5", env=env, check=False)
    assert mixed.returncode == 2 and "drop --iterations" in mixed.stderr


def test_read_out_only_takes_the_folds_and_the_flags_the_refiner_was_trained_with(trained_vessel_refiner, tmp_path):
    """A refiner trained on fold 0 alone is read out again on fold 0's cases alone, one trained with
    --keep_base_loops keeps guard 0 and still gets an outline guard, one copied from another trainer's folder
    records the model it was read out on (and stops warning there), and a bad fold list stops with one line."""
    model = trained_vessel_refiner
    copy, env, again = _copied_model_folder(model, tmp_path, trainer="nnUNetTrainer_longer")
    with pytest.warns(ReadOutElsewhereWarning, match="-tr nnUNetTrainer_longer -p nnUNetPlans --read_out_only"):
        read_refiner(str(copy / "rnca")).check_compatible(read_model_folder(str(copy)))
    config_path = copy / "rnca" / "rnca.json"
    config = json.load(open(config_path))
    fold_0 = sorted(name[:-len(".npz")] for name in os.listdir(copy / "fold_0" / "validation") if name.endswith(".npz"))
    config["trained_on"].update(cv_folds=[0], held_out_cases=fold_0[:1])
    config["trained_on"]["train"]["keep_base_loops"] = True
    json.dump(config, open(config_path, "w"))
    model.run(*again, env=env)
    log = open(copy / "rnca" / "read_out_log.txt").read()
    assert f"chosen again: {len(fold_0) - 1} training and 1 held-out cases" in log
    assert "\nguard 0 on 1 held-out" in log and "\nguard 0.6 on" not in log, "--keep_base_loops: guard 0 alone"
    assert "outline guard 0.99 on 1 held-out" in log
    chosen = json.load(open(config_path))
    assert chosen["guard"] == 0.0 and "outline_guard" in chosen
    assert chosen["trained_on"] == dict(config["trained_on"],
                                        read_out_on={"trainer": "nnUNetTrainer_longer", "plans": "nnUNetPlans"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_refiner(str(copy / "rnca")).check_compatible(read_model_folder(str(copy)))

    config["trained_on"]["cv_folds"] = "0"
    json.dump(config, open(config_path, "w"))
    refused = model.run(*again, env=env, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "trained_on.cv_folds must be null or a list of fold numbers" in refused.stderr

    config["trained_on"].update(cv_folds=[0], train=dict(config["trained_on"]["train"], read_out_folds=0))
    json.dump(config, open(config_path, "w"))
    refused = model.run(*again, env=env, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "rnca.json trained_on.train: read_out_folds = 0 is invalid" in refused.stderr


def test_read_out_only_chooses_on_every_read_out_fold_as_the_training_did(trained_vessel_refiner, tmp_path):
    """One of 4 CV predictions made right (a quarter) makes the training choose its read-out on every CV case by
    itself (read_out_folds 5, none set): it keeps its three other rules (the fifth fold would be empty) beside
    the shipped one; --read_out_only refines each fold's held-out cases with that fold's rule again, so it
    chooses on every CV case and comes to what the training chose. Without one of those rules it stops with
    one line and writes nothing."""
    model = trained_vessel_refiner
    copy, env, again = _copied_model_folder(model, tmp_path)
    npz = sorted((copy / "fold_0" / "validation").glob("*.npz"))[0]
    model_folder = read_model_folder(str(copy))
    label, _ = read_image(model_folder.reader_writer, [os.path.join(
        model.env["nnUNet_preprocessed"], model_folder.dataset_name, "gt_segmentations",
        npz.name[:-len(".npz")] + model_folder.file_ending)], segmentation=True)
    np.savez_compressed(npz, probabilities=np.concatenate([label == 0, label == 1]).astype(np.float32))
    preset = tmp_path / "folds.json"
    json.dump({"iterations": 6, "validate_every": 3, "pool_size": 16, "batch_size": 4, "inference_steps": 8},
              open(preset, "w"))
    model.run(*[part for part in again if part != "--read_out_only"], "--preset", str(preset), env=env)
    folder = copy / "rnca"
    assert "read_out_folds 5 (automatic): 1 of 4 CV cases (25%)" in open(folder / "training_log.txt").read()
    fold_files = [f"read_out_fold_{k}.safetensors" for k in (2, 3, 4)]
    assert set(fold_files) < set(os.listdir(folder)) and "read_out_fold_5.safetensors" not in os.listdir(folder)
    trained, trained_validation = (json.load(open(folder / name)) for name in ("rnca.json", "validation.json"))
    held_out = [trained["trained_on"]["held_out_cases"], *trained["trained_on"]["read_out_fold_cases"]]
    every = [name for names in held_out for name in names]
    assert len(every) == len(set(every)) == 4, "each of the 4 CV cases is held out by exactly one rule"
    assert sorted(case["case"] for case in trained_validation["per_case"]) == sorted(every)
    weights = {name: (folder / name).read_bytes() for name in ["refiner.safetensors", *fold_files]}

    model.run(*again, env=env)
    log = open(folder / "read_out_log.txt").read()
    assert "read-out folds: the rules of 4 folds held out 4 cases" in log
    assert json.load(open(folder / "rnca.json")) == trained, "the same read-out as the training's"
    assert json.load(open(folder / "validation.json"))["per_case"] == trained_validation["per_case"], \
        "every fold's cases refined by its own rule, as at training"
    assert weights == {name: (folder / name).read_bytes() for name in weights}, "every rule is kept"

    (folder / fold_files[2]).unlink()
    refused = model.run(*again, env=env, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "read_out_fold_4.safetensors not found" in refused.stderr
    assert open(folder / "read_out_log.txt").read() == log, "nothing was written"
