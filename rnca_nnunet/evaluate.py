"""Evaluate prediction folders against reference labels, and compare a refined folder with its base."""
from __future__ import annotations

import json
import os
import zipfile
from multiprocessing import get_context
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, subfiles
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

from rnca_nnunet.cleanup import rewritten_share
from rnca_nnunet.data import read_image
from rnca_nnunet.errors import InputError
from rnca_nnunet.files import atomic_path
from rnca_nnunet.metrics import case_metrics, harm_and_repair, harm_line, mean_metrics
from rnca_nnunet.pictures import write_overlay, write_uncertainty_picture

COLUMNS = ("dice", "cldice", "beta0_error", "beta1_error", "beta0_signed", "beta1_signed", "assd", "hd95", "broken")


LABEL_ENDINGS = (".nii.gz", ".nrrd", ".mha", ".nii", ".png", ".tif", ".tiff", ".bmp")


def _file_ending(folder: str) -> str:
    for ending in LABEL_ENDINGS:
        if subfiles(folder, suffix=ending):
            return ending
    raise InputError(f"no label files in {folder}; expected .nii.gz, .png, .tif, ... files")


@dataclass(frozen=True)
class LabelDefinition:
    """Classes to report (name -> labels), the ignore label, and the label values a prediction may hold
    (None: unknown, when no dataset.json was found)."""
    classes: Dict[str, List[int]]
    ignore_label: Optional[int]
    allowed: Optional[Tuple[int, ...]]


def label_definition(dataset_json_file: Optional[str], folders: Sequence[str], reference_files: Sequence[str],
                     prediction_files: Sequence[str], reader, log: Callable[[str], None] = print) -> LabelDefinition:
    """From dataset.json as nnU-Net's evaluation takes it (-djfile, else the one nnU-Net writes beside its
    predictions, else the raw dataset's above the references); without one, every label value present in the
    references or the predictions (a label only a prediction holds is an error to report, not to skip)."""
    from rnca_nnunet.state import LabelSemantics

    candidates = [dataset_json_file] if dataset_json_file else \
        [join(f, "dataset.json") for f in [*folders, os.path.dirname(os.path.dirname(os.path.abspath(reference_files[0])))]]
    for path in candidates:
        if isfile(path):
            try:
                semantics = LabelSemantics(load_json(path)["labels"], load_json(path).get("regions_class_order"))
                allowed = tuple(sorted({0, *semantics.manager.all_labels}))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
                raise InputError(f"{path}: not a valid dataset.json ({error}); pass a good one with -djfile") from None
            return LabelDefinition(semantics.classes, semantics.ignore_label, allowed)
    if dataset_json_file:
        raise InputError(f"-djfile {dataset_json_file} not found")
    values = sorted({int(v) for f in [*reference_files, *prediction_files]
                     for v in np.unique(read_image(reader, [f], segmentation=True)[0]) if v > 0})
    log(f"no dataset.json beside -pred or above -ref: every label value found is scored as its own class "
        f"({[f'label_{v}' for v in values][:8]}); pass -djfile to name the classes and the ignore label")
    return LabelDefinition({f"label_{v}": [v] for v in values}, None, None)


class CaseJob(NamedTuple):
    reference_file: str
    prediction_files: Dict[str, str]  # folder key ("base", "refined") -> file
    labels: LabelDefinition
    reader_class: type
    png_folder: Optional[str]
    image_file: Optional[str]
    uncertainty_file: Optional[str]  # the refined prediction's <case>_uncertainty.npz, when it wrote one


def _evaluate_case(job: CaseJob) -> Dict:
    reader = job.reader_class()
    reference, properties = read_image(reader, [job.reference_file], segmentation=True)
    entry = {"case": os.path.basename(job.reference_file)}
    segmentations = {}
    for key, path in job.prediction_files.items():
        prediction, _ = read_image(reader, [path], segmentation=True)
        if prediction.shape != reference.shape:
            raise InputError(f"{path}: shape {prediction.shape[1:]} differs from the reference {job.reference_file} "
                             f"{reference.shape[1:]}; predictions must be in the reference's image space")
        if job.labels.allowed is not None:
            unknown = sorted(set(np.unique(prediction).astype(int).tolist()) - set(job.labels.allowed))
            if unknown:
                raise InputError(f"{path}: label values {unknown} are not in dataset.json (labels "
                                 f"{list(job.labels.allowed)}); was it predicted by another model?")
        if job.labels.ignore_label is not None:  # as nnU-Net's compute_metrics: the ignore region is scored nowhere
            prediction = np.where(reference == job.labels.ignore_label, 0, prediction)
        entry[key] = case_metrics(prediction[0], reference[0], properties["spacing"], job.labels.classes)
        segmentations[key] = prediction[0]
    if "base" in segmentations and "refined" in segmentations:
        entry["changed_cells"] = {name: int(np.count_nonzero(np.isin(segmentations["base"], labels)
                                                             != np.isin(segmentations["refined"], labels)))
                                  for name, labels in job.labels.classes.items()}
        entry["rewritten"] = rewritten_share(segmentations["refined"], segmentations["base"])
    uncertainty = _read_uncertainty(job.uncertainty_file, reference.shape[1:]) if job.uncertainty_file else None
    if uncertainty is not None:
        entry["uncertainty"] = {"cells": uncertainty["cells"], "topology": uncertainty["topology"]}
    if job.png_folder:
        image = reader.read_images([job.image_file])[0][0] if job.image_file else None
        base = segmentations.get("base", next(iter(segmentations.values())))
        refined = next((v for k, v in segmentations.items() if k != "base"), None)
        stem = case_stem(job.reference_file)
        write_overlay(join(job.png_folder, stem + ".png"), image, base, refined, reference[0])
        if uncertainty is not None:
            write_uncertainty_picture(join(job.png_folder, stem + "_uncertainty.png"), image, uncertainty["map"],
                                      segmentations.get("refined"))
    return entry


def case_stem(path: str) -> str:
    """A case's name without folder and file ending (`case_001.nii.gz` -> `case_001`): how pictures are named."""
    name = os.path.basename(path)
    return next((name[: -len(e)] for e in LABEL_ENDINGS if name.endswith(e)), name.split(".")[0])


def _read_uncertainty(path: str, shape: Sequence[int]) -> Dict:
    """`<case>_uncertainty.npz` as predict.write_uncertainty writes it (arrays only, never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            values = {"map": np.asarray(data["uncertainty"], np.float32), "cells": float(data["cells"]),
                      "topology": float(data["topology"])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise InputError(f"{path}: not an uncertainty file of nnUNetv2_predict_rnca --save_uncertainty "
                         f"({type(error).__name__}: {error}); predict it again or remove it") from None
    if tuple(values["map"].shape) != tuple(shape):
        raise InputError(f"{path}: its map {values['map'].shape} does not fit the reference {tuple(shape)}; "
                         f"predict it again or remove it")
    shares = (values["map"].min(initial=0.0), values["map"].max(initial=0.0), values["cells"], values["topology"])
    if not all(0.0 <= share <= 1.0 for share in shares):  # shares of runs: NaN fails too
        raise InputError(f"{path}: holds values outside 0..1 or not finite (map, cells, topology); "
                         f"predict it again or remove it")
    return values


def _image_file(images_folder: Optional[str], reference_file: str, ending: str) -> Optional[str]:
    """The raw image `<case>_0000<ending>` of a reference file, for picture backgrounds."""
    if images_folder is None:
        return None
    path = join(images_folder, case_stem(reference_file) + "_0000" + ending)
    if not isfile(path):
        raise InputError(f"{path} not found: -images must hold the raw images <case>_0000{ending}")
    return path


def evaluate_folders(reference_folder: str, predictions: Dict[str, str], num_processes: int = 2,
                     png_folder: Optional[str] = None, images_folder: Optional[str] = None,
                     dataset_json_file: Optional[str] = None, log: Callable[[str], None] = print) -> Dict:
    """Per-case and mean metrics of each prediction folder (`{"base": folder, "refined": folder}`), classes
    from dataset.json (see `label_definition`); with `png_folder`, an overlay per case of label, base and
    refined (on the raw image from `images_folder`)."""
    ending = _file_ending(reference_folder)
    references = subfiles(reference_folder, suffix=ending, sort=True)
    if not references:
        raise InputError(f"no {ending} label files in -ref {reference_folder}")
    pairs = []
    for reference in references:
        name = os.path.basename(reference)
        files = {key: join(folder, name) for key, folder in predictions.items()}
        missing = [f for f in files.values() if not isfile(f)]
        if missing:
            raise InputError(f"{missing[0]} not found: every reference case needs a prediction of the same name")
        pairs.append((reference, files))
    reader_class = determine_reader_writer_from_file_ending(ending, references[0], verbose=False)
    labels = label_definition(dataset_json_file, list(predictions.values()), references,
                              [f for _, files in pairs for f in files.values()], reader_class(), log)
    if not labels.classes:
        raise InputError("no foreground label in the references or predictions and no dataset.json; pass -djfile")
    jobs = [CaseJob(r, f, labels, reader_class, png_folder, _image_file(images_folder, r, ending),
                    _uncertainty_file(predictions.get("refined"), r)) for r, f in pairs]
    if num_processes > 1:
        with get_context("spawn").Pool(num_processes) as pool:
            per_case = pool.map(_evaluate_case, jobs)
    else:
        per_case = [_evaluate_case(j) for j in jobs]
    summary = {"per_case": per_case, "mean": {k: mean_metrics([c[k] for c in per_case]) for k in predictions}}
    if "base" in predictions:
        summary["repair"] = {k: repair_rates(per_case, k) for k in predictions if k != "base"}
    return summary


def _uncertainty_file(refined_folder: Optional[str], reference_file: str) -> Optional[str]:
    if refined_folder is None:
        return None
    path = join(refined_folder, case_stem(reference_file) + "_uncertainty.npz")
    return path if isfile(path) else None


def repair_rates(per_case: Sequence[Dict], method: str) -> Dict[str, Dict[str, float]]:
    """Per class, `method` against the base: broken cases repaired, intact ones newly broken, cases made worse
    (`metrics.harm_and_repair`)."""
    return {name: harm_and_repair([(c["base"][name], c[method][name]) for c in per_case])
            for name in per_case[0]["base"]}


def format_table(summary: Dict, title: Optional[str] = None) -> str:
    """A markdown table: one row per prediction folder and class, plus relative change when refined."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| prediction | class | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    means = summary["mean"]
    for key, per_class in means.items():
        for name, m in per_class.items():
            lines.append(f"| {key} | {name} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + " |")
    if "base" in means and "refined" in means:
        for name in means["base"]:
            b, r = means["base"][name], means["refined"][name]
            change = [f"{100 * (r[c] - b[c]) / b[c]:+.0f}%" if b[c] else f"{r[c] - b[c]:+.3f}" for c in COLUMNS]
            lines.append(f"| change | {name} | " + " | ".join(change) + " |")
        for name, rate in summary["repair"]["refined"].items():
            lines.append(f"\n{name}: {harm_line(rate)}")
    return "\n".join(lines)


def save_summary(summary: Dict, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(summary, handle, indent=2)
