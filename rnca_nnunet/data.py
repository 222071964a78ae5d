"""Find and read what an nnU-Net model folder already produced: CV probabilities, images, labels.

Everything stays in original image space (nnU-Net's reader layout, (C, Z, Y, X)), so a refiner is
trained on exactly the arrays it later refines.
"""
from __future__ import annotations

import glob
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
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
    def transpose_forward(self) -> List[int]:
        """nnU-Net's axis order for this plan; a 2d configuration slices along the first of these axes."""
        return [int(a) for a in self.plans_manager.transpose_forward]

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
    try:
        dataset_json, plans = load_json(join(path, "dataset.json")), load_json(join(path, "plans.json"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: dataset.json or plans.json is not valid JSON ({error}); copy them again from "
                         f"the training run") from None
    model = ModelFolder(path, os.path.basename(os.path.dirname(path)), parts[0], parts[1], parts[2], dataset_json,
                        plans)
    try:  # everything later steps read from the two files, read once here so a damaged one is named now
        model.file_ending, model.semantics, model.reader_writer, model.transpose_forward, model.ndim, model.normalisation
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError) as error:
        raise InputError(f"{path}: dataset.json or plans.json is not nnU-Net's ({type(error).__name__}: {error}); "
                         f"copy them again from the training run") from None
    return model


def find_cv_predictions(model: ModelFolder, log: Callable[[str], None] = print) -> Dict[str, str]:
    """Case name -> fold_k/validation/<case>.npz of the numeric folds; a clear error says how to create missing ones.

    `fold_all` is skipped: it was trained on every case, so its "validation" outputs are predictions of
    its own training cases, not the honest cross-validation errors a refiner must learn to fix."""
    folds = sorted(f for f in glob.glob(join(model.path, "fold_*")) if os.path.basename(f)[5:].isdigit())
    if os.path.isdir(join(model.path, "fold_all")):
        log(f"{join(model.path, 'fold_all')} ignored: its predictions are of its own training cases")
    predictions: Dict[str, str] = {}
    for fold in folds:
        for npz in sorted(glob.glob(join(fold, "validation", "*.npz"))):
            case = os.path.basename(npz)[:-4]
            if case in predictions:
                raise InputError(f"case {case} has CV predictions in two folds ({predictions[case]} and {npz}); "
                                 f"remove the stale one")
            predictions[case] = npz
    if not predictions:
        fold_ids = [int(os.path.basename(f)[5:]) for f in folds] or [0, 1, 2, 3, 4]
        commands = "; ".join(model.validation_command(f) for f in fold_ids)
        raise InputError(f"no cross-validation probabilities in {model.path}/fold_*/validation/*.npz; "
                         f"create them with: {commands}")
    return predictions


def partial_cv_note(model: ModelFolder, predictions: Dict[str, str], preprocessed_folder: str) -> Optional[str]:
    """A line for the log when some folds of nnU-Net's `splits_final.json` have no CV predictions, naming the
    commands that make them (None when every fold has them, or no split file exists).

    The rule learns only the kinds of errors it is shown: on TopoMortar, folds 0-1 held none of the small-brick
    walls, and a rule trained on them left 19.75 loop errors per val wall; trained on all five folds, 5.0."""
    splits_file = join(preprocessed_folder, "splits_final.json")
    if not isfile(splits_file):
        return None
    try:
        folds = [split["val"] for split in load_json(splits_file)]
        if not all(isinstance(cases, list) and all(isinstance(case, str) for case in cases) for cases in folds):
            raise TypeError("a 'val' entry is not a list of case names")
        missing = [fold for fold, cases in enumerate(folds) if not set(cases) <= set(predictions)]
    except (ValueError, TypeError, KeyError) as error:
        raise InputError(f"{splits_file}: not nnU-Net's split file (a list of {{'train': [...], 'val': [...]}}; "
                         f"{type(error).__name__}); restore it from the training that made the CV predictions "
                         f"or delete it (nnU-Net writes a new one, which may split the cases differently)") from None
    if not missing:
        return None
    total = len({case for cases in folds for case in cases})
    return (f"CV predictions of {len(predictions)} of the {total} training cases only: the rule learns only the "
            f"errors of these cases; for every case run first: "
            + "; ".join(model.validation_command(fold) for fold in missing))


MAX_VALUES = 2 ** 33  # 32 GiB of float32: no case nnU-Net predicts on one machine holds more


def read_probabilities(npz_path: str, spatial_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """nnU-Net's exported probabilities (C, *spatial), refused unless of the image's `spatial_shape` when given
    (else of at most MAX_VALUES values; checked in the header, before anything is allocated), finite and in
    [0, 1]. Only the array is read (no pickles); the properties nnU-Net keeps in the .pkl beside it are taken
    from the image."""
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            shape = _stored_shape(npz, "probabilities")
            if spatial_shape is None and int(np.prod(shape, dtype=np.float64)) > MAX_VALUES:
                raise InputError(f"{npz_path}: probabilities of shape {tuple(shape)} hold more than {MAX_VALUES} "
                                 f"values; re-export the case with nnU-Net")
            if spatial_shape is not None and tuple(shape[1:]) != tuple(spatial_shape):
                raise InputError(f"{npz_path}: probabilities of shape {tuple(shape[1:])} do not fit the image's "
                                 f"{tuple(spatial_shape)}; were they made from the same dataset?")
            probabilities = npz["probabilities"].astype(np.float32)
    except InputError:  # the shape checks above: already one line
        raise
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as error:
        raise InputError(f"{npz_path}: not a readable nnU-Net probability file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'truncated'}); re-export it with "
                         f"--save_probabilities or --npz") from None
    if not np.isfinite(probabilities).all():
        raise InputError(f"{npz_path}: probabilities contain NaN or infinite values; re-export this case "
                         f"(nnU-Net's own output is never non-finite: the file or the model is damaged)")
    if probabilities.min() < -1e-3 or probabilities.max() > 1 + 1e-3:
        raise InputError(f"{npz_path}: values outside [0, 1] ({probabilities.min():.3g} .. "
                         f"{probabilities.max():.3g}) are not probabilities; export with --save_probabilities")
    return probabilities


def _stored_shape(npz, name: str) -> Tuple[int, ...]:
    """An .npz member's shape from its .npy header (a file that is not an .npz has no `zip`: AttributeError)."""
    with npz.zip.open(name + ".npy") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read_header(handle)[0]


def read_image(reader: BaseReaderWriter, files: List[str], segmentation: bool = False) -> Tuple[np.ndarray, dict]:
    """A raw image (or a label map) through the dataset's reader-writer, refused with the file named if it is
    unreadable or not finite."""
    try:
        image, properties = reader.read_seg(files[0]) if segmentation else reader.read_images(files)
    except Exception as error:  # readers raise anything from RuntimeError to struct.error on broken files
        raise InputError(f"{files[0]}: cannot be read by {type(reader).__name__} ({type(error).__name__}: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else 'broken file'}); "
                         f"replace the file") from None
    if not np.isfinite(image).all():
        raise InputError(f"{files[0]}: the image contains NaN or infinite values; fix or replace the file")
    return image, properties


def find_unusable_image(cases: List[List[str]], reader: BaseReaderWriter, channels: int) -> Optional[str]:
    """The first case whose image cannot be read, is not finite or has the wrong channel count, as an error
    line naming the file; None when all are usable."""
    for files in cases:
        try:
            image, _ = read_image(reader, files)
        except InputError as error:
            return str(error)
        if image.shape[0] != channels:
            return (f"{files[0]}: {image.shape[0]} image channel(s), the model was trained on {channels}; give every "
                    f"channel as <case>_XXXX files like the training images")
    return None


def image_files(images_folder: str, case: str, file_ending: str) -> List[str]:
    """The case's image files `<case>_XXXX<ending>`, found as nnU-Net finds them: one file per channel,
    or one file holding several (an RGB .png)."""
    if not os.path.isdir(images_folder):
        raise InputError(f"{images_folder} not found: the images of the cases must be there")
    files = create_paths_fn(images_folder, sorted(os.listdir(images_folder)), file_ending, case)
    if not files:
        raise InputError(f"{join(images_folder, case + '_0000' + file_ending)} not found: the image of case "
                         f"'{case}' must be in {images_folder}")
    return files


@dataclass
class TrainingCase:
    """One CV case, every array in nnU-Net's axis order (`transpose_forward`)."""
    name: str
    image: np.ndarray  # (I, Z, Y, X), nnU-Net-normalised
    mask: np.ndarray  # (K, Z, Y, X), base prediction, foreground channels
    target: np.ndarray  # (K, Z, Y, X)
    valid: np.ndarray  # (Z, Y, X), 0 on the ignore label
    spacing: Tuple[float, ...]


def check_label_values(label: np.ndarray, semantics: LabelSemantics, path: str) -> None:
    """A value dataset.json does not name would be trained as background, and the refiner that learned it
    would replace a good one: refuse it, naming the file."""
    manager = semantics.manager
    known = {*manager.all_labels, *([] if manager.ignore_label is None else [manager.ignore_label])}
    unknown = sorted(int(v) for v in np.unique(label) if int(v) not in known)
    if unknown:
        raise InputError(f"{path} holds label values {unknown[:5]} that dataset.json does not name "
                         f"(labels {sorted(known)}): fix the label file or dataset.json, then run "
                         f"nnUNetv2_plan_and_preprocess again")


def load_training_case(model: ModelFolder, npz_path: str, images_folder: str, labels_folder: str,
                       normalisation: Optional[Normalisation] = None) -> TrainingCase:
    case = os.path.basename(npz_path)[:-4]
    probabilities = read_probabilities(npz_path)
    reader = model.reader_writer
    image, properties = read_image(reader, image_files(images_folder, case, model.file_ending))
    label_file = join(labels_folder, case + model.file_ending)
    if not isfile(label_file):
        raise InputError(f"{label_file} not found: run nnUNetv2_plan_and_preprocess for {model.dataset_name} "
                         f"so that gt_segmentations exists")
    label, _ = read_image(reader, [label_file], segmentation=True)
    if probabilities.shape[1:] != image.shape[1:] or label.shape[1:] != image.shape[1:]:
        raise InputError(f"{npz_path}: probabilities {probabilities.shape[1:]}, image {image.shape[1:]} and label "
                         f"{label.shape[1:]} differ in shape; were they made from the same dataset?")
    semantics = model.semantics
    check_label_values(label, semantics, label_file)
    target, valid = target_from_label(label[0], semantics)
    axes = model.transpose_forward  # nnU-Net's axis order: a 2D rule learns the slices nnU-Net's 2d sees
    to_rule_axes = lambda array: np.ascontiguousarray(array.transpose(0, *(a + 1 for a in axes)))  # noqa: E731
    return TrainingCase(case, to_rule_axes((normalisation or model.normalisation)(image)),
                        to_rule_axes(mask_from_probabilities(probabilities, semantics)), to_rule_axes(target),
                        to_rule_axes(valid[None])[0], tuple(float(properties["spacing"][a]) for a in axes))
