"""nnU-Net model folder -> trained `rnca/` folder: find and load the CV cases, train, write logs and plots.

Work happens in `rnca.training/` (replaced by the next run if this one is killed; after an error only its
log stays); `rnca/` is replaced only by a finished, finite refiner.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from rnca_nnunet.case_store import store_case
from rnca_nnunet.config import TrainConfig, config_to_dict
from rnca_nnunet.data import ModelFolder, find_cv_predictions, load_training_case, partial_cv_note
from rnca_nnunet.errors import InputError
from rnca_nnunet.files import folder_lock
from rnca_nnunet.pictures import plot_progress
from rnca_nnunet.readout import unrefined_classes
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.refiner_folder import FOLDER_NAME, save_refiner
from rnca_nnunet.sampling import topology_error_count
from rnca_nnunet.train import TrainingRecord, train_refiner
from rnca_nnunet.validation import split_cases


def write_training_outputs(folder: str, refiner: RNCARefiner, record: TrainingRecord) -> List[str]:
    """validation.json (the kept refiner's read-out, its per-class decision with its repairs and harm, and its
    before/after on the held-out cases) and progress.png; returns the files written."""
    os.makedirs(folder, exist_ok=True)
    unrefined = unrefined_classes(refiner)
    files = []
    if record.final:
        best = record.final
        path = os.path.join(folder, "validation.json")
        decision = {name: {"refined": name not in unrefined, "score": best.decision_score([name]), **best.harm([name])}
                    for name in best.after}
        with open(path, "w") as handle:
            json.dump({"iteration": best.iteration, "read_out": str(refiner.clean_up), "per_class": decision,
                       "mean_before": best.before, "mean_after": best.after, "per_case": best.per_case},
                      handle, indent=2)
        files.append(path)
    files.append(plot_progress(os.path.join(folder, "progress.png"), record.validations, record.losses))
    return files


def train_from_model_folder(model: ModelFolder, images_folder: str, labels_folder: str, config: TrainConfig,
                            device: torch.device, folds: Optional[Sequence[int]] = None,
                            show_progress: bool = True) -> RNCARefiner:
    """Train on a model folder's CV predictions and write `rnca/` into it (atomically, logs included).

    Work happens in `rnca.training/`; `rnca/` is replaced only by a finished, finite refiner. The model folder
    is locked meanwhile: a second training into it stops at once with one line."""
    staging = os.path.join(model.path, FOLDER_NAME + ".training")
    with folder_lock(model.path, "nnUNetv2_train_rnca"):
        if os.path.isdir(staging):
            shutil.rmtree(staging)
        os.makedirs(staging)
        log_path = os.path.join(staging, "training_log.txt")
        try:
            refiner, record = _train_in(staging, log_path, model, images_folder, labels_folder, config, device,
                                        folds, show_progress)
        finally:  # the case copies can be gigabytes; a failed run keeps only its log
            for name in ("cases", "read_out"):
                shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
        extra = write_training_outputs(staging, refiner, record) + [log_path]
        save_refiner(refiner, os.path.join(model.path, FOLDER_NAME), extra)
        shutil.rmtree(staging, ignore_errors=True)
    return refiner


def _train_in(staging: str, log_path: str, model: ModelFolder, images_folder: str, labels_folder: str,
              config: TrainConfig, device: torch.device, folds: Optional[Sequence[int]],
              show_progress: bool) -> Tuple[RNCARefiner, TrainingRecord]:
    """Load the CV cases into `staging`/cases and train, logging to `log_path`."""
    with open(log_path, "w") as log_file:
        def log(line: str) -> None:
            (tqdm.write if show_progress else print)(line)
            log_file.write(line + "\n")
            log_file.flush()

        predictions = find_cv_predictions(model, log)
        if folds is not None:
            wanted = {f"fold_{f}" for f in folds}
            predictions = {c: p for c, p in predictions.items()
                           if os.path.basename(os.path.dirname(os.path.dirname(p))) in wanted}
            if not predictions:
                raise InputError(f"no CV predictions of folds {list(folds)} in {model.path}; run "
                                 f"{model.validation_command(list(folds)[0])}")
        note = partial_cv_note(model, predictions, os.path.dirname(labels_folder))  # gt_segmentations' dataset
        if note:
            log(note)
        store = os.path.join(staging, "cases")  # one case in memory at a time, here and in training
        cases = [store_case(load_training_case(model, npz, images_folder, labels_folder), store, model.ndim)
                 for npz in predictions.values()]
        counts = [topology_error_count(case, model.ndim) for case in cases] if config.holdout_by_errors else None
        train_cases, val_cases = split_cases(cases, config.val_fraction, config.seed, counts)
        log(f"rNCA training on {model.path}: {len(train_cases)} training and {len(val_cases)} held-out cases, "
            f"device {device}, config {json.dumps(config_to_dict(config))}")
        trained_on = {"dataset": model.dataset_name, "configuration": model.configuration,
                      "trainer": model.trainer, "plans": model.plans_identifier,
                      "channel_names": model.dataset_json["channel_names"],
                      "held_out_cases": [c.name for c in val_cases]}
        refiner, record = train_refiner(train_cases, val_cases, model.semantics, model.normalisation, model.ndim,
                                        config, trained_on, device, log, show_progress, model.transpose_forward,
                                        os.path.join(staging, "read_out"))
    return refiner, record
