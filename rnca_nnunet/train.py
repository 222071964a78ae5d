"""Pool training of an rNCA on (image, imperfect prediction, label) cases; one readable loop.

Growing-NCA style sample pool: evolved states go back into the pool, so the rule learns to keep a
mask stable and keep cleaning it well past the training horizon. The loss weights the cells that the
base prediction got wrong, and the checkpoint is chosen on held-out topology errors, not on the loss.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.spatial_transforms import MirrorTransform, Rot90Transform
from tqdm import tqdm

from rnca_nnunet.config import TrainConfig, config_to_dict
from rnca_nnunet.corrupt import corrupt_mask
from rnca_nnunet.errors import InputError
from rnca_nnunet.data import ModelFolder, TrainingCase, find_cv_predictions, load_training_case
from rnca_nnunet.loss_weights import centreline, loss_weights, topology_focus
from rnca_nnunet.metrics import case_metrics, mean_metrics
from rnca_nnunet.model import RNCA, RuleShape
from rnca_nnunet.refiner import FOLDER_NAME, RNCARefiner
from rnca_nnunet.state import LabelSemantics, Normalisation, segmentation_from_mask


def split_cases(cases: Sequence[TrainingCase], val_fraction: float, seed: int) -> Tuple[List, List]:
    """Hold out a fraction of cases (at least one when there are two or more) for checkpoint selection."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(max(1, round(val_fraction * len(cases))), len(cases) - 1) if len(cases) > 1 else 0
    return [cases[i] for i in order[n_val:]], [cases[i] for i in order[:n_val]]


class PatchSampler:
    """Random patches (context, target, loss weight), biased to cells that decide the topology."""

    def __init__(self, cases: Sequence[TrainingCase], ndim: int, config: TrainConfig, rng: np.random.Generator):
        self.cases, self.ndim, self.config, self.rng = list(cases), ndim, config, rng
        self.lines = [self._per_slice(centreline, c.target) for c in self.cases]
        self.focus = [self._per_slice(topology_focus, c.mask, c.target, line).any(0, keepdims=True)
                      for c, line in zip(self.cases, self.lines)]
        self.patch = tuple(config.patch_size)
        axes = tuple(range(ndim))
        transforms = [MirrorTransform(axes=axes)]
        if ndim == 2 and self.patch[0] == self.patch[1]:
            transforms.append(Rot90Transform(num_rot=(1, 2, 3), axes=(0, 1), p_per_sample=0.5))
        self.augment = Compose(transforms)

    def _per_slice(self, function: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
        """Apply a function of (K, *spatial) arrays per slice when a 2D rule is trained on volumes."""
        if self.ndim == 2 and arrays[0].ndim == 4:
            return np.stack([function(*(a[:, z] for a in arrays)) for z in range(arrays[0].shape[1])], 1)
        return function(*arrays)

    def _crop(self, index: int) -> Tuple[np.ndarray, ...]:
        case = self.cases[index]
        arrays = [case.image, case.mask, case.target, case.valid[None], self.focus[index], self.lines[index]]
        if self.ndim == 2:
            z = int(self.rng.integers(case.image.shape[1]))
            arrays = [a[:, z] for a in arrays]
        spatial = arrays[0].shape[1:]
        draw = self.rng.random()
        if draw < 0.5:
            candidates = arrays[4][0] > 0
        else:
            candidates = ((arrays[1] > 0.5) != (arrays[2] > 0.5)).any(0) | (arrays[2].any(0) & (draw > 0.75))
        focus = np.argwhere(candidates)
        if len(focus) and draw < 0.85:
            centre = focus[self.rng.integers(len(focus))]
        else:
            centre = np.array([self.rng.integers(s) for s in spatial])
        out = []
        for a in arrays:
            lo = [int(c) - p // 2 for c, p in zip(centre, self.patch)]
            region = np.zeros((a.shape[0], *self.patch), np.float32)
            src = tuple(slice(max(l, 0), min(l + p, s)) for l, p, s in zip(lo, self.patch, spatial))
            dst = tuple(slice(sl.start - l, sl.stop - l) for sl, l in zip(src, lo))
            region[(slice(None), *dst)] = a[(slice(None), *src)]
            out.append(region)
        return tuple(out)

    def sample(self, count: int) -> Dict[str, np.ndarray]:
        """`count` fresh samples; some get a synthetic corruption of the label instead of the CV prediction."""
        images, masks, targets, valids, lines = [], [], [], [], []
        for _ in range(count):
            image, mask, target, valid, _, line = self._crop(int(self.rng.integers(len(self.cases))))
            if self.rng.random() < self.config.corrupted_fraction:
                mask = corrupt_mask(target, self.rng)
            images.append(image), masks.append(_temperature(mask, self.rng.uniform(0.7, 1.4)))
            targets.append(target), valids.append(valid), lines.append(line)
        parts = [np.stack(a) for a in (images, masks, targets, lines, valids)]
        data = self.augment(data=np.concatenate(parts, 1).astype(np.float32))["data"]
        bounds = np.cumsum([0] + [p.shape[1] for p in parts])
        image, mask, target, line, valid = (data[:, a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        return {"context": np.concatenate([image, mask], 1), "target": target, "line": line, "valid": valid}


def _temperature(mask: np.ndarray, temperature: float) -> np.ndarray:
    """Sharpen or soften probabilities: single-fold CV maps are sharper than 5-fold averages."""
    p = np.clip(mask, 1e-4, 1 - 1e-4)
    return (1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))).astype(np.float32)


def refinement_loss(state: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE on the raw mask channels (never a zero gradient) plus soft Dice on the clamped mask."""
    k = target.shape[1]
    raw = state[:, :k]
    mse = (weight * (raw - target) ** 2).sum() / (weight.sum() * k + 1e-6)
    mask = raw.clamp(0, 1) * (weight > 0)
    dims = (0, *range(2, target.ndim))
    dice = (2 * (mask * target).sum(dims) + 1) / (mask.sum(dims) + target.sum(dims) + 1)
    return mse + (1 - dice).mean()


@dataclass
class ValidationResult:
    iteration: int
    before: Dict[str, Dict[str, float]]
    after: Dict[str, Dict[str, float]]
    per_case: List[Dict]

    @property
    def score(self) -> float:
        """Lower is better: remaining share of topology errors, minus a reward for Dice gained.

        One error per class is added above and below the fraction, so that bases with almost no
        topology errors (refining good labels) do not turn a few new errors into a huge ratio."""
        topo = lambda m: sum(c["beta0_error"] + c["beta1_error"] + 1.0 for c in m.values())  # noqa: E731
        dice = lambda m: float(np.mean([c["dice"] for c in m.values()]))  # noqa: E731
        return topo(self.after) / topo(self.before) - 5.0 * (dice(self.after) - dice(self.before))


def refine_cases(refiner: RNCARefiner, cases: Sequence[TrainingCase]) -> List[Tuple[np.ndarray, int]]:
    """Refined mask channels and steps used of whole cases, exactly as at prediction time."""
    return [refiner.refine_context(np.concatenate([case.image, case.mask]), refiner.steps, True) for case in cases]


def validate(refiner: RNCARefiner, cases: Sequence[TrainingCase], iteration: int,
             refined: Optional[Sequence[Tuple[np.ndarray, int]]] = None) -> ValidationResult:
    """Before/after metrics of whole held-out cases; `refined` reuses masks already computed."""
    semantics, per_case = refiner.semantics, []
    for case, (mask, steps) in zip(cases, refined or refine_cases(refiner, cases)):
        reference = segmentation_from_mask(case.target, semantics)
        entry = {"case": case.name, "steps": steps}
        for key, segmentation in (("before", segmentation_from_mask(case.mask, semantics)),
                                  ("after", refiner.segment(mask))):
            segmentation[case.valid == 0] = 0  # the ignore label is scored nowhere, as in nnU-Net's evaluation
            entry[key] = case_metrics(segmentation, reference, case.spacing, semantics.classes)
        per_case.append(entry)
    return ValidationResult(iteration, mean_metrics([c["before"] for c in per_case]),
                            mean_metrics([c["after"] for c in per_case]), per_case)


READ_OUT_SIZES = (0, 2, 4, 8, 16, 32, 64)


def choose_read_out(refiner: RNCARefiner, cases: Sequence[TrainingCase], log: Callable[[str], None]) -> None:
    """Set the read-out's smallest kept component, then its smallest kept hole (like nnU-Net's
    post-processing search); a size is taken only when it scores strictly better than every smaller one.

    Two numbers, not a rule: they are chosen on every case with a CV prediction, because rare pinholes
    and specks may not show in the few held-out cases."""
    refined = refine_cases(refiner, cases)
    best = None
    for setting in ("min_component_size", "min_hole_size"):
        chosen = 0
        for size in READ_OUT_SIZES:
            setattr(refiner, setting, size)
            result = validate(refiner, cases, 0, refined)
            log(f"{setting} {size} on all {len(cases)} cases: {_summary(result)} score {result.score:.3f}")
            if best is None or result.score < best.score - 1e-6:
                best, chosen = result, size
        setattr(refiner, setting, chosen)


@dataclass
class TrainingRecord:
    """Losses, held-out validations per checkpoint, and the final refiner's validation (None without held-out cases)."""
    losses: List[float]
    validations: List[ValidationResult]
    final: Optional[ValidationResult]


class TrainingDiverged(InputError):
    """The loss or the weights became non-finite: nothing is saved, the previous refiner stays."""


def train_refiner(train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase], semantics: LabelSemantics,
                  normalisation: Normalisation, ndim: int, config: TrainConfig, trained_on: dict,
                  device: torch.device, log: Callable[[str], None] = print,
                  show_progress: bool = True, transpose_forward: Sequence[int] = (0, 1, 2)
                  ) -> Tuple[RNCARefiner, TrainingRecord]:
    """Train a rule; returns the refiner with the best held-out checkpoint and read-out, and the record.
    Raises TrainingDiverged as soon as the loss or a weight is not finite."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    k = semantics.mask_channels
    shape = RuleShape(ndim, train_cases[0].image.shape[0] + k, k, config.hidden_channels, config.update_width)
    model = RNCA(shape).to(device)
    refiner = RNCARefiner(model, semantics, normalisation, config.inference_steps,
                          dict(trained_on, train=config_to_dict(config)), device, transpose_forward=transpose_forward)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, config.iterations // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(i, config.iterations) / config.iterations)))
    sampler = PatchSampler(train_cases, ndim, config, rng)
    to_device = lambda batch: {key: torch.from_numpy(np.ascontiguousarray(v)).to(device) for key, v in batch.items()}  # noqa: E731
    pool = to_device(sampler.sample(config.pool_size))
    pool["state"] = model.initial_state(pool["context"][:, -k:])
    losses: List[float] = []
    validations: List[ValidationResult] = []
    best_state, best_score = None, float("inf")
    started = time.time()
    for iteration in tqdm(range(1, config.iterations + 1), desc="training rNCA", disable=not show_progress):
        model.train()
        index = torch.from_numpy(rng.choice(config.pool_size, config.batch_size, replace=False)).to(device)
        fresh = to_device(sampler.sample(config.fresh_per_batch))
        fresh["state"] = model.initial_state(fresh["context"][:, -k:])
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
        pool["state"][index] = state.detach()
        losses.append(float(loss.detach()))
        if val_cases and (iteration % config.validate_every == 0 or iteration == config.iterations):
            model.eval()
            result = validate(refiner, val_cases, iteration)
            validations.append(result)
            log(f"iteration {iteration}: loss {np.mean(losses[-config.validate_every:]):.4f} "
                f"{_summary(result)} score {result.score:.3f} ({time.time() - started:.0f} s)")
            if result.score < best_score:
                best_score, best_state = result.score, {n: p.detach().clone() for n, p in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    final = None
    if val_cases:
        best = min(validations, key=lambda v: v.score)
        choose_read_out(refiner, [*train_cases, *val_cases], log)
        final = validate(refiner, val_cases, best.iteration)
        log(f"kept the checkpoint of iteration {best.iteration}, components of fewer than "
            f"{refiner.min_component_size} cells removed, holes of fewer than {refiner.min_hole_size} "
            f"cells filled: {_summary(final)}")
    return refiner, TrainingRecord(losses, validations, final)


def _summary(result: ValidationResult) -> str:
    parts = []
    for name in result.after:
        b, a = result.before[name], result.after[name]
        parts.append(f"{name}: Dice {b['dice']:.3f}->{a['dice']:.3f} beta0 err {b['beta0_error']:.2f}->"
                     f"{a['beta0_error']:.2f} beta1 err {b['beta1_error']:.2f}->{a['beta1_error']:.2f}")
    return "; ".join(parts)


def write_training_outputs(folder: str, record: TrainingRecord) -> List[str]:
    """validation.json (the kept refiner's before/after) and progress.png; returns the files written."""
    os.makedirs(folder, exist_ok=True)
    files = []
    if record.final:
        best = record.final
        path = os.path.join(folder, "validation.json")
        with open(path, "w") as handle:
            json.dump({"iteration": best.iteration, "mean_before": best.before, "mean_after": best.after,
                       "per_case": best.per_case}, handle, indent=2)
        files.append(path)
    files.append(_plot_progress(os.path.join(folder, "progress.png"), record.validations, record.losses))
    return files


def _plot_progress(path: str, validations: Sequence[ValidationResult], losses: Sequence[float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(losses, alpha=0.3, label="loss")
    if len(losses) >= 20:
        axes[0].plot(np.convolve(losses, np.ones(20) / 20, mode="valid"), label="loss (mean of 20)")
    axes[0].set_xlabel("iteration"), axes[0].set_yscale("log"), axes[0].legend()
    if validations:
        its = [v.iteration for v in validations]
        for name in validations[0].after:
            axes[1].plot(its, [v.after[name]["beta0_error"] for v in validations], "o-", label=f"{name} beta0 err")
            axes[1].axhline(validations[0].before[name]["beta0_error"], ls="--", color="gray")
        twin = axes[1].twinx()
        for name in validations[0].after:
            twin.plot(its, [v.after[name]["dice"] for v in validations], "s:", label=f"{name} Dice")
        twin.set_ylabel("Dice"), twin.legend(loc="upper right")
        axes[1].set_xlabel("iteration"), axes[1].set_ylabel("held-out beta0 error (dashed: before)")
        axes[1].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def train_from_model_folder(model: ModelFolder, images_folder: str, labels_folder: str, config: TrainConfig,
                            device: torch.device, folds: Optional[Sequence[int]] = None,
                            show_progress: bool = True) -> RNCARefiner:
    """Train on a model folder's CV predictions and write `rnca/` into it (atomically, logs included).

    Work happens in `rnca.training/` (replaced by the next run if this one is killed); `rnca/` is replaced
    only by a finished, finite refiner."""
    staging = os.path.join(model.path, FOLDER_NAME + ".training")
    if os.path.isdir(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    log_path = os.path.join(staging, "training_log.txt")
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
        cases = [load_training_case(model, npz, images_folder, labels_folder) for npz in predictions.values()]
        train_cases, val_cases = split_cases(cases, config.val_fraction, config.seed)
        log(f"rNCA training on {model.path}: {len(train_cases)} training and {len(val_cases)} held-out cases, "
            f"device {device}, config {json.dumps(config_to_dict(config))}")
        trained_on = {"dataset": model.dataset_name, "configuration": model.configuration,
                      "trainer": model.trainer, "plans": model.plans_identifier,
                      "channel_names": model.dataset_json["channel_names"],
                      "held_out_cases": [c.name for c in val_cases]}
        refiner, record = train_refiner(train_cases, val_cases, model.semantics, model.normalisation, model.ndim,
                                        config, trained_on, device, log, show_progress, model.transpose_forward)
    extra = write_training_outputs(staging, record) + [log_path]
    refiner.save(os.path.join(model.path, FOLDER_NAME), extra)
    shutil.rmtree(staging, ignore_errors=True)
    return refiner
