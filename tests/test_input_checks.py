"""Bad numbers, bad files and damaged weights are refused with one clear line, before anything is computed."""
import json
import os
import stat

import numpy as np
import pytest
import torch
from nnunetv2.imageio.tif_reader_writer import Tiff3DIO
from safetensors.torch import save_file

from rnca_nnunet.config import load_preset
from rnca_nnunet.errors import InputError
from rnca_nnunet.predict import write_refined_case
from rnca_nnunet.state import LabelSemantics, Normalisation
from rnca_nnunet.experiments.synthetic import GENERATORS, corrupted_cases
from rnca_nnunet.train import TrainingDiverged, train_refiner
from rnca_nnunet.refiner_folder import read_refiner, save_refiner

from test_refiner import random_case, random_refiner


def saved_refiner(tmp_path) -> str:
    folder = str(tmp_path / "rnca")
    save_refiner(random_refiner(2), folder)
    return folder


def edit_config(folder: str, edit) -> None:
    path = os.path.join(folder, "rnca.json")
    config = json.load(open(path))
    edit(config)
    json.dump(config, open(path, "w"))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(inference_steps=-5), "inference_steps must be a whole number of steps"),
    (lambda c: c.update(inference_steps="64"), "inference_steps must be a whole number of steps"),
    (lambda c: c["rule"].update(hidden_channels=100_000_000), "hidden_channels = 100000000 must be"),
    (lambda c: c["rule"].update(update_width="96"), "update_width = '96' must be"),
    (lambda c: c.update(min_hole_size=-1), "min_component_size/min_hole_size"),
    (lambda c: c.update(max_hole_radius="1.5"), "max_hole_radius must be a number"),
    (lambda c: c.update(max_hole_radius=-1), "max_hole_radius must be a number"),
    (lambda c: c.update(keep_base_loops="yes"), "keep_base_loops must be true or false"),
    (lambda c: c.update(guard=1.5), "guard must be null or a confidence from 0 to 1"),
    (lambda c: c.update(guard=float("nan")), "guard must be null or a confidence from 0 to 1"),
    (lambda c: c.update(guard="0.9"), "guard must be null or a confidence from 0 to 1"),
    (lambda c: c.update(unrefined_labels=[0]), "unrefined_labels must be a list of label values"),
    (lambda c: c.update(unrefined_labels="1"), "unrefined_labels must be a list of label values"),
    (lambda c: c.update(transpose_forward=[0, 0, 1]), "transpose_forward"),
    (lambda c: c.pop("labels"), "labels"),
    (lambda c: c.update(min_component_size=10 ** 12), "min_component_size/min_hole_size must be whole numbers"),
    (lambda c: c.update(max_hole_radius=1e300), "max_hole_radius must be a number of cells from 0 to 1024"),
    (lambda c: c["normalisation"].update(intensity_properties={"0": {"mean": float("nan"), "std": 1.0}}),
     "normalisation intensity_properties of channel '0' must be finite numbers"),
    (lambda c: c["rule"].update(mask_channels=3), "rule mask_channels = 3 but the labels give 2"),
    (lambda c: c["rule"].update(context_channels=5), "rule context_channels = 5 but 1 image and 2 mask channels give 3"),
    (lambda c: c["normalisation"].update(schemes=["CTNormalization"]),
     "normalisation CTNormalization of channel 0 needs intensity_properties ['mean', 'percentile_00_5'"),
    (lambda c: c.update(trained_on=["Dataset001"]), "trained_on must be a mapping"),
    (lambda c: c.update(trained_on={"read_out_on": "nnUNetTrainer"}), "trained_on.read_out_on must name a trainer"),
    (lambda c: c.update(label_topology=[[[1], [1, 0, 0]]]), "label_topology holds 3 Betti numbers a class, a 2D"),
    (lambda c: c.update(label_topology=[[[1], [1, float("nan")]]]), "label_topology must be a list of"),
    (lambda c: c.update(fill_opened_holes_above=-1), "fill_opened_holes_above must be null or a count of holes"),
    (lambda c: c.update(fill_opened_holes_above="2"), "fill_opened_holes_above must be null or a count of holes"),
    (lambda c: c.update(format_version=99), "format_version 99 is not one this rnca-nnunet reads"),
    (lambda c: c.update(format_version="1"), "format_version '1' is not one this rnca-nnunet reads"),
])
def test_bad_rnca_json_values_are_refused_before_allocating(tmp_path, edit, message):
    folder = saved_refiner(tmp_path)
    edit_config(folder, edit)
    with pytest.raises(InputError) as error:
        read_refiner(folder, torch.device("cpu"))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_deeply_nested_rnca_json_is_refused(tmp_path):
    folder = saved_refiner(tmp_path)
    with open(os.path.join(folder, "rnca.json"), "w") as handle:
        handle.write('{"rule": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(InputError, match="not a valid rnca.json .maximum recursion depth"):
        read_refiner(folder)


def test_non_utf8_rnca_json_is_refused(tmp_path):
    folder = saved_refiner(tmp_path)
    with open(os.path.join(folder, "rnca.json"), "wb") as handle:
        handle.write(b'{"rule": "\xff\xfe"}')
    with pytest.raises(InputError, match="not a valid rnca.json"):
        read_refiner(folder)


def test_non_finite_weights_are_refused_at_load(tmp_path):
    refiner = random_refiner(2)
    folder = saved_refiner(tmp_path)
    weights = {k: v.clone(memory_format=torch.contiguous_format) for k, v in refiner.model.state_dict().items()}
    weights["update_in.weight"][0, 0] = float("nan")
    save_file(weights, os.path.join(folder, "refiner.safetensors"))
    with pytest.raises(InputError, match=r"\['update_in.weight'\] contain NaN"):
        read_refiner(folder)


def test_weights_of_another_type_are_refused_at_load(tmp_path):
    """int8 weights of the right shapes gave empty masks with no error."""
    refiner = random_refiner(2)
    folder = saved_refiner(tmp_path)
    weights = {k: v.contiguous().to(torch.int8) for k, v in refiner.model.state_dict().items()}
    save_file(weights, os.path.join(folder, "refiner.safetensors"))
    with pytest.raises(InputError, match=r"are torch.int8, not float32"):
        read_refiner(folder)


def test_refiner_folder_is_readable_by_others(tmp_path):
    umask = os.umask(0o022)
    try:
        folder = saved_refiner(tmp_path)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(folder, "rnca.json")).st_mode) == 0o644


@pytest.mark.parametrize("steps", [0, -5, 10 ** 6, 2.5])
def test_impossible_step_counts_are_refused(steps):
    image, probabilities = random_case((1, 16, 16))
    with pytest.raises(InputError, match="whole number of steps from 1"):
        random_refiner(2).refine(image, probabilities, steps)


def test_non_finite_inputs_are_refused():
    image, probabilities = random_case((1, 16, 16))
    image[0, 0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        random_refiner(2).refine(image, probabilities)


@pytest.mark.parametrize("values, message", [
    ({"iterations": 0}, "iterations = 0 is invalid"),
    ({"val_fraction": 1.5}, "val_fraction = 1.5 is invalid"),
    ({"val_fraction": -1.0}, "val_fraction = -1.0 is invalid"),
    ({"learning_rate": "fast"}, "learning_rate = 'fast' is invalid"),
    ({"patch_size": [64]}, "patch_size = [64] is invalid"),
    ({"steps_min": 40, "steps_max": 20}, "steps_min/steps_max"),
    ({"batch_size": 300}, "batch_size = 300 is invalid"),
    ({"seed": -1}, "seed = -1 is invalid"),
    ({"ema_decay": 1.0}, "ema_decay = 1.0 is invalid"),
    ({"read_out_folds": 0}, "read_out_folds = 0 is invalid"),
    ({"read_out_folds": 2.5}, "read_out_folds = 2.5 is invalid"),
    ({"read_out_folds": True}, "read_out_folds = True is invalid"),
])
def test_impossible_training_settings_are_refused(tmp_path, values, message):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps(values))
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_preset(str(preset))


def test_a_preset_that_is_not_utf8_is_one_line(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_bytes(b'{"iterations": 10, "_about": "\xff\xfe"}')
    with pytest.raises(InputError, match="preset.json: cannot be read as a UTF-8 JSON preset"):
        load_preset(str(preset))


def test_command_line_overrides_are_checked_too():
    with pytest.raises(InputError, match=r"command line .* val_fraction = 1.5"):
        load_preset("vessels_2d", {"val_fraction": 1.5})


def test_diverging_training_stops_with_a_clear_error():
    cases = corrupted_cases("vessels2d", 3, seed=7)
    config = load_preset("vessels_2d", {"iterations": 20, "validate_every": 20, "learning_rate": 1e30,
                                        "pool_size": 8, "batch_size": 4})
    with pytest.raises(TrainingDiverged, match="nothing was saved"):
        train_refiner(cases[:2], cases[2:], LabelSemantics(GENERATORS["vessels2d"][1]),
                      random_refiner(2).normalisation, 2, config, {}, torch.device("cpu"), log=lambda line: None,
                      show_progress=False)


def test_region_datasets_are_detected_as_nnunet_detects_them():
    regions = LabelSemantics({"background": 0, "whole": [1, 2], "core": 2}, [1, 2])
    assert regions.has_regions and regions.mask_channels == 2
    assert not LabelSemantics({"background": 0, "a": 1, "b": 2}, [1, 2]).has_regions, "plain labels: no regions"


def test_two_d_rule_slices_along_nnunets_first_axis():
    """transpose_forward [2, 0, 1]: nnU-Net's 2d configuration slices along the image's last axis."""
    # no z-score: a slice's differs from the volume's
    refiner = random_refiner(2).replace(normalisation=Normalisation(["NoNormalization"], {}))
    image, probabilities = random_case((5, 6, 7))
    refined, segmentation, _ = refiner.replace(transpose_forward=[2, 0, 1]).refine(image, probabilities, 4,
                                                                                   stop_when_stable=False)
    assert segmentation.shape == (5, 6, 7)
    for x in range(7):
        slice_image, slice_probabilities = image[:, None, :, :, x], probabilities[:, None, :, :, x]
        _, expected, _ = refiner.refine(slice_image, slice_probabilities, 4, stop_when_stable=False)
        np.testing.assert_array_equal(segmentation[:, :, x], expected[0])
    _, along_z, _ = refiner.refine(image, probabilities, 4, stop_when_stable=False)
    assert not np.array_equal(along_z, segmentation), "slicing another axis must give another result"


def test_tif_outputs_get_their_side_files_and_nothing_partial(tmp_path):
    segmentation = np.zeros((4, 8, 8), np.uint8)
    segmentation[1:3, 2:5, 2:5] = 1
    write_refined_case(Tiff3DIO(), str(tmp_path / "case"), ".tif", segmentation, {"spacing": (2.0, 1.0, 1.0)},
                       np.stack([1.0 - segmentation, segmentation]).astype(np.float32))
    assert sorted(os.listdir(tmp_path)) == ["case.json", "case.npz", "case.pkl", "case.tif"]
    written, properties = Tiff3DIO().read_seg(str(tmp_path / "case.tif"))
    np.testing.assert_array_equal(written[0], segmentation)
    assert tuple(properties["spacing"]) == (2.0, 1.0, 1.0)


def test_a_label_value_dataset_json_does_not_name_is_refused_with_its_file():
    """Trained as background, it would give a refiner that replaces a good one."""
    from rnca_nnunet.data import check_label_values
    from rnca_nnunet.state import LabelSemantics

    semantics = LabelSemantics({"background": 0, "vessel": 1, "ignore": 2})
    label = np.zeros((1, 8, 8), np.uint8)
    label[0, :2] = 2
    check_label_values(label, semantics, "case_000.png")
    label[0, 5, 5] = 5
    with pytest.raises(InputError, match=r"case_000.png holds label values \[5\] that dataset.json does not name"):
        check_label_values(label, semantics, "case_000.png")


def test_a_probability_file_is_checked_before_anything_is_allocated(tmp_path):
    """A header declaring 2 x 10^10 values (80 GB) is refused from the header; an .npy named .npz is refused."""
    import zipfile

    from rnca_nnunet.data import read_probabilities

    huge = str(tmp_path / "case_000.npz")
    with zipfile.ZipFile(huge, "w") as archive, archive.open("probabilities.npy", "w") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (2, 1, 100000, 100000)})
    with pytest.raises(InputError, match=r"shape \(1, 100000, 100000\) do not fit the image's \(1, 8, 8\)"):
        read_probabilities(huge, (1, 8, 8))
    npy = str(tmp_path / "case_001.npz")
    with open(npy, "wb") as handle:
        np.save(handle, np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="case_001.npz: not a readable nnU-Net probability file"):
        read_probabilities(npy, (1, 8, 8))
    good = str(tmp_path / "case_002.npz")
    np.savez_compressed(good, probabilities=np.full((2, 1, 8, 8), 0.5, np.float32))
    assert read_probabilities(good, (1, 8, 8)).shape == (2, 1, 8, 8)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device")
def test_a_device_the_machine_lacks_is_one_line():
    from rnca_nnunet.cli import _device

    with pytest.raises(InputError, match="-device mps was requested but this machine has no MPS device"):
        _device("mps")
