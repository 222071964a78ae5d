"""RNCARefiner: a trained rule plus everything needed to apply it to an nnU-Net prediction.

NumPy in, NumPy out. A refiner never changes once made: `replace` gives one with other settings (another
read-out, device or precision), so a refiner shared by a predictor, a search and a test is the same
everywhere. Its folder format is refiner_folder.py's, where and how it runs device_policy.py's.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.config import check_steps
from rnca_nnunet.device_policy import check_device, default_channels_last, precision_for, PRECISIONS
from rnca_nnunet.errors import InputError, ReadOutElsewhereWarning
from rnca_nnunet.metrics import betti_numbers
from rnca_nnunet.model import RNCA, memory_format
from rnca_nnunet.tiling import TilePlan, cell_budget, plan_tiles, reachable_region, run_tiled
from rnca_nnunet.state import (LabelSemantics, Normalisation, base_confidence, complete_probabilities,
                               mask_from_probabilities, probabilities_from_mask, segmentation_from_mask, segmentation_from_probabilities,
                               target_from_label)

UNCERTAINTY_RUNS = 8  # stochastic rollouts per case for --save_uncertainty
# --refiner_steps beyond this many times the trained step count only costs time: the rule settles within its
# trained steps, and 4096 steps took about 80 s on one 256x256 case on a 2-core CPU
MAX_STEP_FACTOR = 8
SETTINGS = ("model", "semantics", "normalisation", "steps", "trained_on", "device", "clean_up", "transpose_forward",
            "precision", "channels_last", "max_tile_cells")  # what `replace` may change


@dataclass(frozen=True)
class Instability:
    """Stochastic rollouts against the written labels: per cell the share of runs that disagree (`map`, image
    axes), its mean over the structure (cells foreground in the written map or in any run), and the share of
    runs whose Betti numbers of some class differ from the written map's."""
    map: np.ndarray
    cells: float
    topology: float

    def __str__(self) -> str:
        return (f"unstable cells {100 * self.cells:.1f}% of the structure, topology changed in "
                f"{100 * self.topology:.0f}% of the stochastic runs")


@dataclass(frozen=True)
class RefinedCase:
    """One refined case: probabilities (C, Z, Y, X), labels (Z, Y, X), steps run; `rewritten` the share of
    nnU-Net's structure the rule changed (None without a fall-back limit), `fell_back` whether that share was
    beyond the limit, so the labels are the clean-up alone of nnU-Net's mask; `opened_holes` how many holes the
    rule opened in nnU-Net's structure (None without a limit), `holes_filled` whether they were beyond the
    limit and filled (`CleanUp.fill_opened_holes_above`)."""
    probabilities: np.ndarray
    segmentation: np.ndarray
    steps: int
    rewritten: Optional[float] = None
    fell_back: bool = False
    opened_holes: Optional[int] = None
    holes_filled: bool = False

    def __str__(self) -> str:
        line = f"{self.steps} steps"
        if self.opened_holes is not None:
            line += f", opened {self.opened_holes} holes in nnU-Net's structure"
            if self.holes_filled:
                line += " (more than any held-out case: filled)"
        if self.rewritten is not None:
            line += f", rewrote {100 * self.rewritten:.1f}% of nnU-Net's structure"
            if self.fell_back:
                line += "; beyond the rule's depth: wrote the clean-up alone"
        return line


class RNCARefiner:
    """Refines nnU-Net probabilities of one case: `refine(image, probabilities)`.

    `precision` names the rule's arithmetic (a key of device_policy.PRECISIONS; None: the device's default),
    `channels_last` its tensor layout (None: the device's default), `max_tile_cells` the cells per tile, halo
    included (None: from the device)."""

    def __init__(self, model: RNCA, semantics: LabelSemantics, normalisation: Normalisation, steps: int,
                 trained_on: Dict, device: Optional[torch.device] = None, clean_up: Optional[CleanUp] = None,
                 transpose_forward: Sequence[int] = (0, 1, 2), precision: Optional[str] = None,
                 channels_last: Optional[bool] = None, max_tile_cells: Optional[int] = None):
        set_ = super().__setattr__
        set_("device", check_device(device))
        set_("semantics", semantics)
        set_("normalisation", normalisation)
        set_("steps", steps)
        set_("trained_on", trained_on)
        set_("clean_up", clean_up or CleanUp())
        set_("transpose_forward", tuple(transpose_forward))
        set_("max_tile_cells", max_tile_cells)
        set_("asked", {"precision": precision, "channels_last": channels_last})  # None: the device's default
        dtype = precision_for(precision, self.device)
        set_("precision", next(name for name, value in PRECISIONS.items() if value == dtype))
        set_("autocast_dtype", dtype)  # of the rule's convolutions; None: float32
        channels_last = default_channels_last(self.device) if channels_last is None else channels_last
        set_("layout", memory_format(model.shape.ndim, channels_last))
        set_("model", model.to(self.device, memory_format=self.layout).eval())  # weights follow the layout once

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"an RNCARefiner does not change; use refiner.replace({name}=...) for one with another "
                             f"{name}")

    def replace(self, **changes: Any) -> "RNCARefiner":
        """A refiner like this one but for `changes` (any of SETTINGS); precision and layout left to the device's
        defaults stay so, so a refiner moved to CUDA gets CUDA's. The rule's weights are shared where device and
        layout stay, else copied, so this refiner is never touched."""
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise TypeError(f"replace() got {unknown}; a refiner's settings are {SETTINGS}")
        settings = {name: self.asked[name] if name in self.asked else getattr(self, name) for name in SETTINGS}
        settings.update(changes)
        device = check_device(settings["device"])
        channels_last = default_channels_last(device) if settings["channels_last"] is None else settings["channels_last"]
        moved = device != self.device or channels_last != self.channels_last
        if moved and settings["model"] is self.model:
            settings["model"] = copy.deepcopy(self.model)
        return RNCARefiner(**settings)

    @property
    def channels_last(self) -> bool:
        """Whether the rule's tensors and weights are channels-last (see `model.memory_format`)."""
        return self.layout != torch.contiguous_format

    def check_compatible(self, model: Any) -> None:
        """Refuse a refiner for other labels; warn when it was trained on another dataset (zero-shot), or when its
        read-out was chosen on another model of this dataset (copied from another trainer or plans). `model`: an
        nnU-Net model folder as data.ModelFolder reads it."""
        theirs = LabelSemantics(model.dataset_json["labels"], model.dataset_json.get("regions_class_order"))
        if theirs != self.semantics:
            raise InputError(f"refiner was trained for labels {self.semantics.labels}, but {model.path} predicts "
                             f"{theirs.labels}; train a refiner for this model with nnUNetv2_train_rnca")
        if len(model.dataset_json["channel_names"]) != len(self.normalisation.schemes):
            raise InputError(f"refiner expects {len(self.normalisation.schemes)} image channels, {model.path} has "
                             f"{len(model.dataset_json['channel_names'])}; train a refiner for this model")
        origin = (self.trained_on.get("dataset"), self.trained_on.get("configuration"))
        if origin != (model.dataset_name, model.configuration):
            warnings.warn(f"refiner was trained on {origin[0]} ({origin[1]}) and is applied zero-shot to "
                          f"{model.dataset_name} ({model.configuration})", stacklevel=2)
            return
        decided_on = self.trained_on.get("read_out_on") or self.trained_on
        decided = (decided_on.get("trainer"), decided_on.get("plans"))
        if None not in decided and decided != (model.trainer, model.plans_identifier):
            warnings.warn(f"refiner's read-out was chosen on {decided[0]}__{decided[1]}'s CV cases, not on those of "
                          f"{model.path}; to choose it on this model's: nnUNetv2_train_rnca {model.dataset_name} -c "
                          f"{model.configuration} -tr {model.trainer} -p {model.plans_identifier} --read_out_only",
                          ReadOutElsewhereWarning, stacklevel=2)

    # ---------------------------------------------------------------- refinement
    def refine(self, image: np.ndarray, probabilities: np.ndarray, steps: Optional[int] = None,
               stop_when_stable: bool = True) -> Tuple[np.ndarray, np.ndarray, int]:
        """Raw image (I, Z, Y, X) + nnU-Net probabilities (C, Z, Y, X) -> (probabilities, segmentation, steps);
        `refine_case` says also whether the case fell back to the clean-up alone."""
        case = self.refine_case(image, probabilities, steps, stop_when_stable)
        return case.probabilities, case.segmentation, case.steps

    def refine_case(self, image: np.ndarray, probabilities: np.ndarray, steps: Optional[int] = None,
                    stop_when_stable: bool = True) -> RefinedCase:
        """`refine`'s outputs, how much of nnU-Net's structure the rule rewrote and whether that was beyond the
        read-out's fall-back limit (then the clean-up alone of nnU-Net's mask is written).

        Runs `steps` updates, or fewer when the mask has stopped changing. The rule works in nnU-Net's axis
        order (`transpose_forward`), so a 2D rule slices a volume along the axis nnU-Net's 2d configuration
        slices. Cases larger than the cell budget are refined in tiles whose halo covers the rule's reach, so
        tiling changes nothing; tiles always run the full step count so that every tile sees the same rule.
        """
        steps = self.steps if steps is None else self.check_steps(steps)
        self.check_arrays(image, probabilities)
        # the rule writes its mask straight into the last K channels of the probabilities it returns, which are
        # then completed in place: besides its context and its outputs, refinement holds only a tile
        refined = np.zeros(probabilities.shape, np.float32)
        rule_axes = self.to_rule_axes(refined)
        _, used = self.refine_context(self.rule_context(image, probabilities), steps, stop_when_stable,
                                      out=rule_axes[-self.semantics.mask_channels:])
        base, confidence = None, None
        if self.clean_up.needs_base:
            base_probabilities = self.to_rule_axes(probabilities)
            base = segmentation_from_probabilities(base_probabilities, self.semantics)
            confidence = base_confidence(base_probabilities, self.semantics)
        segmentation, rewritten, fell_back, opened = self.read_out(rule_axes, base, confidence)
        limit = self.clean_up.fill_opened_holes_above
        return RefinedCase(refined, self.from_rule_axes(segmentation), used, rewritten, fell_back, opened,
                           opened is not None and opened > limit)

    def check_steps(self, steps: object) -> int:
        """A step count asked for (--refiner_steps, or `refine`'s `steps`), bounded by the trained one."""
        steps = check_steps(steps, "--refiner_steps (refine's steps)")
        if steps > MAX_STEP_FACTOR * self.steps:
            raise InputError(f"--refiner_steps {steps} is more than {MAX_STEP_FACTOR}x the {self.steps} steps this "
                             f"rule was trained with (at most {MAX_STEP_FACTOR * self.steps}): more only costs time")
        return steps

    def check_arrays(self, image: object, probabilities: object) -> None:
        """What `refine` needs, checked as the command line checks its files, so a Python caller gets one line
        instead of a failure deep in the rule."""
        for name, array in (("image", image), ("probabilities", probabilities)):
            if not isinstance(array, np.ndarray):
                raise InputError(f"{name} must be a NumPy array, got {type(array).__name__} (from torch: "
                                 f".cpu().numpy())")
            if array.ndim != 4:
                raise InputError(f"{name} has shape {array.shape}; give (channels, Z, Y, X) as nnU-Net's readers "
                                 f"do, a 2D image as (channels, 1, Y, X)")
        channels, heads = len(self.normalisation.schemes), self.semantics.manager.num_segmentation_heads
        if image.shape[0] != channels or probabilities.shape[0] != heads:
            raise InputError(f"image has {image.shape[0]} channel(s) and probabilities {probabilities.shape[0]}; this "
                             f"refiner needs {channels} and {heads} (labels {self.semantics.labels})")
        if image.shape[1:] != probabilities.shape[1:]:
            raise InputError(f"image (Z, Y, X) {image.shape[1:]} differs from probabilities (Z, Y, X) "
                             f"{probabilities.shape[1:]}; give both in the original image space")
        if not (np.isfinite(image).all() and np.isfinite(probabilities).all()):
            raise InputError("the image or the probabilities contain NaN or infinite values; nothing was refined")
        if probabilities.min() < -1e-3 or probabilities.max() > 1 + 1e-3:
            raise InputError(f"probabilities range {probabilities.min():.3g} .. {probabilities.max():.3g}, outside "
                             f"[0, 1]: give nnU-Net's probabilities (softmax or sigmoid), not its logits")

    def rule_context(self, image: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Raw image + nnU-Net probabilities -> the rule's context (I + K, ...) in the rule's axis order."""
        mask = mask_from_probabilities(probabilities, self.semantics)
        context = np.empty((image.shape[0] + mask.shape[0], *image.shape[1:]), np.float32)
        context[:image.shape[0]], context[image.shape[0]:] = self.normalisation(image), mask
        return self.to_rule_axes(context)

    def to_rule_axes(self, array: np.ndarray) -> np.ndarray:
        """(..., Z, Y, X) in the image's axis order -> nnU-Net's (`transpose_forward`)."""
        lead = list(range(array.ndim - 3))
        return array.transpose(lead + [len(lead) + a for a in self.transpose_forward])

    def from_rule_axes(self, array: np.ndarray) -> np.ndarray:
        lead = list(range(array.ndim - 3))
        return array.transpose(lead + [len(lead) + int(a) for a in np.argsort(self.transpose_forward)])

    def clean_segmentation(self, segmentation: np.ndarray, base: Optional[np.ndarray] = None,
                           confidence: Optional[np.ndarray] = None) -> np.ndarray:
        """A label map (Z, Y, X) after the read-out's `clean_up` (see cleanup.py), chosen on the CV cases;
        `base` is the label map the rule refined and `confidence` how sure the base was of it
        (`state.base_confidence`), both needed when `clean_up.needs_base`."""
        return self.clean_up(segmentation, self.model.shape.ndim == 2, base, confidence)

    def read_out(self, probabilities: np.ndarray, base: Optional[np.ndarray] = None,
                 confidence: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[float], bool, Optional[int]]:
        """In place: probabilities (C, Z, Y, X) whose last K channels hold the rule's mask are completed
        (`complete_probabilities`) and made to agree with the clean-up's labels; returns those labels, the
        share rewritten, whether the case fell back and the holes opened in the base's structure (`CleanUp.apply`)."""
        complete_probabilities(probabilities, self.semantics)
        segmentation = segmentation_from_probabilities(probabilities, self.semantics)
        cleaned, rewritten, fell_back, opened = self.clean_up.apply(segmentation, self.model.shape.ndim == 2, base,
                                                                    confidence)
        if cleaned is not segmentation:
            changed = cleaned != segmentation
            probabilities[:, changed] = probabilities_from_mask(target_from_label(cleaned[changed], self.semantics)[0],
                                                                self.semantics)
        return cleaned, rewritten, fell_back, opened

    def segment(self, mask: np.ndarray, base_mask: np.ndarray) -> np.ndarray:
        """Refined mask channels, and the base's mask channels they were refined from -> the label map that
        prediction writes."""
        base_probabilities = probabilities_from_mask(base_mask, self.semantics)
        return self.clean_segmentation(segmentation_from_mask(mask, self.semantics),
                                       segmentation_from_probabilities(base_probabilities, self.semantics),
                                       base_confidence(base_probabilities, self.semantics))

    def refine_context(self, context: np.ndarray, steps: int, stop_when_stable: bool,
                       plan: Optional[TilePlan] = None, out: Optional[np.ndarray] = None,
                       generator: Optional[torch.Generator] = None) -> Tuple[np.ndarray, int]:
        """Context (I + K, Z, Y, X) -> refined mask channels (K, Z, Y, X) and the steps used; written into `out`
        (zero-filled, any strides) when given; with a `generator`, cells fire at random as in training.

        Only the box the rule can reach from its alive cells is run (the rest stays background, as it would); a
        box within the cell budget runs whole (and may stop at steady state), a larger one, or any box given a
        `plan`, runs in exact tiles (see tiling.py) for the full step count."""
        k = self.semantics.mask_channels
        mask = np.zeros((k, *context.shape[1:]), np.float32) if out is None else out  # what dead cells read out
        if self.model.shape.ndim == 2:  # slices become the batch
            batch, batch_mask = np.moveaxis(context, 1, 0), np.moveaxis(mask, 1, 0)
        else:
            batch, batch_mask = context[None], mask[None]
        region = reachable_region(batch[:, -k:], self.model.shape.alive_threshold, self.model.growth_radius(steps))
        used = 0
        if region is not None:
            batch, target = batch[region], batch_mask[region]  # views: the region is written in place
            budget = self.max_tile_cells or cell_budget(self.model.shape, self.device)
            if plan is None and batch.size // batch.shape[1] <= budget:
                refined, used = self._run(np.ascontiguousarray(batch), steps, stop_when_stable, generator=generator)
                target[...] = refined
            else:
                halo = self.model.receptive_radius(steps)
                plan = plan or plan_tiles(batch.shape[0], batch.shape[2:], halo, budget)
                run_tiled(lambda tile: self._run(tile, steps, False, generator=generator)[0], batch, target, halo,
                          plan)
                used = steps
        return mask, used

    def evolution(self, image: np.ndarray, probabilities: np.ndarray, z: int,
                  steps: Optional[int] = None) -> List[np.ndarray]:
        """Label maps of slice `z` (in the rule's axis order, see `to_rule_axes`) at the start and after each of
        `steps` steps (give the steps `refine` used).

        A 2D rule needs only that slice; a 3D rule only the slab its reach covers, so this stays cheap."""
        steps = self.steps if steps is None else steps
        context = self.rule_context(image, probabilities)
        if self.model.shape.ndim == 2:
            batch, index = context[:, z][None], (0, slice(None), None)
        else:
            reach = self.model.receptive_radius(steps)
            low, high = max(z - reach, 0), min(z + reach + 1, context.shape[1])
            batch, index = context[None, :, low:high], (0, slice(None), slice(z - low, z - low + 1))
        frames = [segmentation_from_mask(batch[index][-self.semantics.mask_channels:], self.semantics)[0]]
        self._run(np.ascontiguousarray(batch), steps, False,
                  on_step=lambda mask: frames.append(segmentation_from_mask(mask[index], self.semantics)[0]))
        return frames

    @property
    def fire_rate(self) -> float:
        """The share of cells updated per step in training (what stochastic inference draws at)."""
        rate = self.trained_on.get("train", {}).get("fire_rate", 0.5)
        return float(rate) if isinstance(rate, (int, float)) and 0 < rate <= 1 else 0.5

    def instability(self, image: np.ndarray, probabilities: np.ndarray, segmentation: np.ndarray, steps: int,
                    runs: int = UNCERTAINTY_RUNS, seed: int = 0) -> Instability:
        """Where the refined mask is unstable: `runs` rollouts of `steps` steps with cells firing at random, as
        the rule was trained (so in distribution), each read out like the written `segmentation` (Z, Y, X);
        per cell the share of runs whose label differs from it. Seeded by `seed` through a generator of its own,
        so the same case gives the same map and no global random state is touched."""
        context = self.rule_context(image, probabilities)
        base, confidence = None, None
        if self.clean_up.needs_base:
            base_probabilities = self.to_rule_axes(probabilities)
            base = segmentation_from_probabilities(base_probabilities, self.semantics)
            confidence = base_confidence(base_probabilities, self.semantics)
        written = self.to_rule_axes(segmentation[None])[0]
        disagree = np.zeros(written.shape, np.float32)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        topology = [self._betti(written)]
        for _ in range(runs):
            mask, _ = self.refine_context(context, steps, False, generator=generator)
            labels = self.clean_segmentation(segmentation_from_mask(mask, self.semantics), base, confidence)
            disagree += labels != written
            topology.append(self._betti(labels))
        share = disagree / runs
        structure = (written > 0) | (share > 0)
        return Instability(self.from_rule_axes(share[None])[0],
                           float(share[structure].mean()) if structure.any() else 0.0,
                           sum(t != topology[0] for t in topology[1:]) / runs)

    def _betti(self, labels: np.ndarray) -> List[Tuple[int, ...]]:
        """Betti numbers of each class of a (Z, Y, X) label map (2D for a single slice)."""
        return [tuple(betti_numbers(np.isin(labels[0] if labels.shape[0] == 1 else labels, c)))
                for c in self.semantics.classes.values()]

    @torch.inference_mode()
    def _run(self, batch: np.ndarray, steps: int, stop_when_stable: bool, check_every: int = 8,
             on_step: Optional[Callable[[np.ndarray], None]] = None,
             generator: Optional[torch.Generator] = None) -> Tuple[np.ndarray, int]:
        """The rule's rollout on one batch; stops when the binary mask is unchanged over `check_every` steps;
        stochastic (cells firing at the training's rate) with a `generator`."""
        k = self.semantics.mask_channels
        context_input = torch.from_numpy(batch).to(self.device).contiguous(memory_format=self.layout)
        previous: List[Optional[torch.Tensor]] = [None]

        def watch(step: int, state: torch.Tensor) -> bool:
            if on_step is not None:
                on_step(RNCA.read_mask(state, k).cpu().numpy())
            if not stop_when_stable or step % check_every:
                return False
            binary = state[:, :k] > 0.5
            stable = previous[0] is not None and torch.equal(binary, previous[0])
            previous[0] = binary
            return stable

        # nnU-Net's predictor turns cudnn benchmarking on for its fixed patch size; every region refined here has
        # its own shape, so benchmarking would run again for every case
        cudnn = torch.backends.cudnn
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None), \
                cudnn.flags(enabled=cudnn.enabled, benchmark=False, deterministic=cudnn.deterministic,
                            allow_tf32=cudnn.allow_tf32):
            state, used = self.model.rollout(self.model.initial_state(context_input[:, -k:], self.layout),
                                             context_input, steps, self.fire_rate if generator else 1.0,
                                             on_step=watch, generator=generator)
        return RNCA.read_mask(state, k).cpu().numpy(), used


