"""A model exported with its refiner installs with nnU-Net's own command and predicts as the original."""
import os
import zipfile

from conftest import TEST_TRAINER
from test_unattended import assert_one_line_error


def test_an_exported_model_installs_with_its_refiner_and_predicts_byte_identically(trained_vessel_refiner, tmp_path):
    model = trained_vessel_refiner
    archive = str(tmp_path / "model.zip")
    result = model.run("nnUNetv2_export_model_to_zip_rnca", "-d", str(model.dataset_id), "-o", archive, "-c", "2d",
                       "-tr", TEST_TRAINER, "-f", "0", "1")
    assert "and its refiner(s)" in result.stdout, result.stdout[-2000:]
    names = zipfile.ZipFile(archive).namelist()
    refiner_files = sorted(os.path.basename(n) for n in names if "/rnca/" in n)
    assert {"refiner.safetensors", "rnca.json"} <= set(refiner_files), names
    assert all(n.endswith((".safetensors", ".json", ".txt", ".png")) for n in refiner_files), refiner_files
    installed = dict(model.env, nnUNet_results=str(tmp_path / "installed"))
    os.makedirs(installed["nnUNet_results"])
    model.run("nnUNetv2_install_pretrained_model_from_zip", archive, env=installed)
    images = os.path.join(model.raw_dataset, "imagesTs")
    outputs = {}
    for name, env in (("original", model.env), ("installed", installed)):
        out = tmp_path / name
        model.run("nnUNetv2_predict_rnca", *model.predict_args(images, str(out), ["0"]), "--refiner", "rnca", env=env)
        outputs[name] = {f: (out / f).read_bytes() for f in sorted(os.listdir(out)) if f.endswith(".nii.gz")}
    assert outputs["original"] and outputs["installed"] == outputs["original"]
    assert_one_line_error(model.run("nnUNetv2_export_model_to_zip_rnca", "-d", str(model.dataset_id), "-o",
                                    str(tmp_path), "-c", "2d", "-tr", TEST_TRAINER, check=False), "is a folder")
