"""Argument parsing for the console scripts (nothing else in the package parses arguments).

Bad input ends with one line on stderr that names the file and the fix, and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from typing import Callable, Iterator, List, Optional

import torch

from rnca_nnunet.config import check_steps
from rnca_nnunet.cpu_memory import reuse_freed_memory
from rnca_nnunet.device_policy import PRECISIONS, default_device
from rnca_nnunet.errors import InputError


def _friendly_errors(main: Callable[[], None]) -> Callable[[], None]:
    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def _device(name: Optional[str]) -> torch.device:
    """The requested device; CUDA when present if none was requested, else CPU."""
    if name is None:
        return default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("-device cuda was requested but no CUDA device is available; use -device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise InputError(f"-device must be cpu, cuda or mps, got '{name}'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("-device mps was requested but this machine has no MPS device (Apple silicon); use -device cpu")
    return torch.device(name)


def _model_folder(dataset: str, trainer: str, plans: str, configuration: Optional[str]) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as error:
        raise InputError(f"dataset '{dataset}' not found ({str(error).splitlines()[0]}); check nnUNet_raw, "
                         f"nnUNet_preprocessed and nnUNet_results") from None
    candidates = [configuration] if configuration else ["3d_fullres", "2d", "3d_lowres", "3d_cascade_fullres"]
    folders = [get_output_folder(dataset_name, trainer, plans, c) for c in candidates]
    existing = [f for f in folders if os.path.isdir(f)]
    if not existing:
        raise InputError(f"no nnU-Net model folder {folders[0]}; train nnU-Net first (nnUNetv2_train ... --npz) or "
                         f"pass the right -c/-tr/-p")
    return existing[0]


@_friendly_errors
def train_entry_point() -> None:
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from rnca_nnunet.config import load_preset, preset_names
    from rnca_nnunet.data import read_model_folder
    from rnca_nnunet.run_training import decide_read_out_again, train_from_model_folder

    parser = argparse.ArgumentParser(description="Train an rNCA refiner on the --npz cross-validation predictions "
                                                 "of an nnU-Net model; writes <model folder>/rnca/.")
    parser.add_argument("dataset", help="dataset name or id, as for nnUNetv2_train")
    parser.add_argument("-c", default=None, help="configuration (2d, 3d_fullres, ...); default: the one trained")
    parser.add_argument("-tr", default="nnUNetTrainer", help="nnU-Net trainer (default nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--preset", default=None,
                        help=f"one of {preset_names()} or a JSON file; default vessels_2d (2D) or default_3d (3D)")
    parser.add_argument("-device", default=None, help="cuda, cpu or mps (default: cuda when present)")
    parser.add_argument("--folds", nargs="+", type=int, default=None, help="use these folds' CV predictions only")
    parser.add_argument("--val_fraction", type=float, default=None, help="share of cases held out (default 0.2)")
    parser.add_argument("--iterations", type=int, default=None, help="override the preset's training iterations")
    parser.add_argument("--keep_base_loops", action="store_true",
                        help="always keep the topology of nnU-Net's mask (loops and components, none lost and none "
                             "added) and let the rule reshape only its outlines")
    parser.add_argument("--read_out_only", action="store_true",
                        help="keep the rule of the existing rnca/ and only choose its read-out again on the CV "
                             "cases it was trained and held out on (minutes, no training): a refiner trained by an "
                             "older rnca-nnunet gets the read-out settings added since, and one copied from another "
                             "model of this dataset gets a read-out chosen on this model's CV predictions")
    parser.add_argument("--disable_progress_bar", action="store_true")
    args = parser.parse_args()
    reuse_freed_memory()
    model = read_model_folder(_model_folder(args.dataset, args.tr, args.p, args.c))
    images, labels = (join(str(nnUNet_raw), model.dataset_name, "imagesTr"),
                      join(str(nnUNet_preprocessed), model.dataset_name, "gt_segmentations"))
    if args.read_out_only:
        chosen = [flag for flag, value in (("--preset", args.preset), ("--folds", args.folds),
                                           ("--val_fraction", args.val_fraction), ("--iterations", args.iterations),
                                           ("--keep_base_loops", args.keep_base_loops)) if value]
        if chosen:
            raise InputError(f"--read_out_only keeps the refiner's rule, cases and settings; drop {' '.join(chosen)}")
        decide_read_out_again(model, images, labels, _device(args.device), not args.disable_progress_bar)
        return
    overrides = {k: v for k, v in (("val_fraction", args.val_fraction), ("iterations", args.iterations)) if v is not None}
    if args.keep_base_loops:
        overrides["keep_base_loops"] = True
    if "iterations" in overrides:
        overrides["validate_every"] = max(1, args.iterations // 10)
    config = load_preset(args.preset or ("vessels_2d" if model.ndim == 2 else "default_3d"), overrides)
    if len(config.patch_size) != model.ndim:
        raise InputError(f"preset patch_size {config.patch_size} is not {model.ndim}D like configuration "
                         f"{model.configuration}; choose a {model.ndim}D preset")
    train_from_model_folder(model, images, labels, config, _device(args.device), args.folds,
                            not args.disable_progress_bar)


def _load_refiner(name: str, model_folder: str, device: torch.device):
    from rnca_nnunet.data import read_model_folder
    from rnca_nnunet.registry import load_refiner

    model = read_model_folder(model_folder)
    refiner = load_refiner(name, model_folder, device)
    if refiner is not None:
        refiner.check_compatible(model)
    return model, refiner


UNCERTAINTY_HELP = ("write <case>_uncertainty.npz beside each case: per cell the share of 8 stochastic rollouts "
                    "(cells firing at random, as in training) whose label differs from the written one; 8x the "
                    "refinement time")


def predict_parser() -> argparse.ArgumentParser:
    from rnca_nnunet.nnunet_mirror import add_nnunet_predict_arguments

    parser = argparse.ArgumentParser(prog="nnUNetv2_predict_rnca", description="nnUNetv2_predict with every one of "
                                     "its arguments, plus a refiner as the last stage.")
    add_nnunet_predict_arguments(parser)
    group = parser.add_argument_group("refinement (rnca-nnunet)")
    group.add_argument("--refiner", default="none",
                       help="refiner to run last: rnca (the rnca/ folder inside the model folder) or none (default: "
                            "none, exactly nnUNetv2_predict)")
    group.add_argument("--refiner_steps", type=int, default=None, help="override the refiner's step count")
    group.add_argument("--refiner_precision", default=None, choices=sorted(PRECISIONS),
                       help="the rule's arithmetic (default: float16 on CUDA, bfloat16 on a CPU with bfloat16 "
                            "instructions, else float32; labels within 0.1%% of float32's, see "
                            "benchmarks/SPEED_CUDA.md)")
    group.add_argument("--png", default=None, metavar="DIR", help="before/after overlay per case")
    group.add_argument("--gif", default=None, metavar="DIR", help="the refiner's step-by-step evolution per case")
    group.add_argument("--save_uncertainty", action="store_true", help=UNCERTAINTY_HELP)
    return parser


@_friendly_errors
def predict_entry_point(argv: Optional[List[str]] = None) -> None:
    """nnUNetv2_predict with every one of its arguments, plus --refiner NAME, --refiner_steps N, --png, --gif."""
    args = predict_parser().parse_args(argv)
    reuse_freed_memory()
    if args.refiner == "none" and (args.refiner_steps is not None or args.refiner_precision or args.png or args.gif
                                   or args.save_uncertainty):
        raise InputError("--refiner_steps, --refiner_precision, --png, --gif and --save_uncertainty need a refiner; "
                         "add --refiner rnca")
    run_prediction(args)


def run_prediction(args: argparse.Namespace) -> None:
    """What nnU-Net's predict_entry_point does with its arguments, with RNCAPredictor as the predictor."""
    import multiprocessing

    from rnca_nnunet.predict import PictureFolders
    from rnca_nnunet.prediction_checks import check_prediction_arguments
    from rnca_nnunet.predictor import RNCAPredictor

    model_folder = _model_folder(args.d, args.tr, args.p, args.c)
    folds = check_prediction_arguments(args, model_folder)
    device = _device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif device.type == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    steps = None if args.refiner_steps is None else check_steps(args.refiner_steps, "--refiner_steps")
    predictor = RNCAPredictor(tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
                              perform_everything_on_device=not args.not_on_device, device=device,
                              verbose=args.verbose, verbose_preprocessing=args.verbose,
                              allow_tqdm=not args.disable_progress_bar, refiner_steps=steps,
                              pictures=PictureFolders(args.png, args.gif), save_uncertainty=args.save_uncertainty)
    with nnunet_failures(f"{model_folder} (-chk {args.chk}, -f {' '.join(map(str, folds))})"):
        predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk,
                                                       refiner=None if args.refiner == "none" else args.refiner)
    if args.refiner != "none" and predictor.refiner is None:
        raise InputError(f"refiner '{args.refiner}' refines nothing; drop --refiner to predict without one")
    if args.refiner_precision:
        predictor.refiner = predictor.refiner.replace(precision=args.refiner_precision)
    if steps is not None and hasattr(predictor.refiner, "check_steps"):
        predictor.refiner.check_steps(steps)  # bounded by the trained steps before nnU-Net predicts anything
    os.makedirs(args.o, exist_ok=True)
    with diagnosed_input_errors(args.i, predictor):
        if args.npp == 0 and args.nps == 0:
            predictor.predict_from_files_sequential(args.i, args.o, save_probabilities=args.save_probabilities,
                                                    overwrite=not args.continue_prediction,
                                                    folder_with_segs_from_prev_stage=args.prev_stage_predictions)
        else:
            predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                         overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                         num_processes_segmentation_export=args.nps,
                                         folder_with_segs_from_prev_stage=args.prev_stage_predictions,
                                         num_parts=args.num_parts, part_id=args.part_id)


@contextlib.contextmanager
def nnunet_failures(what: str) -> Iterator[None]:
    """nnU-Net's own failure while loading `what` (a damaged plans.json, a checkpoint of another network) as
    our one line, nnU-Net's message quoted."""
    try:
        yield
    except InputError:
        raise
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
        raise InputError(f"{what}: nnU-Net could not load it ({type(error).__name__}: {first_line}); check that the "
                         f"model folder is complete and was trained with this nnunetv2") from None


@contextlib.contextmanager
def diagnosed_input_errors(images_folder: str, predictor) -> Iterator[None]:
    """nnU-Net's workers die on a broken image without naming it: find the file then and name it."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    from rnca_nnunet.data import find_unusable_image

    try:
        yield
    except InputError:
        raise
    except Exception:
        cases = create_lists_from_splitted_dataset_folder(images_folder, predictor.dataset_json["file_ending"])
        problem = find_unusable_image(cases, predictor.plans_manager.image_reader_writer_class(),
                                      len(predictor.dataset_json["channel_names"]))
        if problem is None:
            raise
        raise InputError(problem) from None


@_friendly_errors
def refine_folder_entry_point() -> None:
    from rnca_nnunet.predict import PictureFolders, refine_folder

    parser = argparse.ArgumentParser(description="Refine a folder of nnU-Net --save_probabilities outputs "
                                                 "(.npz + .pkl), e.g. from nnUNetv2_ensemble --save_npz.")
    parser.add_argument("-i", required=True, help="folder with <case>.npz and <case>.pkl")
    parser.add_argument("-images", required=True, help="folder with the raw images <case>_0000<ending>")
    parser.add_argument("-o", required=True, help="output folder for refined segmentations")
    parser.add_argument("-m", default=None, help="nnU-Net model folder holding rnca/ (or give -d -c -tr -p)")
    parser.add_argument("-d", default=None)
    parser.add_argument("-c", default=None)
    parser.add_argument("-tr", default="nnUNetTrainer")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--refiner", default="rnca")
    parser.add_argument("--refiner_steps", type=int, default=None)
    parser.add_argument("--save_probabilities", action="store_true")
    parser.add_argument("-device", default=None)
    parser.add_argument("--png", default=None, metavar="DIR", help="before/after overlay per case")
    parser.add_argument("--gif", default=None, metavar="DIR", help="the refiner's step-by-step evolution per case")
    parser.add_argument("--save_uncertainty", action="store_true", help=UNCERTAINTY_HELP)
    args = parser.parse_args()
    reuse_freed_memory()
    if args.m is None and args.d is None:
        raise InputError("give the model folder with -m, or -d (and -c/-tr/-p) as for nnUNetv2_predict")
    model_folder = args.m or _model_folder(args.d, args.tr, args.p, args.c)
    model, refiner = _load_refiner(args.refiner, model_folder, _device(args.device))
    if refiner is None:
        raise InputError(f"refiner '{args.refiner}' refines nothing; copy the files instead")
    refine_folder(refiner, model, args.i, args.images, args.o, args.save_probabilities, args.refiner_steps,
                  pictures=PictureFolders(args.png, args.gif), save_uncertainty=args.save_uncertainty)


@_friendly_errors
def evaluate_entry_point() -> None:
    from rnca_nnunet.evaluate import case_stem, evaluate_folders, format_table, save_summary

    parser = argparse.ArgumentParser(description="Dice, clDice, Betti errors, ASSD, HD95 and broken cases of "
                                                 "predictions; with -pred_refined also the change and repair rate.")
    parser.add_argument("-ref", required=True, help="folder with reference labels")
    parser.add_argument("-pred", required=True, help="folder with predictions (same file names)")
    parser.add_argument("-pred_refined", default=None, help="folder with refined predictions to compare")
    parser.add_argument("-o", default=None, help="write the JSON summary here")
    parser.add_argument("-np", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--png", default=None, metavar="DIR", help="write an overlay per case (label, base, "
                        "refined; fixed cells green, broken red) into DIR")
    parser.add_argument("--html", default=None, metavar="DIR", help="write DIR/index.html: the summary and one "
                        "sortable row per case and class (harm included), each with its --png overlay (into "
                        "DIR/cases unless --png is given) and, where -pred_refined holds <case>_uncertainty.npz, "
                        "its uncertainty picture; self-contained, opens offline")
    parser.add_argument("-images", default=None, help="raw images <case>_0000<ending> as --png/--html background")
    parser.add_argument("-djfile", default=None, help="dataset.json with the labels (default: the one nnU-Net "
                        "writes beside its predictions, else the raw dataset's above -ref)")
    args = parser.parse_args()
    from rnca_nnunet.files import check_writable_folder

    folders = {"base": args.pred, **({"refined": args.pred_refined} if args.pred_refined else {})}
    for folder in (args.ref, *folders.values(), *([args.images] if args.images else [])):
        if not os.path.isdir(folder):
            raise InputError(f"{folder} is not a folder")
    if args.np < 1:
        raise InputError(f"-np {args.np}: give 1 or more processes")
    if args.o is not None:
        if os.path.isdir(args.o):
            raise InputError(f"-o {args.o} is a folder; give the JSON summary's file name, e.g. {args.o}/summary.json")
        check_writable_folder(os.path.dirname(os.path.abspath(args.o)), "-o")
    pictures = args.png if args.png is not None or args.html is None else os.path.join(args.html, "cases")
    for folder, flag in ((args.html, "--html"), (pictures, "--png")):
        if folder is not None:
            check_writable_folder(folder, flag)
    summary = evaluate_folders(args.ref, folders, args.np, pictures, args.images, args.djfile)
    print(format_table(summary))
    if args.o:
        save_summary(summary, args.o)
    if args.html:
        from rnca_nnunet.report import write_report

        stems = [case_stem(case["case"]) for case in summary["per_case"]]
        print(f"report: {write_report(summary, args.html, pictures, stems)}")


@_friendly_errors
def export_entry_point() -> None:
    from rnca_nnunet.model_sharing import export_model_with_refiner

    parser = argparse.ArgumentParser(description="nnUNetv2_export_model_to_zip, with each configuration's rnca/ "
                                                 "refiner added: nnUNetv2_install_pretrained_model_from_zip then "
                                                 "installs the model and its refiner.")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-o", required=True, help="output .zip file")
    parser.add_argument("-c", nargs="+", default=("3d_lowres", "3d_fullres", "2d", "3d_cascade_fullres"),
                        help="configurations (as nnU-Net's; with --not_strict the missing ones are skipped)")
    parser.add_argument("-tr", default="nnUNetTrainer")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-f", nargs="+", default=("0", "1", "2", "3", "4"), help="folds")
    parser.add_argument("-chk", nargs="+", default=("checkpoint_final.pth",), help="checkpoints to export")
    parser.add_argument("--not_strict", action="store_true", help="allow missing folds and configurations")
    parser.add_argument("--exp_cv_preds", action="store_true", help="export the cross-validation predictions too")
    args = parser.parse_args()
    if os.path.isdir(args.o):
        raise InputError(f"-o {args.o} is a folder; give the .zip file's name")
    with nnunet_failures(f"dataset {args.d} (-c {' '.join(args.c)}, -tr {args.tr}, -p {args.p}, -f {' '.join(args.f)})"):
        added = export_model_with_refiner(args.d, args.o, args.c, args.tr, args.p, args.f, args.chk,
                                          not args.not_strict, args.exp_cv_preds)
    print(f"{args.o}: nnU-Net's model" + (f" and its refiner(s) {added}" if added else
                                          ", no rnca/ refiner found (trained with nnUNetv2_train_rnca?)"))
