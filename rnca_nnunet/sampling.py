"""Training patches: random crops biased to the cells that decide the topology, with augmentation.

Half the crops are centred on topology focus (specks, holes, broken centreline and bridges of the base
prediction),
most others on wrong cells; some base masks are replaced by synthetic corruptions of the label, and
probabilities get a random temperature (single-fold CV maps are sharper than 5-fold averages).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, Rot90Transform
from batchgeneratorsv2.transforms.local.brightness_gradient import BrightnessGradientAdditiveTransform
from batchgeneratorsv2.transforms.local.local_gamma import LocalGammaTransform
from batchgeneratorsv2.transforms.noise.blank_rectangle import BlankRectangleTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from rnca_nnunet.config import TrainConfig
from rnca_nnunet.corrupt import corrupt_mask
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.loss_weights import topology_focus, topology_lines
from rnca_nnunet.metrics import betti_numbers
from rnca_nnunet.topology import apply_per_slice


def sampling_maps(case: TrainingCase, ndim: int) -> Tuple[np.ndarray, np.ndarray]:
    """(topology focus (1, *spatial), `topology_lines` of the label (K, *spatial)) of a case, as float32 arrays."""
    line = apply_per_slice(ndim, topology_lines, np.asarray(case.target))
    focus = apply_per_slice(ndim, topology_focus, np.asarray(case.mask), np.asarray(case.target), line)
    focus = focus.any(0, keepdims=True)
    return focus.astype(np.float32), line.astype(np.float32)


CENTRE_KINDS = ("focus", "wrong", "wrong_or_foreground")


def patch_centres(case: TrainingCase, focus: np.ndarray) -> Dict[str, np.ndarray]:
    """(Z, Y, X) coordinates of the cells a patch may be centred on: topology focus, wrong cells, and wrong or
    foreground cells; computed once, so a patch never scans a whole case."""
    target = np.asarray(case.target) > 0.5
    wrong = ((np.asarray(case.mask) > 0.5) != target).any(0)
    return {"focus": np.argwhere(focus[0] > 0).astype(np.int32), "wrong": np.argwhere(wrong).astype(np.int32),
            "wrong_or_foreground": np.argwhere(wrong | target.any(0)).astype(np.int32)}


def topology_error_count(case: TrainingCase, ndim: int) -> int:
    """Summed Betti-number errors of a case's base mask against its label, over foreground channels (and slices,
    for a 2D rule on volumes), ignore-label cells left out."""
    valid = np.asarray(case.valid) > 0
    errors = 0
    for mask, target in zip(np.asarray(case.mask) > 0.5, np.asarray(case.target) > 0.5):
        pairs = [(mask[z], target[z], valid[z]) for z in range(mask.shape[0])] if ndim == 2 else [(mask, target, valid)]
        for predicted, label, keep in pairs:
            errors += sum(abs(a - b) for a, b in zip(betti_numbers(predicted & keep), betti_numbers(label & keep)))
    return int(errors)


def case_probabilities(error_counts: Sequence[int], power: float) -> np.ndarray:
    """How often each case is drawn: in proportion to (1 + its topology errors) ** power.

    A failure that only a few training cases show is otherwise seen in a few percent of the patches: TopoMortar's
    pseudo labels miss long faint joints on one train wall of 40; drawn by sqrt(1 + errors) that wall gives 9.5%
    of the patches instead of 2.5%, and val beta1 was 2.25-3.95 in three trainings against 3.70-4.65 uniformly
    (benchmarks/TOPOMORTAR.md). Off by default; the `mesh_2d` preset sets 0.5."""
    weights = (1.0 + np.asarray(error_counts, np.float64)) ** power
    return weights / weights.sum()


class PatchSampler:
    """Random patches (context, target, loss weight), biased to cells that decide the topology.

    Cases may live on disk (case_store.py): a patch then reads only its own cells. Sampling maps and
    patch centres come with the case when it has them, else they are computed on first use."""

    def __init__(self, cases: Sequence[TrainingCase], ndim: int, config: TrainConfig, rng: np.random.Generator):
        self.cases, self.ndim, self.config, self.rng = list(cases), ndim, config, rng
        self._computed: Dict[int, Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]] = {}
        self.patch = tuple(config.patch_size)
        axes = tuple(range(ndim))
        transforms = [MirrorTransform(axes=axes)]
        if ndim == 2 and self.patch[0] == self.patch[1]:
            transforms.append(Rot90Transform(num_rot=(1, 2, 3), axes=(0, 1), p_per_sample=0.5))
        self.augment = Compose(transforms)
        self.intensity = intensity_augmentation()
        self.spatial = spatial_augmentation(self.patch, config.p_scale_rotate) if config.p_scale_rotate > 0 else None
        self.local = (local_intensity_augmentation(self.patch, config.p_local_intensity)
                      if config.p_local_intensity > 0 else None)
        self.case_probabilities: Optional[np.ndarray] = None  # None: cases drawn uniformly
        if config.case_error_power > 0:
            counts = [topology_error_count(case, ndim) for case in self.cases]
            self.case_probabilities = case_probabilities(counts, config.case_error_power)

    def draw_case(self) -> int:
        """The index of the case the next patch comes from (see `case_probabilities`)."""
        if self.case_probabilities is None:
            return int(self.rng.integers(len(self.cases)))
        return int(self.rng.choice(len(self.cases), p=self.case_probabilities))

    def _maps_of(self, index: int) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
        case = self.cases[index]
        if getattr(case, "centres", None) is not None:
            return case.focus, case.line, case.centres
        if index not in self._computed:
            focus, line = sampling_maps(case, self.ndim)
            self._computed[index] = focus, line, patch_centres(case, focus)
        return self._computed[index]

    def _crop(self, index: int) -> Tuple[np.ndarray, ...]:
        """(image, mask, target, valid, focus, line) of one patch; scaled and rotated when `p_scale_rotate` says so
        (cut from a region twice the patch's size, so the turned and zoomed-out patch still holds real cells)."""
        if self.spatial is None:
            return self._region(index, self.patch)
        arrays = self._region(index, tuple(2 * p for p in self.patch))
        bounds = np.cumsum([0] + [a.shape[0] for a in arrays])
        data = self.spatial(image=torch.from_numpy(np.concatenate(arrays)))["image"].numpy()
        image, *masks = (data[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        mask, *binary = masks  # probabilities stay soft; labels are interpolated, then thresholded as nnU-Net's are
        return (image, mask, *((b > 0.5).astype(np.float32) for b in binary))

    def _region(self, index: int, size: Tuple[int, ...]) -> Tuple[np.ndarray, ...]:
        case = self.cases[index]
        focus, line, centres = self._maps_of(index)
        arrays = [case.image, case.mask, case.target, case.valid[None], focus, line]
        draw = self.rng.random()
        cells = centres["focus" if draw < 0.5 else "wrong_or_foreground" if draw > 0.75 else "wrong"]
        if len(cells) and draw < 0.85:
            centre = np.asarray(cells[self.rng.integers(len(cells))])
        else:
            centre = np.array([self.rng.integers(s) for s in arrays[0].shape[1:]])
        if self.ndim == 2:
            arrays, centre = [a[:, int(centre[0])] for a in arrays], centre[1:]
        spatial = arrays[0].shape[1:]
        out = []
        for a in arrays:
            lo = [int(c) - p // 2 for c, p in zip(centre, size)]
            region = np.zeros((a.shape[0], *size), np.float32)
            src = tuple(slice(max(l, 0), min(l + p, s)) for l, p, s in zip(lo, size, spatial))
            dst = tuple(slice(sl.start - l, sl.stop - l) for sl, l in zip(src, lo))
            region[(slice(None), *dst)] = a[(slice(None), *src)]
            out.append(region)
        return tuple(out)

    def sample(self, count: int) -> Dict[str, np.ndarray]:
        """`count` fresh samples; some get a synthetic corruption of the label instead of the CV prediction."""
        images, masks, targets, valids, lines = [], [], [], [], []
        for _ in range(count):
            image, mask, target, valid, _, line = self._crop(self.draw_case())
            if self.rng.random() < self.config.corrupted_fraction:
                mask = corrupt_mask(target, self.rng, fill_holes=self.config.fill_holes)
            if self.local is not None:
                image = self.local(image=torch.from_numpy(image))["image"].numpy()
            images.append(image), masks.append(_temperature(mask, self.rng.uniform(0.7, 1.4)))
            targets.append(target), valids.append(valid), lines.append(line)
        images = self.intensity(data=np.stack(images).astype(np.float32))["data"]
        parts = [np.stack(a) for a in (images, masks, targets, lines, valids)]
        data = self.augment(data=np.concatenate(parts, 1).astype(np.float32))["data"]
        bounds = np.cumsum([0] + [p.shape[1] for p in parts])
        image, mask, target, line, valid = (data[:, a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        return {"context": np.concatenate([image, mask], 1), "target": target, "line": line, "valid": valid}


def spatial_augmentation(patch: Tuple[int, ...], probability: float) -> SpatialTransform:
    """nnU-Net's scaling (0.7-1.4, same for every axis) and, in 2D, rotation (any angle), each with `probability`:
    a rule trained on a few walls or vessel trees must also see structures smaller and larger than theirs
    (TopoMortar's val walls have bricks half the size of its train walls'). The input is a region twice the
    patch's size, centred on the patch."""
    return SpatialTransform(patch, patch_center_dist_from_border=0, random_crop=False,
                            p_rotation=probability if len(patch) == 2 else 0.0, rotation=(-np.pi, np.pi),
                            p_scaling=probability, scaling=(0.7, 1.4), p_synchronize_scaling_across_axes=1)


def intensity_augmentation() -> Compose:
    """nnU-Net's intensity augmentations (nnUNetTrainer, same ranges and probabilities), for the image channels
    only: a rule trained on a few dozen cases must not learn their exact brightness, contrast and colour."""
    return Compose([
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_channel=0.5, p_per_sample=0.2),
        BrightnessMultiplicativeTransform((0.75, 1.25), per_channel=True, p_per_sample=0.15),
        ContrastAugmentationTransform((0.75, 1.25), per_channel=True, p_per_sample=0.15),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ])


def local_intensity_augmentation(patch: Tuple[int, ...], probability: float) -> ComposeTransforms:
    """nnU-Net's nnUNetTrainerDA5 local changes of the image, each with `probability`: occluding rectangles (1-5,
    a tenth to a third of the patch, filled with the channel's mean), a smooth additive brightness gradient and a
    local gamma, with DA5's ranges. Under TopoMortar's shadows and occluders the rule trusted image context it
    had never seen change this way (benchmarks/TOPOMORTAR_SHIFT.md). The gradient is the same in every channel,
    as a shadow is; DA5 draws one a channel."""
    def scale(shape, axis):
        return np.exp(np.random.uniform(np.log(shape[axis] // 6), np.log(shape[axis])))

    def strength(_image, _kernel):
        return np.random.uniform(-5, -1) if np.random.uniform() < 0.5 else np.random.uniform(1, 5)

    def gamma():
        return np.random.uniform(0.01, 0.8) if np.random.uniform() < 0.5 else np.random.uniform(1.5, 4)

    return ComposeTransforms([
        RandomTransform(BlankRectangleTransform([[max(1, p // 10), p // 3] for p in patch], torch.mean, (1, 5),
                                                p_per_channel=1.0), apply_probability=probability),
        RandomTransform(BrightnessGradientAdditiveTransform(scale, (-0.5, 1.5), strength, same_for_all_channels=True,
                                                            mean_centered=False), apply_probability=probability),
        RandomTransform(LocalGammaTransform(scale, (-0.5, 1.5), gamma, same_for_all_channels=False,
                                            p_per_channel=0.5), apply_probability=probability),
    ])


def _temperature(mask: np.ndarray, temperature: float) -> np.ndarray:
    """Sharpen or soften probabilities: single-fold CV maps are sharper than 5-fold averages."""
    p = np.clip(mask, 1e-4, 1 - 1e-4)
    return (1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))).astype(np.float32)
