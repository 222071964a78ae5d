"""TopoMortar under a change of the images: the test split's `shadows` and `occlusion` groups.

Every method on nnU-Net's predictions of walls unlike its training walls, beside the in-distribution val split
and the refiner's own held-out CV walls; per wall the rule's out-of-depth scores, what it does to each kind of
topology error (experiments/topology_errors.py), and the fall-back to the clean-up alone where a score is high.
The shifted groups are for measuring and choosing only: nothing here trains on them.

Needs the model of `topomortar.py --parts nnunet` (same --out). Each group's per-wall results are kept in
--out/shift/<group>/, so a stopped run resumes.

    python benchmarks/topomortar_shift.py --source ../shared/data/TopoMortar --out bench_topomortar \\
        --markdown benchmarks/TOPOMORTAR_SHIFT.md
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p, subfiles
from skimage import io
from skimage.transform import downscale_local_mean

from quality import linked_model_folder, spread_table, write_markdown
from topomortar import BASE_TRAINERS
from rnca_nnunet import out_of_depth
from rnca_nnunet.cleanup import rewritten_share
from rnca_nnunet.config import config_to_dict, load_preset
from rnca_nnunet.data import image_files, read_image, read_model_folder, read_probabilities
from rnca_nnunet.evaluate import evaluate_folders
from rnca_nnunet.experiments.baselines import keep_largest_component, morphological_closing
from rnca_nnunet.experiments.demo import TRAINER, nnunet_environment, run_step
from rnca_nnunet.experiments.topology_errors import loop_and_piece_errors
from rnca_nnunet.experiments.topomortar import read_label
from rnca_nnunet.files import atomic_path
from rnca_nnunet.metrics import topology_errors
from rnca_nnunet.predict import write_refined_case
from rnca_nnunet.refiner_folder import read_refiner
from rnca_nnunet.run_training import train_from_model_folder

GROUPS = ("shadows", "occlusion")
PRESET = "mesh_2d"  # as topomortar.py
DATASET = "Dataset950_TopoMortarx2"
SCORES = ("changed", "cells", "topology", "base_doubt")
FACTORS = (1.0, 1.25, 1.5, 2.0)
DIAGNOSIS = ("filled_holes", "merged_loops_lost", "split_loops_added", "spurious_holes", "spurious_pinholes",
             "specks", "fragments_added")


def convert_group(source: str, raw: str, group: str, factor: int = 2) -> str:
    """test_shift/<group> (RGB images, accurate labels) -> <raw>/imagesShift_<group>, labelsShift_<group>,
    downsampled as topomortar.convert does; returns the images folder."""
    root = os.path.join(source, "dataset", "test_shift", group)
    images, labels = (os.path.join(raw, f"{kind}Shift_{group}") for kind in ("images", "labels"))
    maybe_mkdir_p(images), maybe_mkdir_p(labels)
    for file in subfiles(os.path.join(root, "images"), suffix=".png", join=False, sort=True):
        case = f"topomortar_{file[:-4]}"
        if os.path.isfile(os.path.join(labels, case + ".png")):
            continue
        image = io.imread(os.path.join(root, "images", file))[..., :3].astype(np.float32)
        image = downscale_local_mean(image, (factor, factor, 1)).round() if factor > 1 else image
        with atomic_path(os.path.join(images, f"{case}_0000.png")) as tmp:
            io.imsave(tmp, image.astype(np.uint8), check_contrast=False)
        with atomic_path(os.path.join(labels, case + ".png")) as tmp:
            io.imsave(tmp, read_label(os.path.join(root, "accurate", file), factor), check_contrast=False)
    return images


def trained_folds(model_path: str) -> List[int]:
    """The folds of the base that finished training (`topomortar.py --folds` may have trained fewer than 5)."""
    return sorted(int(os.path.basename(os.path.dirname(path))[5:]) for path in
                  glob.glob(os.path.join(model_path, "fold_[0-9]*", "checkpoint_final.pth")))


def predict_base(images: str, out: str, env: Dict[str, str], log, trainer: str, folds: Sequence[int]) -> None:
    """nnU-Net's ensemble of the base's folds with probabilities, no mirroring (as the val walls of topomortar.py)."""
    run_step(["nnUNetv2_predict", "-i", images, "-o", out, "-d", "950", "-c", "2d", "-tr", trainer, "-f",
              *map(str, folds), "-device", "cpu", "--save_probabilities", "--disable_tta", "--disable_progress_bar",
              "--continue_prediction"], env, log)


def held_out_walls(model_path: str, raw: str, out: str) -> Tuple[str, str]:
    """The refiner's own held-out CV walls (rnca.json) as a group: links to their CV predictions (nnU-Net's fold
    that did not train on them) and labels; returns (base folder, labels folder). Their scores are the
    in-distribution reference the fall-back's limit is stated against."""
    with open(os.path.join(model_path, "rnca", "rnca.json")) as handle:
        cases = json.load(handle)["trained_on"]["held_out_cases"]
    base, labels = os.path.join(out, "base"), os.path.join(out, "labels")
    for folder in (base, labels):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    for case in cases:
        found = glob.glob(os.path.join(model_path, "fold_*", "validation", case + ".npz"))
        if len(found) != 1:
            raise RuntimeError(f"{case}: expected one CV prediction in {model_path}/fold_*/validation, got {found}")
        for ending in (".npz", ".png"):
            os.symlink(found[0][:-4] + ending, os.path.join(base, case + ending))
        os.symlink(os.path.join(raw, "labelsTr", case + ".png"), os.path.join(labels, case + ".png"))
    return base, labels


def variant_name(settings: Dict[str, object]) -> str:
    """The folder name of a preset variant: '' for the preset itself, else its settings (`--set`)."""
    return "_".join(f"{k}={v}" for k, v in sorted(settings.items()))


def seeded_model_folder(model, out: str, seed: int, raw: str, preprocessed: str,
                        settings: Dict[str, object]) -> str:
    """The model folder whose rnca/ was trained with `seed` and the preset's `settings` changed: the benchmark's
    own for the preset itself at its seed, else a copy (links to nnU-Net's files and CV folds) with a refiner
    trained there as nnUNetv2_train_rnca trains it. A kept refiner trained with other settings (the preset changed
    since) stops the benchmark, so no figure is reported for settings it was not trained with."""
    config = load_preset(PRESET, {**settings, "seed": seed})
    copy = seed_model_path(model.path, out, seed, settings)
    if copy == model.path or os.path.isfile(os.path.join(copy, "rnca", "rnca.json")):
        return kept_refiner_trained_with(copy, config)
    linked_model_folder(model.path, copy, trained_folds(model.path))
    train_from_model_folder(read_model_folder(copy), os.path.join(raw, "imagesTr"),
                            os.path.join(preprocessed, DATASET, "gt_segmentations"),
                            config, torch.device("cpu"), show_progress=False)
    return copy


def seed_model_path(model_path: str, out: str, seed: int, settings: Dict[str, object]) -> str:
    """Where `seeded_model_folder` keeps the refiner of `seed` and `settings`: the base's own folder for the
    preset's seed and settings."""
    if seed == load_preset(PRESET).seed and not settings:
        return model_path
    return os.path.join(out, "seeds", variant_name(settings), f"seed{seed}", DATASET, os.path.basename(model_path))


def kept_refiner_trained_with(model_path: str, config) -> str:
    """`model_path` if its rnca/ was trained with `config`; otherwise exit 2 naming the folder to remove."""
    with open(os.path.join(model_path, "rnca", "rnca.json")) as handle:
        trained = json.load(handle)["trained_on"].get("train", {})
    wanted = json.loads(json.dumps(config_to_dict(config)))
    changed = sorted(k for k in set(trained) | set(wanted)  # None asks for what the training chose (read_out_folds)
                     if not (k in wanted and wanted[k] is None) and trained.get(k) != wanted.get(k))
    if changed:
        print(f"error: {model_path}/rnca was trained with other {PRESET} settings than asked for "
              f"({', '.join(changed)}); move it aside to train it again", file=sys.stderr)
        sys.exit(2)
    return model_path


def write_label_map(model, path_truncated: str, segmentation: np.ndarray, properties: dict) -> None:
    write_refined_case(model.reader_writer, path_truncated, model.file_ending, segmentation.astype(np.uint8),
                       properties)


def refine_group(model, refiner, npz_folder: str, images: str, out: str, scores: bool) -> Dict[str, dict]:
    """Every method's mask per wall of one group (the rNCA without its fall-back), and the wall's share
    rewritten; with `scores` also the stochastic instability (8 more rollouts a wall) and nnU-Net's doubt.
    Kept per wall in `out`/walls/<case>.json, and redone when it was made with another read-out (the refiner's
    read-out chosen again: nnUNetv2_train_rnca --read_out_only)."""
    refiner = refiner.replace(clean_up=replace(refiner.clean_up, fall_back_above=None))
    walls = {}
    for npz in sorted(f for f in subfiles(npz_folder, suffix=".npz") if not f.endswith("_uncertainty.npz")):
        case = os.path.basename(npz)[:-4]
        record = os.path.join(out, "walls", case + ".json")
        if os.path.isfile(record):
            with open(record) as handle:
                walls[case] = json.load(handle)
            same_read_out = walls[case].get("read_out") == str(refiner.clean_up)
            if same_read_out and (not scores or "cells" in walls[case]["scores"]):
                continue  # a record kept without the stochastic scores is redone when they are asked for
        image, properties = read_image(model.reader_writer, image_files(images, case, model.file_ending))
        probabilities = read_probabilities(npz, image.shape[1:])
        base = np.asarray(model.semantics.manager.convert_probabilities_to_segmentation(probabilities))
        started = time.perf_counter()
        _, refined, used = refiner.refine(image, probabilities)
        walls[case] = {"scores": {"changed": rewritten_share(refined, base)}, "steps": used,
                       "seconds": time.perf_counter() - started, "read_out": str(refiner.clean_up)}
        if scores:
            started = time.perf_counter()
            instability = refiner.instability(image, probabilities, refined, used)
            walls[case]["instability_seconds"] = time.perf_counter() - started
            walls[case]["scores"].update(topology=instability.topology, cells=instability.cells,
                                         base_doubt=float(1 - probabilities.max(0)[base > 0].mean()))
        masks = {"largest component": keep_largest_component(base, [1]), "closing": morphological_closing(base, [1]),
                 "clean-up alone": refiner.clean_up.sizes(base, True), "rNCA": refined}
        for name, mask in masks.items():
            write_label_map(model, os.path.join(out, name, case), mask, properties)
        maybe_mkdir_p(os.path.dirname(record))
        with atomic_path(record) as tmp:
            with open(tmp, "w") as handle:
                json.dump(walls[case], handle)
    return walls


def diagnosis(labels: str, folders: Dict[str, str], reader) -> Dict[str, Dict[str, float]]:
    """Mean error classes per wall of each method (loops and pieces, topology_errors.py)."""
    totals = {}
    files = subfiles(labels, suffix=".png", join=False, sort=True)
    for name, folder in folders.items():
        counts = [loop_and_piece_errors(reader.read_seg(os.path.join(folder, f))[0][0, 0] > 0,
                                        reader.read_seg(os.path.join(labels, f))[0][0, 0] > 0) for f in files]
        totals[name] = {k: float(np.mean([c[k] for c in counts])) for k in DIAGNOSIS}
    return totals


def fallback_folder(walls: Dict[str, dict], score: str, threshold: float, out: str, name: str) -> str:
    """rNCA where the wall's `score` is at most `threshold`, the clean-up alone elsewhere (links, no copies)."""
    folder = os.path.join(out, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for case, wall in walls.items():
        source = "clean-up alone" if wall["scores"][score] > threshold else "rNCA"
        os.symlink(os.path.join(out, source, case + ".png"), os.path.join(folder, case + ".png"))
    return folder


def group_folders(out: str, base_folder: str) -> Dict[str, str]:
    return {"base": base_folder, **{name: os.path.join(out, name)
                                    for name in ("largest component", "closing", "clean-up alone", "rNCA")}}


def score_table(per_group: Dict[str, dict]) -> str:
    """Per group: each score's mean (min-max) over walls, and how well it ranks the walls where the rule ends
    worse (more beta0 + beta1 errors) than the clean-up alone above the others (AUC; 0.5: no better than
    chance)."""
    lines = ["| walls | n | rule worse than clean-up alone | better | "
             + " | ".join(f"{s} (AUC)" for s in SCORES) + " | seconds a wall (rule; 8 stochastic runs) |",
             "|" + "---|" * (len(SCORES) + 5)]
    for group, result in per_group.items():
        walls, worse = result["walls"], result["rule_worse"]
        cells = []
        for score in SCORES:
            values = {n: w["scores"][score] for n, w in walls.items()}
            pos, neg = [values[n] for n in walls if worse[n]], [values[n] for n in walls if not worse[n]]
            auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]) if pos and neg else float("nan")
            cells.append(f"{np.mean(list(values.values())):.3f} ({min(values.values()):.3f}-"
                         f"{max(values.values()):.3f}; {auc:.2f})")
        better = sum(errors(c, "rNCA") < errors(c, "clean-up alone") for c in result["summary"]["per_case"])
        lines.append(f"| {group} | {len(walls)} | {sum(worse.values())} | {better} | " + " | ".join(cells)
                     + f" | {np.mean([w['seconds'] for w in walls.values()]):.2f}; "
                       f"{np.mean([w['instability_seconds'] for w in walls.values()]):.2f} |")
    return "\n".join(lines)


def fall_back_rows(per_seed: List[Dict[str, dict]], factors: Sequence[float]) -> str:
    """For each factor: the fall-back limit (factor x the most any held-out CV wall was rewritten, as
    out_of_depth.with_fall_back sets it), and per group the walls falling back and the mean beta0 + beta1 errors
    and Dice, over seeds."""
    groups = [g for g in per_seed[0] if g != "cv held-out"]
    lines = ["| factor | limit (mean over seeds) | " + " | ".join(f"{g}: fall back, errors, Dice" for g in groups)
             + " |", "|" + "---|" * (len(groups) + 2)]
    for factor in factors:
        limits = [factor * max(w["scores"]["changed"] for w in seed["cv held-out"]["walls"].values())
                  for seed in per_seed]
        cells = []
        for group in groups:
            n, e, d = [], [], []
            for seed, limit in zip(per_seed, limits):
                result = seed[group]
                chosen = [("clean-up alone" if result["walls"][c["case"][:-4]]["scores"]["changed"] > limit
                           else "rNCA", c) for c in result["summary"]["per_case"]]
                n.append(sum(m == "clean-up alone" for m, _ in chosen))
                e.append(np.mean([errors(c, m) for m, c in chosen]))
                d.append(np.mean([c[m]["mortar"]["dice"] for m, c in chosen]))
            cells.append(f"{np.mean(n):.1f}, {np.mean(e):.2f} ({min(e):.2f}-{max(e):.2f}), {np.mean(d):.3f}")
        lines.append(f"| {factor:g} | {100 * np.mean(limits):.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def errors(case: Dict, method: str) -> float:
    """beta0 + beta1 errors of one wall, over its classes."""
    return sum(topology_errors(metrics) for metrics in case[method].values())


def evaluate_seed(model, refiner_path: str, raw: str, sources: Dict, out: str, env, log, scores: bool) -> Dict:
    """Every group refined by the refiner of `refiner_path`; the fall-back rows use the product's limit."""
    refiner = read_refiner(os.path.join(refiner_path, "rnca"))
    held_out = os.path.join(out, "cv held-out")
    groups = {"cv held-out": (os.path.join(raw, "imagesTr"), *held_out_walls(refiner_path, raw, held_out)[::-1]),
              **sources}
    limit = out_of_depth.FACTOR * max(wall["scores"]["changed"] for wall in refine_group(
        model, refiner, groups["cv held-out"][2], groups["cv held-out"][0], held_out, scores).values())
    results = {}
    for group, (images, labels, base_folder) in groups.items():
        group_out = os.path.join(out, group)
        walls = refine_group(model, refiner, base_folder, images, group_out, scores)
        folders = group_folders(group_out, base_folder)
        folders["rNCA with the fall-back"] = fallback_folder(walls, "changed", limit, group_out,
                                                            "rNCA with the fall-back")
        summary = evaluate_folders(labels, folders, log=lambda line: None,
                                   dataset_json_file=os.path.join(raw, "dataset.json"))
        cases = {c["case"][:-4]: c for c in summary["per_case"]}
        results[group] = {"walls": walls, "summary": summary, "labels": labels, "folders": folders,
                          "rule_worse": {n: errors(c, "rNCA") > errors(c, "clean-up alone") for n, c in cases.items()},
                          "read_out": str(refiner.clean_up), "limit": limit}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the TopoMortar folder (dataset/test_shift/<group>)")
    parser.add_argument("--out", default="bench_topomortar", help="the --out of topomortar.py --parts nnunet")
    parser.add_argument("--trainer", default=TRAINER, choices=BASE_TRAINERS,
                        help="the nnU-Net base's trainer, as given to topomortar.py --parts nnunet (one --out a base)")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="refiner training seeds (the nnU-Net "
                        "base is shared); the first also gets the stochastic scores and the diagnosis")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=JSON",
                        help=f"train the refiners with these {PRESET} settings changed (e.g. p_local_intensity=0.3); "
                             f"kept apart in --out/shift/<settings>/")
    parser.add_argument("--no_scores", action="store_true", help="skip the stochastic out-of-depth scores "
                        "(8 more rollouts a wall, 5-10 s each on the CPU)")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    settings = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    load_preset(PRESET, settings)
    started, out = time.time(), os.path.abspath(args.out)
    env = nnunet_environment(out)
    raw = os.path.join(env["nnUNet_raw"], DATASET)
    model = read_model_folder(os.path.join(env["nnUNet_results"], DATASET, f"{args.trainer}__nnUNetPlans__2d"))
    sources = {"val": (os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs"))}
    for group in args.groups:
        sources[group] = (convert_group(args.source, raw, group), os.path.join(raw, f"labelsShift_{group}"))
    per_seed = []
    with open(os.path.join(out, "shift.log"), "a") as log:
        for group, (images, labels) in sources.items():
            base_folder = os.path.join(out, "shift", group, "base")
            predict_base(images, base_folder, env, log, args.trainer, trained_folds(model.path))
            sources[group] = (images, labels, base_folder)
        for index, seed in enumerate(args.seeds):
            path = seeded_model_folder(model, out, seed, raw, env["nnUNet_preprocessed"], settings)
            per_seed.append(evaluate_seed(model, path, raw, sources,
                                          os.path.join(out, "shift", variant_name(settings), f"seed{seed}"), env, log,
                                          index == 0 and not args.no_scores))
    first = per_seed[0]
    tables = [] if args.no_scores else [f"### Out-of-depth scores, seed {args.seeds[0]}\n\n" + score_table(first)]
    tables.append(f"### The fall-back's factor, over {len(args.seeds)} seeds\n\n" + fall_back_rows(per_seed, FACTORS))
    for group in first:
        tables.append(spread_table(f"{group}: {len(first[group]['walls'])} walls", [
            {"summary": seed[group]["summary"], "read_out": f"{seed[group]['read_out']}; fall-back above "
                                                            f"{100 * seed[group]['limit']:.1f}% rewritten"}
            for seed in per_seed], args.seeds))
        diag = diagnosis(first[group]["labels"], first[group]["folders"], model.reader_writer)
        tables.append(f"#### {group}: error classes, mean per wall (seed {args.seeds[0]})\n\n| method | "
                      + " | ".join(DIAGNOSIS) + " |\n|" + "---|" * (len(DIAGNOSIS) + 1) + "\n" + "\n".join(
                          f"| {n} | " + " | ".join(f"{d[k]:.2f}" for k in DIAGNOSIS) + " |" for n, d in diag.items()))
    for table in tables:
        print("\n" + table, flush=True)
    header = (f"Generated by `python benchmarks/topomortar_shift.py --groups {' '.join(args.groups)} --seeds "
              f"{' '.join(map(str, args.seeds))}{' --set ' + ' '.join(args.set) if args.set else ''}"
              f"{' --no_scores' if args.no_scores else ''}{' --trainer ' + args.trainer if args.trainer != TRAINER else ''}"
              f"` in {(time.time() - started) / 60:.0f} minutes (CPU).")
    write_markdown(args.markdown, "Quality benchmark: TopoMortar under shifted images", header, tables)


if __name__ == "__main__":
    main()
