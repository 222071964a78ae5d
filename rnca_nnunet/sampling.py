"""Training patches: random crops biased to the cells that decide the topology, with augmentation.

Half the crops are centred on topology focus (specks, holes, broken centreline of the base prediction),
most others on wrong cells; some base masks are replaced by synthetic corruptions of the label, and
probabilities get a random temperature (single-fold CV maps are sharper than 5-fold averages).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.spatial_transforms import MirrorTransform, Rot90Transform

from rnca_nnunet.config import TrainConfig
from rnca_nnunet.corrupt import corrupt_mask
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.loss_weights import centreline, topology_focus


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
