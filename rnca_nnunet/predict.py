"""Prediction: nnU-Net's own nnUNetv2_predict, then the refiner as the last stage, in original image space.

Why original space (after nnU-Net's export) and not network space: the refiner was trained on the
CV probabilities nnU-Net exports, which are in original space, and what it produces is exactly what
is written, so no resampling can reopen a gap it closed. nnU-Net's prediction runs unchanged (every
flag, present and future, keeps working); its probabilities go to a hidden folder inside the output
folder, which is refined case by case into the output folder and removed at the end.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, save_pickle

from rnca_nnunet.errors import InputError
from rnca_nnunet.data import ModelFolder, image_files, read_probabilities
from rnca_nnunet.files import atomic_path
from rnca_nnunet.pictures import representative_slice, write_evolution, write_overlay
from rnca_nnunet.registry import Refiner
from rnca_nnunet.state import LabelSemantics, mask_from_probabilities, segmentation_from_mask

UNREFINED_FOLDER = ".rnca_unrefined"
COPIED_FILES = ("dataset.json", "plans.json", "predict_from_raw_data_args.json")


@dataclass
class PictureFolders:
    """Where to write before/after overlays (`png`) and step-by-step GIFs (`gif`); None writes none."""
    png: Optional[str] = None
    gif: Optional[str] = None


def write_pictures(folders: PictureFolders, case: str, refiner: Refiner, semantics: LabelSemantics,
                   image: np.ndarray, probabilities: np.ndarray, segmentation: np.ndarray, steps: int) -> None:
    """Overlay of nnU-Net's mask and the refined one on the first image channel; the rule's evolution."""
    base = segmentation_from_mask(mask_from_probabilities(probabilities, semantics), semantics)
    channel = image[0]
    if folders.png:
        write_overlay(join(folders.png, case + ".png"), channel, base, segmentation)
    if folders.gif:
        if not hasattr(refiner, "evolution"):
            raise InputError(f"refiner {type(refiner).__name__} cannot show its steps; drop --gif")
        z = representative_slice(base, segmentation)
        frames = refiner.evolution(image, probabilities, z, steps)
        write_evolution(join(folders.gif, case + ".gif"), channel[z], frames, segmentation[z])


def refine_case(refiner: Refiner, model: ModelFolder, npz_path: str, images_folder: str, out_folder: str,
                save_probabilities: bool, steps: Optional[int] = None,
                pictures: PictureFolders = PictureFolders()) -> int:
    """Refine one exported case and write it like nnU-Net does (pictures too if asked); returns the steps used."""
    case = os.path.basename(npz_path)[:-4]
    probabilities, properties = read_probabilities(npz_path)
    files = image_files(images_folder, case, model.file_ending)
    image, _ = model.reader_writer.read_images(files)
    refined, segmentation, used = refiner.refine(image, probabilities, steps)
    write_pictures(pictures, case, refiner, model.semantics, image, probabilities, segmentation, used)
    if save_probabilities:
        with atomic_path(join(out_folder, case + ".npz")) as tmp:
            np.savez_compressed(tmp, probabilities=refined.astype(np.float32))
        with atomic_path(join(out_folder, case + ".pkl")) as tmp:
            save_pickle(properties, tmp)
    with atomic_path(join(out_folder, case + model.file_ending), model.file_ending) as tmp:
        model.reader_writer.write_seg(segmentation, tmp, properties)
    return used


def refine_folder(refiner: Refiner, model: ModelFolder, probabilities_folder: str, images_folder: str,
                  out_folder: str, save_probabilities: bool, steps: Optional[int] = None, overwrite: bool = True,
                  log: Callable[[str], None] = print, pictures: PictureFolders = PictureFolders()) -> List[str]:
    """Refine every `<case>.npz` (+ `.pkl`) of an nnU-Net export; returns the cases written."""
    npz_files = sorted(glob.glob(join(probabilities_folder, "*.npz")))
    if not npz_files:
        raise InputError(f"no .npz probabilities in {probabilities_folder}; predict with --save_probabilities "
                         f"(or nnUNetv2_ensemble --save_npz) first")
    done = []
    for npz in npz_files:
        case = os.path.basename(npz)[:-4]
        if not overwrite and isfile(join(out_folder, case + model.file_ending)):
            continue
        used = refine_case(refiner, model, npz, images_folder, out_folder, save_probabilities, steps, pictures)
        log(f"refined {case}: {used} steps")
        done.append(case)
    return done


def _option(argv: Sequence[str], flag: str) -> Optional[str]:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def predict_with_refiner(nnunet_argv: List[str], refiner: Refiner, model: ModelFolder,
                         steps: Optional[int] = None, pictures: PictureFolders = PictureFolders()) -> None:
    """Run nnUNetv2_predict (arguments unchanged but -o) into a hidden folder, then refine into -o."""
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point

    images_folder, out_folder = _option(nnunet_argv, "-i"), _option(nnunet_argv, "-o")
    save_probabilities = "--save_probabilities" in nnunet_argv
    base_folder = join(out_folder, UNREFINED_FOLDER)
    argv = list(nnunet_argv)
    argv[argv.index("-o") + 1] = base_folder
    if not save_probabilities:
        argv.append("--save_probabilities")
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *argv]
    try:
        predict_entry_point()
    finally:
        sys.argv = saved_argv
    refine_folder(refiner, model, base_folder, images_folder, out_folder, save_probabilities, steps,
                  overwrite="--continue_prediction" not in nnunet_argv, pictures=pictures)
    for name in COPIED_FILES:
        if isfile(join(base_folder, name)):
            shutil.copy2(join(base_folder, name), join(out_folder, name))
    shutil.rmtree(base_folder)
