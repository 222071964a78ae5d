"""nnUNetv2_predict_rnca's arguments and folders, checked before nnU-Net sees them.

nnU-Net meets most bad inputs as an IndexError, an assertion or a traceback from one of its worker processes
("Background workers died"); here each one is a single line naming the file or flag, before anything is written.
"""
from __future__ import annotations

import argparse
import os
import re
import zipfile
from typing import Callable, List

from rnca_nnunet.data import read_image
from rnca_nnunet.errors import InputError
from rnca_nnunet.files import check_writable_folder


def check_prediction_arguments(args: argparse.Namespace, model_folder: str,
                               log: Callable[[str], None] = print) -> List:
    """Everything nnU-Net would otherwise meet as an assertion, a traceback or a silent no-op; returns the folds.
    With --continue_prediction, outputs that are empty or unreadable are removed so that they are predicted again
    (nnU-Net counts any existing file as done)."""
    from rnca_nnunet.data import read_model_folder

    if not os.path.isdir(args.i):
        raise InputError(f"-i {args.i} is not a folder; give the folder with the images <case>_0000<ending>")
    if os.path.isdir(args.o) and os.path.samefile(args.o, args.i):
        raise InputError(f"-o {args.o} is the input folder -i: the next run would read the segmentations as "
                         f"images; give another -o")
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        raise InputError(f"-part_id {args.part_id} with -num_parts {args.num_parts}: part IDs run from 0 to "
                         f"num_parts - 1")
    if not 0 < args.step_size <= 1:
        raise InputError(f"-step_size {args.step_size} must be in (0, 1]")
    if args.npp < 0 or args.nps < 0:
        raise InputError("-npp and -nps must be >= 0 (both 0: no multiprocessing)")
    folds = [_check_fold(fold, model_folder, args.chk) for fold in args.f]
    model = read_model_folder(model_folder)
    cases = check_input_images(args.i, model.file_ending, model.reader_writer)
    if args.prev_stage_predictions is not None:
        check_previous_stage(args.prev_stage_predictions, cases, model.file_ending)
    for flag, folder in (("-o", args.o), ("--png", getattr(args, "png", None)), ("--gif", getattr(args, "gif", None))):
        if folder is not None:
            check_writable_folder(folder, flag)
    if args.continue_prediction:
        redo_unreadable_outputs(args.o, cases, model.file_ending, model.reader_writer, args.save_probabilities, log)
    return folds


def _check_fold(fold: str, model_folder: str, checkpoint_name: str):
    if fold != "all" and not str(fold).isdigit():
        raise InputError(f"-f {fold}: folds are numbers or 'all'")
    fold = fold if fold == "all" else int(fold)
    checkpoint = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
    if not os.path.isfile(checkpoint):
        raise InputError(f"{checkpoint} not found: fold {fold} is not trained (or -chk is wrong); pass -f with "
                         f"the trained folds")
    if not zipfile.is_zipfile(checkpoint):  # torch.save writes a zip archive; a truncated copy has no directory
        raise InputError(f"{checkpoint}: not a complete PyTorch checkpoint (truncated or damaged); copy the fold "
                         f"again or pass -f with the other folds")
    return fold


def case_name(file: str, file_ending: str) -> str:
    """`<case>` of an input image `<case>_XXXX<ending>`; '' for a file not named so."""
    match = re.fullmatch(rf"(.+)_\d{{4}}{re.escape(file_ending)}", file)
    return match.group(1) if match else ""


def check_input_images(folder: str, file_ending: str, reader) -> List[List[str]]:
    """nnU-Net's lists of `<case>_XXXX<ending>` files in `folder`, after checking that every file with that
    ending is named so (nnU-Net would take `notes.png` for a case and fail) and that every one can be opened;
    headers are read where SimpleITK can, so a broken image is named here, not by a dying worker."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    names = sorted(f for f in os.listdir(folder) if f.endswith(file_ending))
    stray = [f for f in names if not case_name(f, file_ending)]
    if stray:
        raise InputError(f"-i {folder} holds {stray[:3]}{' ...' if len(stray) > 3 else ''}, not named "
                         f"<case>_XXXX{file_ending} like nnU-Net's images; move them out of -i")
    for name in names:
        try:
            os.stat(os.path.join(folder, name))
        except OSError as error:
            raise InputError(f"{os.path.join(folder, name)}: cannot be opened ({error.strerror}); replace the file "
                             f"or the link") from None
    cases = create_lists_from_splitted_dataset_folder(folder, file_ending)
    if not cases:
        raise InputError(f"no images <case>_0000{file_ending} in -i {folder}; the files must end in {file_ending} "
                         f"like the training data")
    for files in cases:
        for file in files:
            _check_image_file(file, reader)
    return cases


def _check_image_file(file: str, reader) -> None:
    import SimpleITK

    header = SimpleITK.ImageFileReader()
    header.SetFileName(file)
    try:
        header.ReadImageInformation()
    except RuntimeError:  # a format SimpleITK does not know, or a broken file: nnU-Net's reader decides
        read_image(reader, [file])


def check_previous_stage(folder: str, cases: List[List[str]], file_ending: str) -> None:
    """-prev_stage_predictions must hold `<case><ending>` for every case (nnU-Net's workers die otherwise)."""
    if not os.path.isdir(folder):
        raise InputError(f"-prev_stage_predictions {folder} is not a folder; give the previous stage's "
                         f"predictions of these cases")
    for files in cases:
        path = os.path.join(folder, case_name(os.path.basename(files[0]), file_ending) + file_ending)
        if not os.path.isfile(path):
            raise InputError(f"{path} not found: -prev_stage_predictions must hold the previous stage's "
                             f"prediction of every case in -i")


def redo_unreadable_outputs(folder: str, cases: List[List[str]], file_ending: str, reader, save_probabilities: bool,
                            log: Callable[[str], None]) -> None:
    """--continue_prediction skips every case whose output exists; an empty or unreadable one (a copy cut short,
    a full disk under another writer) is removed, with a line, so it is predicted again."""
    for files in cases:
        truncated = os.path.join(folder, case_name(os.path.basename(files[0]), file_ending))
        outputs = [truncated + file_ending] + ([truncated + ".npz"] if save_probabilities else [])
        if not all(os.path.isfile(path) for path in outputs):
            continue
        problem = next((f"{path} is empty" for path in outputs if os.path.getsize(path) == 0), None)
        if problem is None:
            try:
                read_image(reader, outputs[:1], segmentation=True)
            except InputError:
                problem = f"{outputs[0]} cannot be read"
        if problem:
            for path in outputs:
                os.remove(path)
            log(f"--continue_prediction: {problem}; predicting it again")
