"""Classical post-processing that a refiner has to beat: nnU-Net's largest-component rule and closing
(speck removal, the rNCA read-out's filter on its own, is in rnca_nnunet.cleanup)."""
from __future__ import annotations

import os
from typing import Callable, List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p, subfiles
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
from scipy import ndimage
from skimage.morphology import ball, disk

from rnca_nnunet.files import atomic_path


def keep_largest_component(segmentation: np.ndarray, labels: List[int]) -> np.ndarray:
    """nnU-Net's post-processing, applied to every foreground label on its own."""
    for label in labels:
        segmentation = remove_all_but_largest_component_from_segmentation(segmentation, label)
    return segmentation


def morphological_closing(segmentation: np.ndarray, labels: List[int], radius: int = 2) -> np.ndarray:
    """Close each label (a disk per slice for 2D data, a ball for volumes); new cells only fill background."""
    is_2d = segmentation.shape[0] == 1
    footprint = disk(radius)[None] if is_2d else ball(1)
    out = segmentation.copy()
    for label in labels:
        closed = ndimage.binary_closing(segmentation == label, footprint)
        out[closed & (out == 0)] = label
    return out


def apply_to_folder(function: Callable[[np.ndarray, List[int]], np.ndarray], labels: List[int],
                    in_folder: str, out_folder: str, file_ending: str) -> List[str]:
    """Read every segmentation with nnU-Net's reader-writer, apply `function`, write it (atomically)."""
    maybe_mkdir_p(out_folder)
    files = subfiles(in_folder, suffix=file_ending, sort=True)
    reader = determine_reader_writer_from_file_ending(file_ending, files[0], verbose=False)() if files else None
    for path in files:
        segmentation, properties = reader.read_seg(path)
        result = function(segmentation[0].astype(np.uint8), labels)
        with atomic_path(os.path.join(out_folder, os.path.basename(path)), file_ending) as tmp:
            reader.write_seg(result, tmp, properties)
    return files
