"""Writing refined cases as nnU-Net writes them, and refining a folder of exported probabilities.

Prediction itself goes through nnU-Net's own predictor (`predictor.RNCAPredictor`), which refines each
case in memory. `refine_folder` is the other way in: the `.npz` files of `--save_probabilities` or of
`nnUNetv2_ensemble --save_npz`, refined in original space. Their `.pkl` files are never unpickled
(a crafted pickle runs code): the properties nnU-Net's writer needs come from reading the raw image,
and a `.pkl` that must be written again is copied byte for byte.
"""
from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, save_pickle
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter

from rnca_nnunet.data import ModelFolder, image_files, read_image, read_probabilities
from rnca_nnunet.errors import InputError
from rnca_nnunet.files import atomic_folder_path, atomic_path, check_writable_folder
from rnca_nnunet.pictures import representative_slice, write_evolution, write_overlay
from rnca_nnunet.registry import Refiner


@dataclass
class PictureFolders:
    """Where to write before/after overlays (`png`) and step-by-step GIFs (`gif`); None writes none."""
    png: Optional[str] = None
    gif: Optional[str] = None


def write_pictures(folders: PictureFolders, case: str, refiner: Refiner, image: np.ndarray,
                   probabilities: np.ndarray, base: np.ndarray, segmentation: np.ndarray, steps: int) -> None:
    """Overlay of nnU-Net's mask (`base`) and the refined one on the first image channel; the rule's evolution.
    Volumes are shown in the refiner's axis order (slices as a 2D rule sees them)."""
    to_rule_axes = getattr(refiner, "to_rule_axes", lambda array: array)
    channel = to_rule_axes(image)[0]
    base, segmentation = to_rule_axes(base[None])[0], to_rule_axes(segmentation[None])[0]
    if folders.png:
        write_overlay(join(folders.png, case + ".png"), channel, base, segmentation)
    if folders.gif:
        if not hasattr(refiner, "evolution"):
            raise InputError(f"refiner {type(refiner).__name__} cannot show its steps; drop --gif")
        z = representative_slice(base, segmentation)
        frames = refiner.evolution(image, probabilities, z, steps)
        write_evolution(join(folders.gif, case + ".gif"), channel[z], frames, segmentation[z])


def refine_and_report(refiner: Refiner, image: np.ndarray, probabilities: np.ndarray,
                      steps: Optional[int]) -> Tuple[np.ndarray, np.ndarray, int, str]:
    """`refine`'s outputs and the case's log text: with an rNCA, how many holes the rule opened in nnU-Net's
    structure and whether they were filled, how much of it the rule rewrote and whether the case fell back to the
    clean-up alone (other refiners: the steps)."""
    if hasattr(refiner, "refine_case"):
        case = refiner.refine_case(image, probabilities, steps)
        return case.probabilities, case.segmentation, case.steps, str(case)
    refined, segmentation, used = refiner.refine(image, probabilities, steps)
    return refined, segmentation, used, f"{used} steps"


def write_uncertainty(refiner: Refiner, output_file_truncated: str, image: np.ndarray, probabilities: np.ndarray,
                      segmentation: np.ndarray, steps: int) -> str:
    """`<case>_uncertainty.npz` beside the segmentation: `uncertainty` (Z, Y, X), per cell the share of stochastic
    rollouts whose label differs from the written one (float16, 0 stable to 1 always different), and the case's
    two scores `cells` and `topology` (see `refiner.Instability`); returns the scores as one line for the log."""
    if not hasattr(refiner, "instability"):
        raise InputError(f"refiner {type(refiner).__name__} has no stochastic rollouts; drop --save_uncertainty")
    result = refiner.instability(image, probabilities, segmentation, steps)
    with atomic_path(output_file_truncated + "_uncertainty.npz") as tmp:
        np.savez_compressed(tmp, uncertainty=result.map.astype(np.float16), cells=result.cells,
                            topology=result.topology)
    return str(result)


def write_refined_case(reader_writer: BaseReaderWriter, output_file_truncated: str, file_ending: str,
                       segmentation: np.ndarray, properties: dict, probabilities: Optional[np.ndarray] = None,
                       pkl_file: Optional[str] = None) -> None:
    """What nnU-Net's export writes (segmentation, and `.npz` + `.pkl` with probabilities), each file atomic,
    the segmentation last so that its presence means the case is complete (--continue_prediction).
    `pkl_file`: copy these bytes as the `.pkl` instead of pickling `properties`."""
    if probabilities is not None:
        with atomic_path(output_file_truncated + ".npz") as tmp:
            np.savez_compressed(tmp, probabilities=probabilities.astype(np.float32))
        with atomic_path(output_file_truncated + ".pkl") as tmp:
            if pkl_file is not None:
                shutil.copyfile(pkl_file, tmp)
            else:
                save_pickle(properties, tmp)
    with atomic_folder_path(output_file_truncated + file_ending) as path:
        reader_writer.write_seg(segmentation, path, properties)


def refine_case(refiner: Refiner, model: ModelFolder, npz_path: str, images_folder: str, out_folder: str,
                save_probabilities: bool, steps: Optional[int] = None,
                pictures: PictureFolders = PictureFolders(), save_uncertainty: bool = False) -> str:
    """Refine one exported case and write it like nnU-Net does (pictures and uncertainty too if asked); returns
    the log line of the case."""
    case = os.path.basename(npz_path)[:-4]
    image, properties = read_image(model.reader_writer, image_files(images_folder, case, model.file_ending))
    probabilities = read_probabilities(npz_path, image.shape[1:])
    refined, segmentation, used, report = refine_and_report(refiner, image, probabilities, steps)
    base = model.semantics.manager.convert_probabilities_to_segmentation(probabilities)
    write_pictures(pictures, case, refiner, image, probabilities, np.asarray(base), segmentation, used)
    pkl = npz_path[:-4] + ".pkl"
    if save_probabilities and not isfile(pkl):
        raise InputError(f"{pkl} not found: nnU-Net writes it beside the .npz; re-export with --save_probabilities "
                         f"or drop --save_probabilities")
    line = f"refined {case}: {report}"
    if save_uncertainty:
        line += "; " + write_uncertainty(refiner, join(out_folder, case), image, probabilities, segmentation, used)
    write_refined_case(model.reader_writer, join(out_folder, case), model.file_ending, segmentation, properties,
                       refined if save_probabilities else None, pkl)
    return line


def refine_folder(refiner: Refiner, model: ModelFolder, probabilities_folder: str, images_folder: str,
                  out_folder: str, save_probabilities: bool, steps: Optional[int] = None,
                  log: Callable[[str], None] = print, pictures: PictureFolders = PictureFolders(),
                  save_uncertainty: bool = False) -> List[str]:
    """Refine every `<case>.npz` of an nnU-Net export; returns the cases written."""
    for flag, folder in (("-i", probabilities_folder), ("-images", images_folder)):
        if not os.path.isdir(folder):
            raise InputError(f"{flag} {folder} is not a folder")
    if os.path.isdir(out_folder) and os.path.samefile(out_folder, probabilities_folder):
        raise InputError(f"-o {out_folder} is the input folder -i: refining in place would overwrite nnU-Net's own "
                         f"outputs; give another -o")
    for flag, folder in (("-o", out_folder), ("--png", pictures.png), ("--gif", pictures.gif)):
        if folder is not None:
            check_writable_folder(folder, flag)
    npz_files = sorted(f for f in glob.glob(join(probabilities_folder, "*.npz")) if not f.endswith("_uncertainty.npz"))
    if not npz_files:
        raise InputError(f"no <case>.npz probability files in -i {probabilities_folder}; predict with "
                         f"nnUNetv2_predict --save_probabilities (or nnUNetv2_ensemble --save_npz) into it first")
    done = []
    for npz in npz_files:
        log(refine_case(refiner, model, npz, images_folder, out_folder, save_probabilities, steps, pictures,
                        save_uncertainty))
        done.append(os.path.basename(npz)[:-4])
    return done
