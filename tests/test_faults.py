"""Fault injection against a real nnU-Net model folder with a trained refiner: every probe of a bad input, a
damaged file or a failing disk ends in one `error:` line naming the file or flag (exit 2), with nothing
half-written and the good rnca/ unchanged."""
import errno
import os
import re
import shutil

import numpy as np
import pytest
import torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from rnca_nnunet.errors import InputError
from rnca_nnunet.files import check_writable_folder
from rnca_nnunet.predict import write_refined_case

from test_refiner import random_case, random_refiner
from test_unattended import assert_one_line_error, copy_model


def folder_bytes(folder) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_every_bad_prediction_input_is_one_line_before_anything_is_written(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    refiner_before = folder_bytes(os.path.join(model.model_folder, "rnca"))
    stray, looped, broken, in_place = (tmp_path / name for name in ("stray", "looped", "broken", "in_place"))
    for folder in (stray, looped, broken, in_place):
        shutil.copytree(images, folder)
    shutil.copy(stray / "vessels2d_ts_000_0000.nii.gz", stray / "notes.nii.gz")
    os.symlink("loop_0000.nii.gz", looped / "loop_0000.nii.gz")
    (broken / "zz_0000.nii.gz").write_bytes(b"not an image at all")
    (tmp_path / "a_file").write_text("x")
    copy, copied = copy_model(model, tmp_path / "results", "Dataset907_Damaged")
    checkpoint = copied / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:50_000])
    out = str(tmp_path / "out")
    refine = ["--refiner", "rnca"]
    cases = [
        ([*model.predict_args(str(stray), out, ["0"]), *refine], "['notes.nii.gz'], not named <case>_XXXX.nii.gz"),
        ([*model.predict_args(str(in_place), str(in_place), ["0"]), *refine], "is the input folder -i"),
        ([*model.predict_args(str(looped), out, ["0"]), *refine], "loop_0000.nii.gz: cannot be opened"),
        ([*model.predict_args(str(broken), out, ["0"], processes=1), *refine],  # a worker dies on it
         "zz_0000.nii.gz: cannot be read"),
        ([*model.predict_args(images, out, ["0"]), *refine, "--png", str(tmp_path / "a_file")], "--png"),
        ([*model.predict_args(images, out, ["0"]), *refine, "--gif", str(tmp_path / "a_file")], "--gif"),
        ([*model.predict_args(images, out, ["0"]), *refine, "-prev_stage_predictions", str(tmp_path / "none")],
         "-prev_stage_predictions"),
        ([*model.predict_args(images, out, ["0"]), *refine, "--refiner_steps", "4096"],
         "--refiner_steps 4096 is more than 8x the"),
    ]
    damaged = model.predict_args(images, out, ["0"])
    damaged[damaged.index("-d") + 1] = "Dataset907_Damaged"
    results = model.run_all([["nnUNetv2_predict_rnca", *args] for args, _ in cases])
    results.append(copy.run("nnUNetv2_predict_rnca", *damaged, *refine, check=False))
    cases.append((damaged, "checkpoint_final.pth: not a complete PyTorch checkpoint"))
    for result, (_, expected) in zip(results, cases):
        assert_one_line_error(result, expected)
        assert "Traceback" not in result.stderr, result.stderr[-2000:]  # no worker's traceback either
    assert not os.path.isdir(out) or not [n for n in os.listdir(out) if n.endswith(".nii.gz")]
    assert sorted(os.listdir(in_place)) == sorted(os.listdir(images)), "nothing written into -i"
    assert folder_bytes(os.path.join(model.model_folder, "rnca")) == refiner_before


def test_continue_prediction_predicts_an_empty_output_again(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")
    out = tmp_path / "out"
    args = [*model.predict_args(images, str(out), ["0"]), "--refiner", "rnca"]
    model.run("nnUNetv2_predict_rnca", *args)
    written = {name: (out / name).read_bytes() for name in os.listdir(out) if name.endswith(".nii.gz")}
    emptied, kept = sorted(written)[:2]
    (out / emptied).write_bytes(b"")
    kept_time = os.stat(out / kept).st_mtime_ns
    result = model.run("nnUNetv2_predict_rnca", *args, "--continue_prediction")
    assert f"{emptied} is empty; predicting it again" in result.stdout
    assert (out / emptied).read_bytes() == written[emptied], "the emptied case is predicted as before"
    assert os.stat(out / kept).st_mtime_ns == kept_time, "a complete case is not predicted again"


def test_every_bad_evaluation_input_is_one_line(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    labels = os.path.join(model.raw_dataset, "labelsTs")
    predictions = tmp_path / "predictions"
    shutil.copytree(labels, predictions)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(labels, corrupt)
    damaged = sorted(corrupt.iterdir())[0]
    damaged.write_bytes(b"\x89PNG not really")
    (tmp_path / "a_file").write_text("x")
    evaluate = ["nnUNetv2_evaluate_rnca", "-ref", labels, "-np", "1"]
    cases = [
        ([*evaluate, "-pred", str(corrupt)], f"{damaged}: cannot be read"),
        ([*evaluate, "-pred", str(predictions), "-o", str(tmp_path)], "is a folder; give the JSON summary's"),
        ([*evaluate[:-2], "-np", "-4", "-pred", str(predictions)], "-np -4"),
        ([*evaluate, "-pred", str(predictions), "--png", str(tmp_path / "a_file")], "--png"),
    ]
    for result, (_, expected) in zip(model.run_all([args for args, _ in cases]), cases):
        assert_one_line_error(result, expected)


def test_labels_scored_without_dataset_json_are_named_in_a_line(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    reference, prediction = tmp_path / "ref", tmp_path / "pred"
    reference.mkdir(), prediction.mkdir()
    label, properties = SimpleITKIO().read_seg(sorted(
        os.path.join(model.raw_dataset, "labelsTs", f) for f in os.listdir(os.path.join(model.raw_dataset, "labelsTs")))[0])
    for folder in (reference, prediction):
        SimpleITKIO().write_seg((label[0] > 0).astype(np.uint8) * 255, str(folder / "case.nii.gz"), properties)
    result = model.run("nnUNetv2_evaluate_rnca", "-ref", str(reference), "-pred", str(prediction), "-np", "1")
    assert "no dataset.json beside -pred or above -ref" in result.stdout and "label_255" in result.stdout


def test_a_full_disk_while_writing_a_case_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    class FullDisk(SimpleITKIO):
        def write_seg(self, segmentation, path, properties):
            with open(path, "wb") as handle:
                handle.write(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    with pytest.raises(InputError, match=r"case.nii.gz: cannot be written \(No space left on device\)"):
        write_refined_case(FullDisk(), str(tmp_path / "case"), ".nii.gz", np.zeros((1, 8, 8), np.uint8),
                           {"spacing": [1.0, 1.0, 1.0]}, np.zeros((2, 1, 8, 8), np.float32))
    assert sorted(os.listdir(tmp_path)) == ["case.npz", "case.pkl"], "no segmentation, no partial file"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no one may make folders")
def test_an_output_folder_that_cannot_be_written_is_one_line():
    with pytest.raises(InputError, match="-o /proc/rnca-output: cannot write there"):
        check_writable_folder("/proc/rnca-output", "-o")


def test_the_python_api_checks_its_arguments_like_the_command_line():
    refiner = random_refiner(2)
    image, probabilities = random_case((1, 16, 16))
    cases = [((image[:, 0], probabilities[:, 0]), "image has shape (1, 16, 16); give (channels, Z, Y, X)"),
             ((list(image), probabilities), "image must be a NumPy array, got list"),
             ((image, torch.from_numpy(probabilities)), "probabilities must be a NumPy array, got Tensor"),
             ((image, probabilities * 4), "outside [0, 1]"),
             ((image, probabilities[:2]), "this refiner needs 1 and 3"),
             ((image, probabilities, 6 * 8 + 1), "more than 8x the 6 steps")]
    for args, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            refiner.refine(*args)
    assert refiner.refine(image, probabilities, np.int64(3), stop_when_stable=False)[2] == 3
    with pytest.raises(InputError, match="device 'gpu' is not a torch device"):
        type(refiner)(refiner.model, refiner.semantics, refiner.normalisation, 6, {}, device="gpu")
    assert type(refiner)(refiner.model, refiner.semantics, refiner.normalisation, 6, {}, device="cpu").device.type \
        == "cpu"
    assert issubclass(InputError, ValueError), "API callers catch it as a ValueError"
