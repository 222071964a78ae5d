"""Translate between nnU-Net's arrays and the rNCA's tensors.

nnU-Net writes probabilities with a background channel (softmax labels) or one sigmoid per region;
the rNCA's mask channels are foreground only, so an empty cell is simply all-zero (dead).
"""
from __future__ import annotations

from dataclasses import dataclass
from os.path import join
from typing import Dict, List, Optional, Tuple, Union

import nnunetv2
import numpy as np
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from rnca_nnunet.errors import InputError

Region = Union[int, Tuple[int, ...]]


@dataclass(frozen=True)
class LabelSemantics:
    """What the mask channels mean; two refiners are compatible when these agree."""

    labels: Dict[str, Union[int, List[int]]]
    regions_class_order: Optional[List[int]] = None

    @property
    def manager(self) -> LabelManager:
        return LabelManager(self.labels, self.regions_class_order)

    @property
    def has_regions(self) -> bool:
        """Region-based when any label is a list of labels, decided by nnU-Net's own LabelManager."""
        return self.manager.has_regions

    @property
    def mask_channels(self) -> int:
        m = self.manager
        return len(m.foreground_regions) if m.has_regions else len(m.foreground_labels)

    @property
    def classes(self) -> Dict[str, List[int]]:
        """Class (or region) name -> the labels it is made of, for per-class metrics."""
        if self.has_regions:
            return {name: list(value) if isinstance(value, (list, tuple)) else [value]
                    for name, value in self.labels.items() if name != "background" and name != "ignore"}
        return {name: [int(value)] for name, value in self.labels.items() if name != "ignore" and int(value) != 0}

    @property
    def ignore_label(self) -> Optional[int]:
        return self.manager.ignore_label


def mask_from_probabilities(probabilities: np.ndarray, semantics: LabelSemantics) -> np.ndarray:
    """nnU-Net probabilities (C, *spatial) -> foreground mask channels (K, *spatial)."""
    expected = semantics.mask_channels + (0 if semantics.has_regions else 1)
    if probabilities.shape[0] != expected:
        raise InputError(f"probabilities have {probabilities.shape[0]} channels, the label set needs {expected}; use the probabilities of the model the refiner belongs to")
    foreground = probabilities if semantics.has_regions else probabilities[1:]
    return np.ascontiguousarray(foreground, dtype=np.float32)


def complete_probabilities(probabilities: np.ndarray, semantics: LabelSemantics) -> np.ndarray:
    """In place: (C, *spatial) whose last K channels hold foreground mask channels -> probabilities in nnU-Net's
    layout (argmax/thresholds give the labels): masks clipped to [0, 1]; with softmax labels, channel 0 becomes
    the background and every cell sums to 1. Works on views (any strides), so no case-sized copy is made."""
    mask = probabilities[-semantics.mask_channels:]
    np.clip(mask, 0.0, 1.0, out=mask)
    if not semantics.has_regions:
        np.clip(1.0 - mask.sum(0), 0.0, 1.0, out=probabilities[0])
        probabilities /= np.maximum(probabilities.sum(0), 1e-6)
    return probabilities


def probabilities_from_mask(mask: np.ndarray, semantics: LabelSemantics) -> np.ndarray:
    """Foreground mask channels -> probabilities in nnU-Net's layout (see `complete_probabilities`)."""
    probabilities = np.zeros((mask.shape[0] + (0 if semantics.has_regions else 1), *mask.shape[1:]), np.float32)
    probabilities[-mask.shape[0]:] = mask
    return complete_probabilities(probabilities, semantics)


def segmentation_from_probabilities(probabilities: np.ndarray, semantics: LabelSemantics) -> np.ndarray:
    """The label map nnU-Net exports for these probabilities (its own LabelManager decides)."""
    segmentation = semantics.manager.convert_probabilities_to_segmentation(probabilities)
    return np.asarray(segmentation).astype(np.uint8 if len(semantics.manager.foreground_labels) < 255 else np.uint16)


def base_confidence(probabilities: np.ndarray, semantics: LabelSemantics) -> np.ndarray:
    """Per cell, how sure nnU-Net was of the label it exports there: the winning softmax probability, or with
    regions the least sure region's max(p, 1 - p). 1 everywhere for a hard mask (labels refined as a base)."""
    if semantics.has_regions:
        return np.maximum(probabilities, 1.0 - probabilities).min(0).astype(np.float32)
    return probabilities.max(0).astype(np.float32)


def segmentation_from_mask(mask: np.ndarray, semantics: LabelSemantics) -> np.ndarray:
    """The label map nnU-Net would export for these mask channels."""
    return segmentation_from_probabilities(probabilities_from_mask(mask, semantics), semantics)


def target_from_label(label: np.ndarray, semantics: LabelSemantics) -> Tuple[np.ndarray, np.ndarray]:
    """A label map -> (target mask channels, per-cell loss weight that is 0 on the ignore label)."""
    manager = semantics.manager
    classes = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    target = np.stack([np.isin(label, c if isinstance(c, (tuple, list)) else [c]) for c in classes]).astype(np.float32)
    valid = np.ones(label.shape, np.float32)
    if semantics.ignore_label is not None:
        valid[label == semantics.ignore_label] = 0.0
    return target, valid


@dataclass(frozen=True)
class Normalisation:
    """nnU-Net's per-channel intensity normalisation, copied from the plans so a refiner folder is self-contained.

    Applied to the whole original image: nnU-Net's non-zero crop mask does not exist in original space.
    """

    schemes: List[str]
    intensity_properties: Dict[str, dict]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape[0] != len(self.schemes):
            raise InputError(f"image has {image.shape[0]} channels, the refiner was trained with {len(self.schemes)}; use the refiner of this dataset")
        out = np.empty(image.shape, np.float32)
        for c, scheme in enumerate(self.schemes):
            normaliser_class = recursive_find_python_class(join(nnunetv2.__path__[0], "preprocessing", "normalization"),
                                                           scheme, "nnunetv2.preprocessing.normalization")
            if normaliser_class is None:
                raise InputError(f"unknown nnU-Net normalisation scheme '{scheme}' in rnca.json; retrain the refiner")
            normaliser = normaliser_class(use_mask_for_norm=False,
                                          intensityproperties=self.intensity_properties.get(str(c), {}))
            out[c] = normaliser.run(image[c].astype(np.float32, copy=True))
        return out
