"""Argument parsing for the console scripts (nothing else in the package parses arguments).

Bad input ends with one line on stderr that names the file and the fix, and exit code 2.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable, List, Optional

import torch

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
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("-device cuda was requested but no CUDA device is available; use -device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise InputError(f"-device must be cpu, cuda or mps, got '{name}'")
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
    from rnca_nnunet.train import train_from_model_folder

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
    parser.add_argument("--disable_progress_bar", action="store_true")
    args = parser.parse_args()
    model = read_model_folder(_model_folder(args.dataset, args.tr, args.p, args.c))
    overrides = {k: v for k, v in (("val_fraction", args.val_fraction), ("iterations", args.iterations)) if v is not None}
    if "iterations" in overrides:
        overrides["validate_every"] = max(1, args.iterations // 10)
    config = load_preset(args.preset or ("vessels_2d" if model.ndim == 2 else "default_3d"), overrides)
    if len(config.patch_size) != model.ndim:
        raise InputError(f"preset patch_size {config.patch_size} is not {model.ndim}D like configuration "
                         f"{model.configuration}; choose a {model.ndim}D preset")
    train_from_model_folder(model, join(str(nnUNet_raw), model.dataset_name, "imagesTr"),
                            join(str(nnUNet_preprocessed), model.dataset_name, "gt_segmentations"),
                            config, _device(args.device), args.folds, not args.disable_progress_bar)


def _load_refiner(name: str, model_folder: str, device: torch.device):
    from rnca_nnunet.data import read_model_folder
    from rnca_nnunet.registry import load_refiner

    model = read_model_folder(model_folder)
    refiner = load_refiner(name, model_folder, device)
    if refiner is not None:
        refiner.check_compatible(model)
    return model, refiner


@_friendly_errors
def predict_entry_point() -> None:
    """nnUNetv2_predict with every one of its arguments, plus --refiner NAME and --refiner_steps N."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--refiner", default="none")
    parser.add_argument("--refiner_steps", type=int, default=None)
    parser.add_argument("--png", default=None)
    parser.add_argument("--gif", default=None)
    ours, rest = parser.parse_known_args()
    if "-h" in rest or "--help" in rest:
        print("nnUNetv2_predict_rnca: nnUNetv2_predict plus\n  --refiner NAME        refiner to run last "
              "(rnca, none; default none)\n  --refiner_steps N     override the refiner's step count\n"
              "  --png DIR             before/after overlay per case\n"
              "  --gif DIR             the refiner's step-by-step evolution per case\n")
    if ours.refiner == "none" or "-h" in rest or "--help" in rest:
        from nnunetv2.inference.predict_from_raw_data import predict_entry_point as nnunet_predict

        sys.argv = [sys.argv[0], *rest]
        nnunet_predict()
        return
    from rnca_nnunet.predict import PictureFolders, predict_with_refiner

    known = argparse.ArgumentParser(add_help=False)
    for flag, default in (("-i", None), ("-o", None), ("-d", None), ("-c", None), ("-tr", "nnUNetTrainer"),
                          ("-p", "nnUNetPlans"), ("-device", "cuda")):
        known.add_argument(flag, default=default)
    args, _ = known.parse_known_args(rest)
    missing = [f"-{k}" for k in ("i", "o", "d", "c") if getattr(args, k) is None]
    if missing:
        raise InputError(f"nnUNetv2_predict_rnca needs {' '.join(missing)} like nnUNetv2_predict")
    device = _device(args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu")
    model, refiner = _load_refiner(ours.refiner, _model_folder(args.d, args.tr, args.p, args.c), device)
    if refiner is None:
        raise InputError(f"refiner '{ours.refiner}' refines nothing; drop --refiner to predict without one")
    predict_with_refiner(rest, refiner, model, ours.refiner_steps, PictureFolders(ours.png, ours.gif))


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
    args = parser.parse_args()
    if args.m is None and args.d is None:
        raise InputError("give the model folder with -m, or -d (and -c/-tr/-p) as for nnUNetv2_predict")
    model_folder = args.m or _model_folder(args.d, args.tr, args.p, args.c)
    model, refiner = _load_refiner(args.refiner, model_folder, _device(args.device))
    if refiner is None:
        raise InputError(f"refiner '{args.refiner}' refines nothing; copy the files instead")
    refine_folder(refiner, model, args.i, args.images, args.o, args.save_probabilities, args.refiner_steps,
                  pictures=PictureFolders(args.png, args.gif))


def synthetic_entry_point(argv: Optional[List[str]] = None) -> None:
    from rnca_nnunet.synthetic import GENERATORS, write_dataset

    parser = argparse.ArgumentParser(description="Write a generated nnU-Net raw dataset.")
    parser.add_argument("kind", choices=sorted(GENERATORS))
    parser.add_argument("--out", required=True, help="nnUNet_raw folder to write DatasetXXX_Name into")
    parser.add_argument("--id", type=int, default=990, help="dataset id (default 990)")
    parser.add_argument("--cases", type=int, default=40, help="training cases (imagesTr/labelsTr)")
    parser.add_argument("--test_cases", type=int, default=0, help="held-out cases (imagesTs/labelsTs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_dataset(args.kind, args.out, args.id, args.cases, args.test_cases, args.seed))


@_friendly_errors
def evaluate_entry_point() -> None:
    from rnca_nnunet.evaluate import evaluate_folders, format_table, save_summary

    parser = argparse.ArgumentParser(description="Dice, clDice, Betti errors, ASSD, HD95 and broken cases of "
                                                 "predictions; with -pred_refined also the change and repair rate.")
    parser.add_argument("-ref", required=True, help="folder with reference labels")
    parser.add_argument("-pred", required=True, help="folder with predictions (same file names)")
    parser.add_argument("-pred_refined", default=None, help="folder with refined predictions to compare")
    parser.add_argument("-o", default=None, help="write the JSON summary here")
    parser.add_argument("-np", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--png", default=None, metavar="DIR", help="write an overlay per case (label, base, "
                        "refined; fixed cells green, broken red) into DIR")
    parser.add_argument("-images", default=None, help="raw images <case>_0000<ending> as --png background")
    args = parser.parse_args()
    folders = {"base": args.pred, **({"refined": args.pred_refined} if args.pred_refined else {})}
    for folder in (args.ref, *folders.values(), *([args.images] if args.images else [])):
        if not os.path.isdir(folder):
            raise InputError(f"{folder} is not a folder")
    summary = evaluate_folders(args.ref, folders, args.np, args.png, args.images)
    print(format_table(summary))
    if args.o:
        save_summary(summary, args.o)


def demo_entry_point(argv: Optional[List[str]] = None) -> None:
    from rnca_nnunet.demo import run_demo

    parser = argparse.ArgumentParser(description="Run the CPU demo end to end and print a before/after table.")
    parser.add_argument("--out", default="demo_output", help="work folder (default demo_output)")
    parser.add_argument("--rnca_iterations", type=int, default=1000, help="rNCA training iterations")
    args = parser.parse_args(argv)
    run_demo(args.out, rnca_iterations=args.rnca_iterations)
