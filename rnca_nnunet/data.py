"""Find and read what an nnU-Net model folder already produced: CV probabilities, images, labels.

Everything stays in original image space (nnU-Net's reader layout, (C, Z, Y, X)), so a refiner is
trained on exactly the arrays it later refines.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, load_pickle
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.utils import create_paths_fn

from rnca_nnunet.errors import InputError
from rnca_nnunet.state import LabelSemantics, Normalisation, mask_from_probabilities, target_from_label


@dataclass(frozen=True)
class ModelFolder:
    """An nnU-Net results folder TRAINER__PLANS__CONFIG inside a DatasetXXX_Name folder."""

    path: str
    dataset_name: str
    trainer: str
    plans_identifier: str
    configuration: str
    dataset_json: dict
    plans: dict

    @property
    def plans_manager(self) -> PlansManager:
        return PlansManager(self.plans)

    @property
    def reader_writer(self) -> BaseReaderWriter:
        return self.plans_manager.image_reader_writer_class()

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def semantics(self) -> LabelSemantics:
        return LabelSemantics(self.dataset_json["labels"], self.dataset_json.get("regions_class_order"))

    @property
    def ndim(self) -> int:
        """2 for 2D configurations (3D data is then refined slice by slice), else 3."""
        return len(self.plans_manager.get_configuration(self.configuration).patch_size)

    @property
    def normalisation(self) -> Normalisation:
        configuration = self.plans_manager.get_configuration(self.configuration)
        return Normalisation(list(configuration.normalization_schemes),
                             dict(self.plans["foreground_intensity_properties_per_channel"]))

    def validation_command(self, fold: int) -> str:
        return (f"nnUNetv2_train {self.dataset_name} {self.configuration} {fold} -tr {self.trainer} "
                f"-p {self.plans_identifier} --val --npz")


def read_model_folder(path: str) -> ModelFolder:
    path = os.path.abspath(path)
    for name in ("dataset.json", "plans.json"):
        if not isfile(join(path, name)):
            raise InputError(f"{join(path, name)} not found: is this an nnU-Net model folder "
                             f"(nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG)?")
    parts = os.path.basename(path).split("__")
    if len(parts) != 3:
        raise InputError(f"{path}: folder name is not TRAINER__PLANS__CONFIG; pass the nnU-Net model folder itself")
    return ModelFolder(path, os.path.basename(os.path.dirname(path)), parts[0], parts[1], parts[2],
                       load_json(join(path, "dataset.json")), load_json(join(path, "plans.json")))


def find_cv_predictions(model: ModelFolder) -> Dict[str, str]:
    """Case name -> fold_k/validation/<case>.npz; a clear error says how to create missing ones."""
    folds = sorted(glob.glob(join(model.path, "fold_*")))
    predictions: Dict[str, str] = {}
    for fold in folds:
        for npz in sorted(glob.glob(join(fold, "validation", "*.npz"))):
            predictions[os.path.basename(npz)[:-4]] = npz
    if not predictions:
        fold_ids = [f.rsplit("_", 1)[-1] for f in folds] or ["0", "1", "2", "3", "4"]
        commands = "; ".join(model.validation_command(int(f)) for f in fold_ids if f.isdigit())
        raise InputError(f"no cross-validation probabilities in {model.path}/fold_*/validation/*.npz; "
                         f"create them with: {commands}")
    return predictions


def read_probabilities(npz_path: str) -> Tuple[np.ndarray, dict]:
    """nnU-Net's exported probabilities and their properties (the .pkl beside the .npz)."""
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            probabilities = npz["probabilities"].astype(np.float32)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{npz_path}: not an nnU-Net probability file ({error}); re-export it with "
                         f"--save_probabilities or --npz") from None
    pkl = npz_path[:-4] + ".pkl"
    if not isfile(pkl):
        raise InputError(f"{pkl} not found: nnU-Net writes it next to the .npz; re-export with --save_probabilities")
    return probabilities, load_pickle(pkl)


def image_files(images_folder: str, case: str, file_ending: str) -> List[str]:
    """The case's image files `<case>_XXXX<ending>`, found as nnU-Net finds them: one file per channel,
    or one file holding several (an RGB .png)."""
    files = create_paths_fn(images_folder, sorted(os.listdir(images_folder)), file_ending, case)
    if not files:
        raise InputError(f"{join(images_folder, case + '_0000' + file_ending)} not found: the image of case "
                         f"'{case}' must be in {images_folder}")
    return files


@dataclass
class TrainingCase:
    name: str
    image: np.ndarray  # (I, Z, Y, X), nnU-Net-normalised
    mask: np.ndarray  # (K, Z, Y, X), base prediction, foreground channels
    target: np.ndarray  # (K, Z, Y, X)
    valid: np.ndarray  # (Z, Y, X), 0 on the ignore label
    spacing: Tuple[float, ...]


def load_training_case(model: ModelFolder, npz_path: str, images_folder: str, labels_folder: str,
                       normalisation: Optional[Normalisation] = None) -> TrainingCase:
    case = os.path.basename(npz_path)[:-4]
    probabilities, _ = read_probabilities(npz_path)
    reader = model.reader_writer
    image, properties = reader.read_images(image_files(images_folder, case, model.file_ending))
    label_file = join(labels_folder, case + model.file_ending)
    if not isfile(label_file):
        raise InputError(f"{label_file} not found: run nnUNetv2_plan_and_preprocess for {model.dataset_name} "
                         f"so that gt_segmentations exists")
    label, _ = reader.read_seg(label_file)
    if probabilities.shape[1:] != image.shape[1:] or label.shape[1:] != image.shape[1:]:
        raise InputError(f"{npz_path}: probabilities {probabilities.shape[1:]}, image {image.shape[1:]} and label "
                         f"{label.shape[1:]} differ in shape; were they made from the same dataset?")
    semantics = model.semantics
    target, valid = target_from_label(label[0], semantics)
    return TrainingCase(case, (normalisation or model.normalisation)(image),
                        mask_from_probabilities(probabilities, semantics), target, valid,
                        tuple(float(s) for s in properties["spacing"]))
