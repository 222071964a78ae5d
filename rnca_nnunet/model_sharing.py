"""A model shared with its refiner: nnU-Net's own zip export, plus each configuration's rnca/ folder under the
same relative path, so nnU-Net's `nnUNetv2_install_pretrained_model_from_zip` installs both and
`--refiner rnca` works unchanged on the colleague's machine."""
from __future__ import annotations

import os
import zipfile
from typing import List, Sequence

import torch

from rnca_nnunet.errors import InputError
from rnca_nnunet.files import atomic_path, folder_identity
from rnca_nnunet.refiner_folder import FOLDER_NAME, read_refiner

# what a refiner folder holds: weights (safetensors, never pickled), rnca.json, validation.json, logs and curves
SHARED_ENDINGS = (".safetensors", ".json", ".txt", ".png")


def export_model_with_refiner(dataset: str, output_file: str, configurations: Sequence[str], trainer: str,
                              plans: str, folds: Sequence, checkpoints: Sequence[str], strict: bool,
                              crossval_predictions: bool) -> List[str]:
    """nnU-Net's `export_pretrained_model` into `output_file` (written whole or not at all), with every rnca/
    folder of the exported configurations added; returns the refiner folders added. A refiner that does not
    load is refused rather than shared."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    name = maybe_convert_to_dataset_name(dataset)
    added = []
    with atomic_path(output_file, ".zip") as temporary:
        export_pretrained_model(name, temporary, tuple(configurations), trainer, plans, tuple(folds), strict,
                                tuple(checkpoints), crossval_predictions)
        with zipfile.ZipFile(temporary, "a", zipfile.ZIP_DEFLATED) as archive:
            for configuration in configurations:
                folder = os.path.join(get_output_folder(name, trainer, plans, configuration), FOLDER_NAME)
                if not os.path.isdir(folder):
                    continue
                identity = folder_identity(folder)
                read_refiner(folder, torch.device("cpu"))
                for file in sorted(os.listdir(folder)):
                    path = os.path.join(folder, file)
                    if os.path.isfile(path) and file.endswith(SHARED_ENDINGS):
                        archive.write(path, os.path.relpath(path, nnUNet_results))
                if folder_identity(folder) != identity:
                    raise InputError(f"{folder} was replaced while it was exported (a training finished); export "
                                     f"again")
                added.append(folder)
    return added
