"""Pool training of an rNCA on (image, imperfect prediction, label) cases; one readable loop.

Growing-NCA style sample pool: evolved states go back into the pool, so the rule learns to keep a
mask stable and keep cleaning it well past the training horizon. Patches come from sampling.py, the
loss from loss.py and loss_weights.py, held-out checkpoint scores from validation.py, and the read-out
sizes from readout.py. A checkpoint is the weights' moving average (`ema_decay`; 0: the weights), chosen
on held-out topology errors and harm, not on the loss, and so is the read-out that keeps the base's
topology and outline where the rule's changes do not pay (readout.decide_read_out).
"""
from __future__ import annotations

import functools
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.config import TrainConfig, config_to_dict
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.errors import InputError
from rnca_nnunet.loss import refinement_loss
from rnca_nnunet.loss_weights import loss_weights
from rnca_nnunet.model import RNCA, RuleShape
from rnca_nnunet.readout import decide_read_out, harm_summary
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.sampling import PatchSampler
from rnca_nnunet.state import LabelSemantics, Normalisation
from rnca_nnunet.validation import Fold, ValidationResult, refine_cases, summary_line, validate


@dataclass
class TrainingRecord:
    """Losses, held-out validations per checkpoint, the final refiner's validation (None without held-out cases)
    and the read-out folds' rules, each with the names of the cases it held out (kept so that the read-out can
    be chosen again on every CV case without training them again)."""
    losses: List[float]
    validations: List[ValidationResult]
    final: Optional[ValidationResult]
    fold_rules: List[Tuple[List[str], RNCA]] = field(default_factory=list)


CHECKPOINT_CLEAN_UP = 4  # cells: checkpoints are scored without one-to-three-cell specks and pinholes
# and without `keep_base_loops`, which would hide the loops the rule breaks: scored with it, the TopoMortar
# noisy-label rule kept a checkpoint that broke 1.90 loops per wall, and restoring them cost 4.5 Dice points


class TrainingDiverged(InputError):
    """The loss or the weights became non-finite: nothing is saved, the previous refiner stays."""


def restores_global_random_state(train: Callable) -> Callable:
    """Seed Python's, NumPy's and torch's global generators for `train` and put them back afterwards.

    batchgenerators' augmentations draw from NumPy's and Python's global generators, so a training is
    reproducible only if they are seeded (unseeded, no two trainings were alike); a program that trains a
    refiner must not find its own generators reseeded after it."""
    @functools.wraps(train)
    def wrapper(*args, **kwargs):
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
                return train(*args, **kwargs)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    return wrapper


def update_average(average: dict, model: torch.nn.Module, decay: float, iteration: int) -> None:
    """The weights' exponential moving average, its decay ramped up as (1 + i) / (10 + i) so that early
    checkpoints are not pulled towards the random initial weights; decay 0 keeps the weights themselves."""
    weight = 1 - min(decay, (1 + iteration) / (10 + iteration))
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                average[name].lerp_(value, weight)
            else:
                average[name].copy_(value)


@restores_global_random_state
def train_refiner(train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase], semantics: LabelSemantics,
                  normalisation: Normalisation, ndim: int, config: TrainConfig, trained_on: dict,
                  device: torch.device, log: Callable[[str], None] = print,
                  show_progress: bool = True, transpose_forward: Sequence[int] = (0, 1, 2),
                  work_folder: Optional[str] = None, more_folds: Sequence[Fold] = ()
                  ) -> Tuple[RNCARefiner, TrainingRecord]:
    """Train a rule; returns the refiner with the best held-out checkpoint and read-out, and the record.
    Cases may be in memory or on disk (case_store.py); `work_folder` keeps the read-out search's label maps
    on disk. `more_folds` (validation.read_out_folds): a rule is trained on each too, only so that its held-out
    cases join `val_cases` in choosing the read-out. Raises TrainingDiverged as soon as the loss or a weight is
    not finite."""
    refiner, losses, validations = _train_rule(train_cases, val_cases, semantics, normalisation, ndim, config,
                                               trained_on, device, log, show_progress, transpose_forward, config.seed)
    final, fold_rules = None, []
    if val_cases:
        cases, refined = list(val_cases), refine_cases(refiner, val_cases, _subfolder(work_folder, "held_out"))
        for index, (fold_train, fold_val) in enumerate(more_folds, start=2):
            name = f"read-out fold {index} of {len(more_folds) + 1}"
            log(f"{name}: a rule trained on {len(fold_train)} cases to score the read-out on {len(fold_val)} more")
            fold_refiner, _, _ = _train_rule(fold_train, fold_val, semantics, normalisation, ndim, config, trained_on,
                                             device, lambda line: log(f"{name}: {line}"), show_progress,
                                             transpose_forward, (config.seed + index - 1) % 2 ** 32)
            cases += fold_val
            refined += refine_cases(fold_refiner, fold_val, _subfolder(work_folder, f"fold_{index}"))
            fold_rules.append(([case.name for case in fold_val], fold_refiner.model))
        best = min(validations, key=lambda v: v.score)
        refiner, final = decide_read_out(refiner, train_cases, cases, config, log, work_folder, refined,
                                         len(val_cases))
        final.iteration = best.iteration
        log(f"kept the checkpoint of iteration {best.iteration}, read-out {refiner.clean_up}: "
            f"{summary_line(final)}; {harm_summary(final)}")
    return refiner, TrainingRecord(losses, validations, final, fold_rules)


def _subfolder(folder: Optional[str], name: str) -> Optional[str]:
    """A folder of its own for each rule's label maps: a case held out by one rule is a training case of another."""
    return None if folder is None else os.path.join(folder, name)


def _train_rule(train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase], semantics: LabelSemantics,
                normalisation: Normalisation, ndim: int, config: TrainConfig, trained_on: dict, device: torch.device,
                log: Callable[[str], None], show_progress: bool, transpose_forward: Sequence[int], seed: int
                ) -> Tuple[RNCARefiner, List[float], List[ValidationResult]]:
    """One training from `seed`: the refiner with the best held-out checkpoint (no read-out yet), the losses
    and the held-out validations."""
    torch.manual_seed(seed)  # the global generators, restored on return (restores_global_random_state)
    np.random.seed(seed)
    random.seed(seed)
    rng = np.random.default_rng(seed)
    k = semantics.mask_channels
    shape = RuleShape(ndim, train_cases[0].image.shape[0] + k, k, config.hidden_channels, config.update_width)
    model = RNCA(shape)
    # checkpoints are scored with the rule's own loops: see CHECKPOINT_CLEAN_UP
    refiner = RNCARefiner(model, semantics, normalisation, config.inference_steps,
                          dict(trained_on, train=config_to_dict(config)), device,
                          CleanUp(CHECKPOINT_CLEAN_UP, CHECKPOINT_CLEAN_UP), transpose_forward)
    layout = refiner.layout  # train in the layout the refiner runs in
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, config.iterations // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(i, config.iterations) / config.iterations)))
    sampler = PatchSampler(train_cases, ndim, config, rng)
    to_device = lambda batch: {key: torch.from_numpy(np.ascontiguousarray(v)).to(device).contiguous(memory_format=layout)  # noqa: E731
                               for key, v in batch.items()}
    pool = to_device(sampler.sample(config.pool_size))
    pool["state"] = model.initial_state(pool["context"][:, -k:], layout)
    losses: List[float] = []
    validations: List[ValidationResult] = []
    best_state, best_score = None, float("inf")
    average = {n: p.detach().clone() for n, p in model.state_dict().items()}
    started = time.time()
    for iteration in tqdm(range(1, config.iterations + 1), desc="training rNCA", disable=not show_progress):
        model.train()
        index = torch.from_numpy(rng.choice(config.pool_size, config.batch_size, replace=False)).to(device)
        fresh = to_device(sampler.sample(config.fresh_per_batch))
        fresh["state"] = model.initial_state(fresh["context"][:, -k:], layout)
        for key in pool:
            pool[key][index[: config.fresh_per_batch]] = fresh[key]
        batch = {key: value[index] for key, value in pool.items()}
        steps = int(rng.integers(config.steps_min, config.steps_max + 1))
        state = model(batch["state"], batch["context"], steps, config.fire_rate)
        weight = loss_weights(state[:, :k], batch["target"], batch["line"], batch["valid"],
                              config.error_weight, config.topology_weight)
        loss = refinement_loss(state, batch["target"], weight)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"training diverged at iteration {iteration} (loss {float(loss.detach())}); nothing was "
                                   f"saved and any earlier rnca/ is kept; lower learning_rate in the preset")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDiverged(f"weights became non-finite at iteration {iteration}; nothing was saved and any "
                                   f"earlier rnca/ is kept; lower learning_rate or grad_clip in the preset")
        schedule.step()
        update_average(average, model, config.ema_decay, iteration)
        pool["state"][index] = state.detach()
        losses.append(float(loss.detach()))
        if val_cases and (iteration % config.validate_every == 0 or iteration == config.iterations):
            model.eval()
            trained = {n: p.detach().clone() for n, p in model.state_dict().items()}
            model.load_state_dict(average)
            result = validate(refiner, val_cases, iteration)
            validations.append(result)
            log(f"iteration {iteration}: loss {np.mean(losses[-config.validate_every:]):.4f} "
                f"{summary_line(result)} score {result.score:.3f} ({time.time() - started:.0f} s)")
            if result.score < best_score:
                best_score, best_state = result.score, {n: p.clone() for n, p in average.items()}
            model.load_state_dict(trained)
    model.load_state_dict(best_state if best_state is not None else average)
    model.eval()
    return refiner.replace(clean_up=CleanUp()), losses, validations
