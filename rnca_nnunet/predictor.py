"""RNCAPredictor: nnU-Net's own predictor with the refiner as its last stage, case by case, in memory.

Everything nnU-Net does stays nnU-Net's: preprocessing, sliding window, the return to original image
space (its `convert_predicted_logits_to_segmentation_with_correct_shape`, run in its export pool),
output names, `overwrite=False` (--continue_prediction) and `num_parts`/`part_id`. Only the export
changes: the original-space probabilities are refined with the raw image and what is refined is what
is written, atomically. Nothing is staged on disk, so each part of a multi-process run refines exactly
the cases it predicted, and parts writing into one output folder cannot disturb each other.

    predictor = RNCAPredictor(device=torch.device("cuda"))
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(0, 1, 2, 3, 4))  # finds rnca/
    predictor.predict_from_files(images_folder, output_folder)
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from time import sleep
from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from rnca_nnunet.data import read_image, read_model_folder
from rnca_nnunet.nnunet_mirror import finish_prediction, preprocessed_cases
from rnca_nnunet.predict import PictureFolders, refine_and_report, write_pictures, write_refined_case, write_uncertainty
from rnca_nnunet.registry import Refiner, load_refiner

SOURCE = "rnca_source"  # key added to nnU-Net's preprocessed items: the raw image (array) or its files


def _with_sources(items: Iterable[dict], sources: Sequence[Any], ofiles: Optional[Sequence[str]]) -> Iterator[dict]:
    """Attach each case's raw input to its item: by its output file where it has one, so the pairing does not
    rest on the order nnU-Net's workers hand cases back in; else (cases returned, not written) by position,
    the order nnU-Net returns them in."""
    by_ofile = dict(zip(ofiles, sources)) if ofiles else {}
    for index, item in enumerate(items):
        item[SOURCE] = by_ofile[item["ofile"]] if item.get("ofile") is not None else sources[index]
        yield item


class RNCAPredictor(nnUNetPredictor):
    """nnUNetPredictor whose exports are refined. Without a refiner it is exactly nnUNetPredictor."""

    def __init__(self, *args, refiner: Optional[Refiner] = None, refiner_steps: Optional[int] = None,
                 pictures: PictureFolders = PictureFolders(), log: Callable[[str], None] = print,
                 save_uncertainty: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.refiner, self.refiner_steps, self.pictures, self.log = refiner, refiner_steps, pictures, log
        self.save_uncertainty = save_uncertainty  # <case>_uncertainty.npz beside each written case

    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Union[Tuple[Union[int, str]], None],
                                             checkpoint_name: str = "checkpoint_final.pth",
                                             refiner: Optional[str] = "rnca") -> None:
        """nnU-Net's initialisation, then the refiner registered as `refiner` (its folder inside the model
        folder, `rnca/` for the rNCA), checked against the model's labels; None keeps the one given."""
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        if refiner is not None and self.refiner is None:
            self.refiner = load_refiner(refiner, model_training_output_dir, self.device)
        if self.refiner is not None:
            self.refiner.check_compatible(read_model_folder(model_training_output_dir))

    # ------------------------------------------------------------ where the raw inputs come from
    def _internal_get_data_iterator_from_lists_of_filenames(self, input_list_of_lists: List[List[str]],
                                                            seg_from_prev_stage_files: Optional[List[str]],
                                                            output_filenames_truncated: Optional[List[str]],
                                                            num_processes: int):
        if self.refiner is None:
            return super()._internal_get_data_iterator_from_lists_of_filenames(
                input_list_of_lists, seg_from_prev_stage_files, output_filenames_truncated, num_processes)
        if num_processes == 0:
            items = preprocessed_cases(self, input_list_of_lists, seg_from_prev_stage_files, output_filenames_truncated)
        else:
            items = super()._internal_get_data_iterator_from_lists_of_filenames(
                input_list_of_lists, seg_from_prev_stage_files, output_filenames_truncated, num_processes)
        return _with_sources(items, input_list_of_lists, output_filenames_truncated)

    def get_data_iterator_from_raw_npy_data(self, image_or_list_of_images, segs_from_prev_stage_or_list_of_segs_from_prev_stage,
                                            properties_or_list_of_properties, truncated_ofname,
                                            num_processes: int = 3):
        items = super().get_data_iterator_from_raw_npy_data(
            image_or_list_of_images, segs_from_prev_stage_or_list_of_segs_from_prev_stage,
            properties_or_list_of_properties, truncated_ofname, num_processes)
        if self.refiner is None:
            return items
        images = image_or_list_of_images if isinstance(image_or_list_of_images, list) else [image_or_list_of_images]
        ofiles = truncated_ofname if isinstance(truncated_ofname, list) else [truncated_ofname]
        return _with_sources(items, images, ofiles if all(o is not None for o in ofiles) else None)

    def predict_from_files_sequential(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: Optional[str] = None):
        if self.refiner is None:
            return super().predict_from_files_sequential(list_of_lists_or_source_folder,
                                                         output_folder_or_list_of_truncated_output_files,
                                                         save_probabilities, overwrite, folder_with_segs_from_prev_stage)
        return self.predict_from_files(list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       save_probabilities, overwrite, 0, 0, folder_with_segs_from_prev_stage)

    # ------------------------------------------------------------ prediction, refinement, export
    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        """Logits per case (nnU-Net), original-space probabilities (nnU-Net's export code, in its pool while
        the next case is predicted), then refinement and the written files (here); see nnunet_mirror.py."""
        if self.refiner is None:
            return super().predict_from_data_iterator(data_iterator, save_probabilities,
                                                      num_processes_segmentation_export)
        if num_processes_segmentation_export == 0:
            results = [self._finish(item, self._to_original_space(item), save_probabilities)
                       for item in self._with_logits(data_iterator)]
            finish_prediction(data_iterator, self.device)
            return results
        results = []
        with multiprocessing.get_context("spawn").Pool(num_processes_segmentation_export) as pool:
            workers = list(pool._pool)
            pending: Deque[Tuple[dict, Any]] = deque()
            for item in self._with_logits(data_iterator):
                pending.append((item, pool.apply_async(convert_predicted_logits_to_segmentation_with_correct_shape,
                                                       self._conversion_args(item))))
                while len(pending) > 1 or (pending and pending[0][1].ready()):
                    done, waiting = pending.popleft()
                    results.append(self._finish(done, _wait(waiting, workers), save_probabilities))
            while pending:
                done, waiting = pending.popleft()
                results.append(self._finish(done, _wait(waiting, workers), save_probabilities))
        finish_prediction(data_iterator, self.device)
        return results

    def _with_logits(self, data_iterator: Iterable[dict]) -> Iterator[dict]:
        for item in data_iterator:
            data = item["data"]
            if isinstance(data, str):  # nnU-Net's iterators may hand large cases over as .npy files
                path, data = data, torch.from_numpy(np.load(data))
                os.remove(path)
            item["logits"] = self.predict_logits_from_preprocessed_data(data).cpu().numpy()
            del item["data"]
            yield item

    def _conversion_args(self, item: dict) -> tuple:
        logits = item.pop("logits")
        return logits, self.plans_manager, self.configuration_manager, self.label_manager, item["data_properties"], True

    def _to_original_space(self, item: dict) -> Tuple[np.ndarray, np.ndarray]:
        return convert_predicted_logits_to_segmentation_with_correct_shape(*self._conversion_args(item))

    def _finish(self, item: dict, converted: Tuple[np.ndarray, np.ndarray], save_probabilities: bool):
        source = item[SOURCE]
        image = source if isinstance(source, np.ndarray) else \
            read_image(self.plans_manager.image_reader_writer_class(), source)[0]
        return self._refine_and_export(image, converted, item["data_properties"], item["ofile"],
                                       save_probabilities)

    def _refine_and_export(self, image: np.ndarray, converted: Tuple[np.ndarray, np.ndarray], properties: dict,
                           ofile: Optional[str], save_probabilities: bool):
        """Refine one case (nnU-Net's segmentation and probabilities in original space); write it like nnU-Net
        when `ofile` is given, else return what nnU-Net returns."""
        base, probabilities = converted
        refined, segmentation, steps, report = refine_and_report(self.refiner, image, probabilities, self.refiner_steps)
        if ofile is None:
            return (segmentation, refined) if save_probabilities else segmentation
        case = os.path.basename(ofile)
        write_pictures(self.pictures, case, self.refiner, image, probabilities, base, segmentation, steps)
        line = f"refined {case}: {report}"
        if self.save_uncertainty:
            line += "; " + write_uncertainty(self.refiner, ofile, image, probabilities, segmentation, steps)
        write_refined_case(self.plans_manager.image_reader_writer_class(), ofile, self.dataset_json["file_ending"],
                           segmentation, properties, refined if save_probabilities else None)
        self.log(line)
        return None

    def predict_single_npy_array(self, input_image: np.ndarray, image_properties: dict,
                                 segmentation_previous_stage: Optional[np.ndarray] = None,
                                 output_file_truncated: Optional[str] = None,
                                 save_or_return_probabilities: bool = False):
        if self.refiner is None:
            return super().predict_single_npy_array(input_image, image_properties, segmentation_previous_stage,
                                                    output_file_truncated, save_or_return_probabilities)
        converted = super().predict_single_npy_array(input_image, image_properties, segmentation_previous_stage,
                                                     None, True)
        return self._refine_and_export(input_image, converted, image_properties, output_file_truncated,
                                       save_or_return_probabilities)


def _wait(result: Any, workers: List[Any]) -> Any:
    """The result of an export job; a clear error instead of a hang when the OS killed a worker
    (`workers` as the pool started: a pool silently replaces a dead worker, and its job is lost)."""
    while not result.ready():
        if not all(worker.is_alive() for worker in workers):
            raise RuntimeError("an nnU-Net export worker died (likely killed by the OS for lack of memory); "
                               "use fewer export processes (-nps 1)")
        sleep(0.05)
    return result.get()
