"""The 3D multi-class product path on a real 3d_fullres nnU-Net: train the refiner from its --npz CV
predictions and predict with it. A file of its own, so that pytest-xdist runs it beside the 2D path."""
import json
import os

import numpy as np
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from rnca_nnunet.data import read_model_folder

from conftest import TEST_TRAINER


def test_cardiac_3d_multiclass_path(cardiac3d_model, tmp_path):
    model = cardiac3d_model
    model.run("nnUNetv2_train_rnca", str(model.dataset_id), "-c", "3d_fullres", "-tr", TEST_TRAINER,
              "-device", "cpu", "--iterations", "3", "--disable_progress_bar")
    folder = read_model_folder(model.model_folder)
    assert folder.semantics.mask_channels == 3
    config = json.load(open(os.path.join(model.model_folder, "rnca", "rnca.json")))
    assert config["rule"]["ndim"] == 3 and config["rule"]["mask_channels"] == 3
    images = os.path.join(model.raw_dataset, "imagesTs")
    model.run("nnUNetv2_predict_rnca", *model.predict_args(images, str(tmp_path / "out"), ["0"]),
              "--refiner", "rnca", "--refiner_steps", "8")
    io = SimpleITKIO()
    for case in ("cardiac3d_ts_000", "cardiac3d_ts_001"):
        written, properties = io.read_seg(str(tmp_path / "out" / f"{case}.nii.gz"))
        image, _ = io.read_images([os.path.join(images, f"{case}_0000.nii.gz")])
        assert written.shape == image.shape and set(np.unique(written)) <= {0, 1, 2, 3}
