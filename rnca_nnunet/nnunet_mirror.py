"""What rnca-nnunet copies from nnU-Net, in one place, with the nnunetv2 releases it mirrors.

nnU-Net offers no function for these, so they are copied; tests/test_nnunet_mirror.py compares each copy with
the installed nnunetv2, and CI runs it against the oldest and the newest release setup.cfg admits, so a
release that changes one fails CI instead of drifting silently.

- `add_nnunet_predict_arguments`: the arguments of `nnunetv2.inference.predict_from_raw_data
  .predict_entry_point` (nnUNetv2_predict), which builds its parser inside the entry point, with the
  environment defaults of its `_getDefaultValue`.
- `preprocessed_cases`: the preprocessing loop of `nnUNetPredictor.predict_from_files_sequential`, as an
  iterator, so sequential prediction goes through the same export as the multi-process one.
- `RNCAPredictor.predict_from_data_iterator` (predictor.py) follows nnU-Net's method of that name: logits on
  the device while the export pool returns the previous case to the original image space, the workers
  watched, and the same clean-up at the end (`finish_prediction`). Only the export differs: nnU-Net writes
  each case inside a pool worker through a module function, which leaves no seam for a last stage.
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator, List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

NNUNET_RELEASES_MIRRORED = ("2.8.0", "2.8.1")


def _environment_default(name: str, default: int) -> int:
    """nnU-Net's `_getDefaultValue`: a process count from the environment; unset, empty or not a whole number:
    `default` (as nnU-Net, which ignores a bad value; prediction_checks refuses negative counts)."""
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def add_nnunet_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Every argument of nnUNetv2_predict, with its flag, type, default and count as there."""
    add = parser.add_argument
    add("-i", type=str, required=True, help="input folder (file names <case>_0000<ending>, as in training)")
    add("-o", type=str, required=True, help="output folder (created if missing)")
    add("-d", type=str, required=True, help="dataset name or id")
    add("-p", type=str, required=False, default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    add("-tr", type=str, required=False, default="nnUNetTrainer", help="trainer of the model (default nnUNetTrainer)")
    add("-c", type=str, required=True, help="configuration (2d, 3d_fullres, ...)")
    add("-f", nargs="+", type=str, required=False, default=(0, 1, 2, 3, 4), help="folds (default 0 1 2 3 4)")
    add("-step_size", type=float, required=False, default=0.5,
        help="sliding-window step as a share of the patch (default 0.5, at most 1)")
    add("--disable_tta", action="store_true", required=False, default=False,
        help="no mirroring at test time: faster, slightly less accurate")
    add("--verbose", action="store_true", help="talk more")
    add("--save_probabilities", action="store_true", help="also write <case>.npz and <case>.pkl (for ensembling)")
    add("--continue_prediction", action="store_true", help="keep the cases already written")
    add("-chk", type=str, required=False, default="checkpoint_final.pth",
        help="checkpoint file name (default checkpoint_final.pth)")
    add("-npp", type=int, required=False, default=_environment_default("nnUNet_npp", 3),
        help="preprocessing processes (default 3, or $nnUNet_npp)")
    add("-nps", type=int, required=False, default=_environment_default("nnUNet_nps", 3),
        help="export processes (default 3, or $nnUNet_nps)")
    add("-prev_stage_predictions", type=str, required=False, default=None,
        help="predictions of the previous stage (cascaded models)")
    add("-num_parts", type=int, required=False, default=1, help="number of separate calls sharing the cases (default 1)")
    add("-part_id", type=int, required=False, default=0, help="which of the -num_parts calls this is (from 0)")
    add("-device", type=str, default="cuda", required=False,
        help="cuda, cpu or mps (default cuda; choose a GPU with CUDA_VISIBLE_DEVICES)")
    add("--disable_progress_bar", action="store_true", required=False, default=False, help="no progress bar")
    add("--not_on_device", action="store_true", required=False, default=False,
        help="keep the sliding window's results off the device (cases larger than its memory)")


def preprocessed_cases(predictor, lists: List[List[str]], previous: Optional[List[str]],
                       ofiles: Optional[List[str]]) -> Iterator[dict]:
    """nnU-Net's sequential preprocessing (`predict_from_files_sequential`) as the items its data iterators
    yield: 'data', 'data_properties', 'ofile'."""
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=predictor.verbose)
    for index, files in enumerate(lists):
        previous_file = previous[index] if previous else None
        data, seg, properties = preprocessor.run_case(files, previous_file, predictor.plans_manager,
                                                      predictor.configuration_manager, predictor.dataset_json)
        if previous_file is not None:
            one_hot = convert_labelmap_to_one_hot(seg[0], predictor.label_manager.foreground_labels, data.dtype)
            data = np.vstack((data, one_hot))
        yield {"data": torch.from_numpy(data), "data_properties": properties,
               "ofile": ofiles[index] if ofiles else None}


def finish_prediction(data_iterator: object, device: torch.device) -> None:
    """What nnU-Net does after its last case: stop the preprocessing workers, clear the Gaussian cache and the
    device's memory cache."""
    if isinstance(data_iterator, MultiThreadedAugmenter):
        data_iterator._finish()
    compute_gaussian.cache_clear()
    empty_cache(device)
