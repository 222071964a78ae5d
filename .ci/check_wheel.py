"""Run by .ci/run with the venv that installed the built wheel: everything users need is inside it."""
import os

import rnca_nnunet
from rnca_nnunet.config import preset_names
from rnca_nnunet.nnunet_trainers import TRAINER_FOLDER

assert "site-packages" in rnca_nnunet.__file__, f"imported the checkout, not the wheel: {rnca_nnunet.__file__}"
assert {"vessels_2d", "cardiac_2d", "default_3d"} <= set(preset_names()), preset_names()
os.environ["nnUNet_extTrainer"] = TRAINER_FOLDER
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: E402

for name in ("nnUNetTrainer_rncaTest", "nnUNetTrainer_rncaDemo"):
    assert recursive_find_trainer_class_by_name(name) is not None, f"nnU-Net cannot find {name}"
print("wheel contents ok:", os.path.dirname(rnca_nnunet.__file__))
