"""Real-data benchmark on TopoMortar (photographs of brick walls, mortar network labelled).

Part 1 (minutes): refine the provided imperfect labels (`noisy`, `pseudo`) toward the accurate ones: the
rNCA is trained on the train split (40 cases, 10 held out for the checkpoint) and tested on the val split
(20), against closing and keep-largest-component applied to the same imperfect labels. The noisy labels'
loops are right and their outlines are not: the guard chosen on the held-out walls must find that out (the
row with the guard off uses the same weights).
Part 2 (`--parts nnunet`, long on CPU): nnU-Net trained briefly, its CV predictions train the rNCA, and the
methods are compared on the val split, as in benchmarks/quality.py.

    python benchmarks/topomortar.py --source ../shared/data/TopoMortar --out bench_topomortar \\
        --downsample 2 --markdown benchmarks/TOPOMORTAR.md
    python benchmarks/topomortar.py --source ../shared/data/TopoMortar --out bench_topomortar \\
        --downsample 2 --parts nnunet --folds 0 1 2 --markdown benchmarks/TOPOMORTAR_NNUNET.md
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from typing import List, Optional

import torch
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

from quality import compare_methods, results_table, spread_table, write_markdown
from rnca_nnunet.experiments.baselines import apply_to_folder, keep_largest_component, morphological_closing
from rnca_nnunet.config import load_preset
from rnca_nnunet.experiments.demo import TRAINER, nnunet_environment, train_base_model
from rnca_nnunet.evaluate import evaluate_folders
from rnca_nnunet.files import atomic_path
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.sampling import topology_error_count
from rnca_nnunet.state import LabelSemantics, Normalisation, probabilities_from_mask
from rnca_nnunet.experiments.topomortar import IMPERFECT, convert, imperfect_label_cases
from rnca_nnunet.train import train_refiner
from rnca_nnunet.validation import read_out_fold_count, read_out_folds


PRESET = "mesh_2d"  # loop-rich thin networks; see plugin_configs/mesh_2d.json
# nnU-Net bases of three training lengths (rnca_nnunet/nnunet_trainers): 150, 750 and 3000 iterations a fold.
BASE_TRAINERS = (TRAINER, "nnUNetTrainer_rncaDemo5x", "nnUNetTrainer_rncaDemo10x", "nnUNetTrainer_rncaDemo20x")

# Valverde et al. 2025 (the TopoMortar paper), in-distribution test split, full resolution, a U-Net trained
# with CE + Dice and then retrained with topology losses: (method, beta0 error, beta1 error, training cost).
PUBLISHED = [("U-Net, CE + Dice", 3.31, 2.13, "-"),
             ("retrained with clDice", 1.17, 1.41, "3.1 GPU hours, 16 GiB"),
             ("retrained with clDice + hue augmentation", 0.56, 0.95, "3.1 GPU hours, 16 GiB")]


def published_table() -> str:
    """The paper's figures, kept apart: another protocol (test split, 512x512, their U-Net), not comparable row
    by row with ours; they set the bar of what retraining with the best topology loss buys."""
    lines = ["### Reference: published TopoMortar figures (another protocol, not comparable row by row)", "",
             "Valverde et al. 2025, in-distribution test split, full resolution, a U-Net retrained with each loss.",
             "", "| method | beta0_error | beta1_error | beta0 change | beta1 change | training cost |",
             "|---|---|---|---|---|---|"]
    _, base0, base1, _ = PUBLISHED[0]
    for index, (name, beta0, beta1, cost) in enumerate(PUBLISHED):
        changes = [f"{100 * (new - old) / old:+.0f}%" if index else "-" for new, old in ((beta0, base0), (beta1, base1))]
        lines.append(f"| {name} | {beta0:.2f} | {beta1:.2f} | {' | '.join(changes)} | {cost} |")
    return "\n".join(lines)




def refine_imperfect_labels(folder: str, kind: str, out: str, iterations: Optional[int], seed: int,
                            folds: Optional[int] = None) -> dict:
    """Train on the train split's (imperfect, accurate) pairs with `seed`, write every method's val-split masks;
    returns the evaluation summary and the read-out chosen. Kept in `out`/`kind`/seed`seed`/summary.json, so a
    stopped benchmark resumes."""
    out = os.path.join(out, kind, f"seed{seed}")
    done = os.path.join(out, "summary.json")
    if os.path.isfile(done):
        with open(done) as handle:
            return json.load(handle)
    semantics, normalisation = LabelSemantics({"background": 0, "mortar": 1}), Normalisation(["ZScoreNormalization"] * 3, {})
    overrides = {"corrupted_fraction": 0.0, "seed": seed}
    if iterations:
        overrides.update(iterations=iterations, validate_every=max(1, iterations // 15))
    if folds:
        overrides.update(read_out_folds=folds)
    config = load_preset(PRESET, overrides)
    cases = imperfect_label_cases(folder, "Tr", kind, normalisation)
    counts = [topology_error_count(case, 2) for case in cases]
    config.read_out_folds, why = read_out_fold_count(config.read_out_folds, counts)
    print(f"{kind}, seed {seed}: {why}")
    (train_cases, val_cases), *more_folds = read_out_folds(cases, config.val_fraction, config.seed,
                                                           config.read_out_folds,
                                                           counts if config.holdout_by_errors else None)
    refiner, _ = train_refiner(train_cases, val_cases, semantics, normalisation, 2, config, {"dataset": kind},
                               torch.device("cuda" if torch.cuda.is_available() else "cpu"), show_progress=False,
                               more_folds=more_folds)
    folders = {"base": os.path.join(folder, f"labelsTs_{kind}"),
               **{name: os.path.join(out, name) for name in ("largest component", "closing")}}
    apply_to_folder(keep_largest_component, [1], folders["base"], folders["largest component"], ".png")
    apply_to_folder(morphological_closing, [1], folders["base"], folders["closing"], ".png")
    folders["clean-up alone"] = os.path.join(out, "clean-up alone")
    apply_to_folder(lambda segmentation, _: refiner.clean_segmentation(segmentation, segmentation), [1],
                    folders["base"], folders["clean-up alone"], ".png")
    test_cases = imperfect_label_cases(folder, "Ts", kind, Normalisation(["NoNormalization"] * 3, {}))
    guard, read_out = refiner.clean_up.guard, str(refiner.clean_up)
    for name, threshold in (("rNCA, guard off (same weights)", None), ("rNCA, guard always on (same weights)", 0.0),
                            ("rNCA (guard chosen on held-out walls)", guard)):
        folders[name] = os.path.join(out, name.split(" (")[0].replace(",", ""))
        write_refined(refiner.replace(clean_up=replace(refiner.clean_up, guard=threshold)), test_cases, folders[name])
    result = {"summary": evaluate_folders(os.path.join(folder, "labelsTs"), folders), "read_out": read_out}
    with atomic_path(done) as tmp:
        with open(tmp, "w") as handle:
            json.dump(result, handle)
    return result


def write_refined(refiner: RNCARefiner, cases, out_folder: str) -> None:
    """Refine each case's imperfect mask with its raw image and write it as nnU-Net would."""
    writer = NaturalImage2DIO()
    for case in cases:
        probabilities = probabilities_from_mask(case.mask, refiner.semantics)
        _, segmentation, _ = refiner.refine(case.image, probabilities)
        with atomic_path(os.path.join(out_folder, case.name + ".png")) as tmp:
            writer.write_seg(segmentation, tmp, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the TopoMortar folder (dataset/train, dataset/val)")
    parser.add_argument("--out", default="bench_topomortar")
    parser.add_argument("--downsample", type=int, default=2, help="2: 256x256 images for CPU; 1: full resolution")
    parser.add_argument("--rnca_iterations", type=int, default=None, help=f"default: the {PRESET} preset's")
    parser.add_argument("--parts", nargs="+", default=["labels"], choices=["labels", "nnunet"],
                        help="labels: refine the noisy/pseudo labels; nnunet: train nnU-Net and refine its predictions")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="nnU-Net folds (--nnunet)")
    parser.add_argument("--trainer", default=TRAINER, choices=BASE_TRAINERS,
                        help="the nnU-Net base's trainer (--nnunet; one --out a base); a stopped longer one resumes")
    parser.add_argument("--kinds", nargs="+", default=list(IMPERFECT), choices=list(IMPERFECT),
                        help="which imperfect labels to refine (--parts labels)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="training seeds of the label refiners; with several, a table of the mean and range")
    parser.add_argument("--read_out_folds", type=int, default=None,
                        help=f"rules trained to choose the label refiners' read-out (default: the {PRESET} preset's: "
                             f"automatic, from the CV walls' topology)")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    started, out = time.time(), os.path.abspath(args.out)
    env = nnunet_environment(out)
    folder = convert(args.source, env["nnUNet_raw"], 950, args.downsample)
    tables = []
    for kind in (args.kinds if "labels" in args.parts else []):
        results = [refine_imperfect_labels(folder, kind, out, args.rnca_iterations, seed, args.read_out_folds)
                   for seed in args.seeds]
        tables += [results_table(f"TopoMortar, refining the `{kind}` labels (val split), seed {seed}; read-out "
                                 f"{result['read_out']}", result["summary"])
                   for seed, result in zip(args.seeds, results)]
        if len(results) > 1:
            tables.insert(len(tables) - len(results), spread_table(f"TopoMortar `{kind}` labels (val split)", results,
                                                                   args.seeds))
    if "nnunet" in args.parts:
        with open(os.path.join(out, "benchmark.log"), "a") as log:
            train_base_model(950, "2d", env, log, args.folds, trainer=args.trainer)
            result = compare_methods(950, os.path.basename(folder), "2d", args.folds, out, args.rnca_iterations, log,
                                     PRESET, args.trainer)
        tables.append(results_table(f"TopoMortar, nnU-Net predictions (val split), base `{args.trainer}`",
                                    evaluate_folders(result["labels"], result["folders"])))
        tables.append(published_table())
    for table in tables:
        print("\n" + table, flush=True)
    header = (f"Generated by `python benchmarks/topomortar.py --downsample {args.downsample} --parts "
              f"{' '.join(args.parts)} --folds {' '.join(map(str, args.folds))} --kinds {' '.join(args.kinds)} "
              f"{f'--trainer {args.trainer} ' if args.trainer != TRAINER else ''}--seeds {' '.join(map(str, args.seeds))}"
              f"{f' --rnca_iterations {args.rnca_iterations}' if args.rnca_iterations else ''}"
              f"{f' --read_out_folds {args.read_out_folds}' if args.read_out_folds else ''}` in "
              f"{(time.time() - started) / 60:.0f} minutes ({'CUDA' if torch.cuda.is_available() else 'CPU'}).")
    write_markdown(args.markdown, "Quality benchmark: TopoMortar", header, tables)


if __name__ == "__main__":
    main()
