"""nnU-Net model folder -> trained `rnca/` folder: find and load the CV cases, train, write logs and plots.

Work happens in `rnca.training/` (replaced by the next run if this one is killed; after an error only its
log stays); `rnca/` is replaced only by a finished, finite refiner.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import replace
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from rnca_nnunet.case_store import store_case
from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.config import TrainConfig, check_config, config_to_dict
from rnca_nnunet.data import ModelFolder, find_cv_predictions, load_training_case, partial_cv_note
from rnca_nnunet.errors import InputError, ReadOutElsewhereWarning
from rnca_nnunet.files import folder_lock
from rnca_nnunet.pictures import plot_progress
from rnca_nnunet.readout import decide_read_out, harm_summary, unrefined_classes
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.refiner_folder import FOLDER_NAME, read_fold_rule, read_refiner, save_fold_rules, save_refiner
from rnca_nnunet.sampling import topology_error_count
from rnca_nnunet.train import TrainingRecord, train_refiner
from rnca_nnunet.validation import Refined, read_out_fold_count, read_out_folds, refine_cases, summary_line


def write_training_outputs(folder: str, refiner: RNCARefiner, record: TrainingRecord, plot: bool = True) -> List[str]:
    """validation.json (the kept refiner's read-out, its per-class decision with its repairs and harm, and its
    before/after on the held-out cases) and, with `plot`, progress.png; returns the files written."""
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
    if plot:
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
        extra += save_fold_rules([rule for _, rule in record.fold_rules], staging)
        save_refiner(refiner, os.path.join(model.path, FOLDER_NAME), extra)
        shutil.rmtree(staging, ignore_errors=True)
    return refiner


def _train_in(staging: str, log_path: str, model: ModelFolder, images_folder: str, labels_folder: str,
              config: TrainConfig, device: torch.device, folds: Optional[Sequence[int]],
              show_progress: bool) -> Tuple[RNCARefiner, TrainingRecord]:
    """Load the CV cases into `staging`/cases and train, logging to `log_path`."""
    with open(log_path, "w") as log_file:
        log = _logger(log_file, show_progress)
        cases = _cv_cases(staging, model, images_folder, labels_folder, folds, log)
        counts = [topology_error_count(case, model.ndim) for case in cases]
        folds_used, why = read_out_fold_count(config.read_out_folds, counts)
        config = replace(config, read_out_folds=folds_used)  # so rnca.json and --read_out_only hold the count used
        (train_cases, val_cases), *more_folds = read_out_folds(cases, config.val_fraction, config.seed, folds_used,
                                                               counts if config.holdout_by_errors else None)
        log(f"rNCA training on {model.path}: {len(train_cases)} training and {len(val_cases)} held-out cases, "
            f"device {device}, config {json.dumps(config_to_dict(config))}")
        log(why)
        trained_on = {"dataset": model.dataset_name, "configuration": model.configuration,
                      "trainer": model.trainer, "plans": model.plans_identifier,
                      "channel_names": model.dataset_json["channel_names"],
                      "held_out_cases": [c.name for c in val_cases],
                      "cv_folds": None if folds is None else sorted(int(f) for f in folds)}
        if config.read_out_folds > 1:  # their rules are saved beside the shipped one, for --read_out_only (few
            # cases may give fewer than K - 1 of them: read_out_folds drops empty folds)
            trained_on["read_out_fold_cases"] = [[c.name for c in fold_val] for _, fold_val in more_folds]
        refiner, record = train_refiner(train_cases, val_cases, model.semantics, model.normalisation, model.ndim,
                                        config, trained_on, device, log, show_progress, model.transpose_forward,
                                        os.path.join(staging, "read_out"), more_folds)
    return refiner, record


def _logger(log_file, show_progress: bool) -> Callable[[str], None]:
    def log(line: str) -> None:
        (tqdm.write if show_progress else print)(line)
        log_file.write(line + "\n")
        log_file.flush()
    return log


def _cv_cases(staging: str, model: ModelFolder, images_folder: str, labels_folder: str,
              folds: Optional[Sequence[int]], log: Callable[[str], None]) -> List:
    """The model's CV cases (of `folds` only, when given), stored in `staging`/cases one at a time."""
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
    return [store_case(load_training_case(model, npz, images_folder, labels_folder), store, model.ndim)
            for npz in predictions.values()]


def _kept_checkpoint(folder: str, log: Callable[[str], None]) -> Optional[int]:
    """The training iteration of the kept rule, as its validation.json says; None, and a line in the log, when
    it says nothing (the iteration only names the checkpoint: the read-out does not depend on it)."""
    path = os.path.join(folder, "validation.json")
    try:
        with open(path, encoding="utf-8") as handle:
            iteration = json.load(handle).get("iteration")
    except (OSError, ValueError, AttributeError):
        iteration = None
    if isinstance(iteration, int) and not isinstance(iteration, bool):
        return iteration
    log(f"{path} names no checkpoint iteration: the new validation.json says null")
    return None


def _kept_folds(folder: str, trained_on: dict, log: Callable[[str], None]) -> Optional[List[int]]:
    """The CV folds a kept refiner was trained on, as its rnca.json says (None: all of them)."""
    if "cv_folds" not in trained_on:
        log(f"{folder}/rnca.json names no folds (trained before they were kept): every CV case not held out is a "
            f"training case")
        return None
    folds = trained_on["cv_folds"]
    if folds is not None and not (isinstance(folds, list) and folds and all(
            isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds)):
        raise InputError(f"{folder}/rnca.json: trained_on.cv_folds must be null or a list of fold numbers, got "
                         f"{folds!r}; retrain with nnUNetv2_train_rnca")
    return folds


def _read_out_on(refiner: RNCARefiner, model: ModelFolder) -> RNCARefiner:
    """`refiner` with `trained_on.read_out_on` naming `model` where its rule was trained on another model's CV
    cases (a refiner copied from another trainer or plans), so that predicting with it there does not warn."""
    trained_on = {key: value for key, value in refiner.trained_on.items() if key != "read_out_on"}
    if (trained_on.get("trainer"), trained_on.get("plans")) != (model.trainer, model.plans_identifier):
        trained_on["read_out_on"] = {"trainer": model.trainer, "plans": model.plans_identifier}
    return refiner.replace(trained_on=trained_on)


def _held_out_by_every_fold(kept: RNCARefiner, folder: str, cases: Sequence, val_cases: List, folds: int,
                            work_folder: str, log: Callable[[str], None]) -> Tuple[List, Optional[List[Refined]]]:
    """The cases that choose the read-out again and their label maps: with `read_out_folds` K > 1 those every
    fold's rule held out, each refined by its own rule (from the folder's `read_out_fold_k.safetensors`), as at
    training; otherwise the kept rule's held-out cases (maps made by `decide_read_out`)."""
    if folds == 1:
        return val_cases, None
    fold_cases = kept.trained_on.get("read_out_fold_cases")
    if fold_cases is None:
        log(f"trained with read_out_folds {folds} before the folds' rules were kept: the read-out is chosen again "
            f"on the kept rule's {len(val_cases)} held-out cases only; retrain with nnUNetv2_train_rnca to choose "
            f"it on every CV case")
        return val_cases, None
    if not (isinstance(fold_cases, list) and len(fold_cases) < folds and all(
            isinstance(names, list) and names and all(isinstance(n, str) for n in names) for names in fold_cases)):
        raise InputError(f"{folder}/rnca.json: trained_on.read_out_fold_cases must list the case names each of at "
                         f"most {folds - 1} other read-out folds held out; retrain with nnUNetv2_train_rnca")
    named = [name for names in [[case.name for case in val_cases], *fold_cases] for name in names]
    if len(set(named)) < len(named):
        raise InputError(f"{folder}/rnca.json: a case is held out twice in trained_on.held_out_cases and "
                         f"read_out_fold_cases (each CV case is held out by one rule); retrain with "
                         f"nnUNetv2_train_rnca")
    by_name = {case.name: case for case in cases}
    missing = sorted({name for names in fold_cases for name in names} - set(by_name))
    if missing:
        raise InputError(f"read-out fold cases {missing[:3]} of {folder} have no CV prediction in "
                         f"{os.path.dirname(folder)}; retrain with nnUNetv2_train_rnca")
    rule = kept.replace(clean_up=CleanUp())
    refined = refine_cases(rule, val_cases, os.path.join(work_folder, "held_out"))
    every = list(val_cases)
    for index, names in enumerate(fold_cases, start=2):
        fold_val = [by_name[name] for name in names]
        fold_rule = rule.replace(model=read_fold_rule(folder, index, kept.model.shape))
        refined += refine_cases(fold_rule, fold_val, os.path.join(work_folder, f"fold_{index}"))
        every += fold_val
    log(f"read-out folds: the rules of {len(fold_cases) + 1} folds held out {len(every)} cases, each refined by a "
        f"rule that did not train on it")
    return every, refined


def decide_read_out_again(model: ModelFolder, images_folder: str, labels_folder: str, device: torch.device,
                          show_progress: bool = True) -> RNCARefiner:
    """Keep the rule of the model folder's `rnca/` and choose its read-out again on the CV cases it was
    trained and held out on (`--read_out_only`): a refiner trained before a read-out setting existed gets it
    without a training. rnca/ is replaced atomically; its training log and progress.png stay, beside
    read_out_log.txt and a new validation.json."""
    folder = os.path.join(model.path, FOLDER_NAME)
    staging = os.path.join(model.path, FOLDER_NAME + ".training")
    with folder_lock(model.path, "nnUNetv2_train_rnca"):
        kept = read_refiner(folder, device)
        held_out = kept.trained_on.get("held_out_cases")
        if not held_out:
            raise InputError(f"{folder}/rnca.json names no held-out cases (trained before they were kept): retrain "
                             f"with nnUNetv2_train_rnca")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReadOutElsewhereWarning)  # the read-out is being chosen on this model
            kept.check_compatible(model)
        config = TrainConfig(**{name: kept.trained_on.get("train", {}).get(name, getattr(TrainConfig, name))
                                for name in ("guard_search", "keep_base_loops", "fall_back", "read_out_folds")})
        if config.read_out_folds is None:  # trained before the key existed: its held-out cases chose
            config = replace(config, read_out_folds=1)
        check_config(config, f"{folder}/rnca.json trained_on.train")
        if os.path.isdir(staging):
            shutil.rmtree(staging)
        os.makedirs(staging)
        log_path = os.path.join(staging, "read_out_log.txt")
        try:
            with open(log_path, "w") as log_file:
                log = _logger(log_file, show_progress)
                cases = _cv_cases(staging, model, images_folder, labels_folder,
                                  _kept_folds(folder, kept.trained_on, log), log)
                missing = sorted(set(held_out) - {case.name for case in cases})
                if missing:
                    raise InputError(f"held-out cases {missing[:3]} of {folder} have no CV prediction in {model.path}; "
                                     f"retrain with nnUNetv2_train_rnca")
                train_cases = [case for case in cases if case.name not in held_out]
                val_cases = [case for case in cases if case.name in held_out]
                log(f"read-out of {folder} chosen again: {len(train_cases)} training and {len(val_cases)} held-out "
                    f"cases, device {device}; it was {kept.clean_up}")
                kept = _read_out_on(kept, model)
                own_cases = len(val_cases)
                val_cases, refined = _held_out_by_every_fold(kept, folder, cases, val_cases, config.read_out_folds,
                                                             os.path.join(staging, "read_out"), log)
                refiner, final = decide_read_out(kept, train_cases, val_cases, config, log,
                                                 os.path.join(staging, "read_out"), refined, own_cases)
                final.iteration = _kept_checkpoint(folder, log)
                log(f"read-out {refiner.clean_up}: {summary_line(final)}; {harm_summary(final)}")
        finally:
            for name in ("cases", "read_out"):
                shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
        record = TrainingRecord([], [], final)
        kept_files = [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                      if name in ("training_log.txt", "progress.png") or name.startswith("read_out_fold_")]
        save_refiner(refiner, folder,
                     [*write_training_outputs(staging, refiner, record, plot=False), *kept_files, log_path])
        shutil.rmtree(staging, ignore_errors=True)
    return refiner
