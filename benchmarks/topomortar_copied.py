"""TopoMortar: a refiner trained on a weaker nnU-Net base, copied into a stronger base of the same dataset.

A user who trains nnU-Net longer, or copies `rnca/` from another model folder, keeps a rule whose read-out (the
guards and per-class decision that keep it from harming) was chosen on the weaker model's CV predictions. Each
seed's refiner of `--weaker` is copied into a model folder that links to `--out`'s base and its CV folds, and
run on every group twice: as copied, and after `nnUNetv2_train_rnca --read_out_only` chose its read-out on this
base's CV predictions of the same walls (no training). The stronger base's own refiners are the rows of
`topomortar_shift.py` with the same --out.

Needs `topomortar.py --parts nnunet` for both bases and `topomortar_shift.py --seeds ...` for the weaker one
(its seed refiners). Everything is kept in --out/copied/, so a stopped run resumes.

    python benchmarks/topomortar_copied.py --source ../shared/data/TopoMortar --out bench10x \\
        --trainer nnUNetTrainer_rncaDemo10x --weaker bench --seeds 0 1 2 --markdown COPIED.md
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import torch

from quality import linked_model_folder, spread_table, write_markdown
from topomortar import BASE_TRAINERS
from topomortar_shift import (DATASET, GROUPS, convert_group, evaluate_seed, predict_base, seed_model_path,
                              trained_folds)
from rnca_nnunet.data import read_model_folder
from rnca_nnunet.experiments.demo import TRAINER, nnunet_environment
from rnca_nnunet.run_training import decide_read_out_again

VARIANTS = ("as copied", "read-out chosen here")


def copied_model_folder(model, weaker_refiner: str, out: str, variant: str, seed: int, env) -> str:
    """A model folder linking to `model`'s files and CV folds with a copy of `weaker_refiner`; for the second
    variant its read-out chosen again on `model`'s CV predictions, as a user would after the warning."""
    copy = os.path.join(out, "copied", variant.replace(" ", "_"), f"seed{seed}", DATASET, os.path.basename(model.path))
    linked_model_folder(model.path, copy, trained_folds(model.path))
    if not os.path.isfile(os.path.join(copy, "rnca", "rnca.json")):
        shutil.rmtree(os.path.join(copy, "rnca"), ignore_errors=True)
        shutil.copytree(weaker_refiner, os.path.join(copy, "rnca"))
    if variant == VARIANTS[1] and not os.path.isfile(os.path.join(copy, "rnca", "read_out_log.txt")):
        raw = os.path.join(env["nnUNet_raw"], DATASET)
        decide_read_out_again(read_model_folder(copy), os.path.join(raw, "imagesTr"),
                              os.path.join(env["nnUNet_preprocessed"], DATASET, "gt_segmentations"),
                              torch.device("cpu"), show_progress=False)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the TopoMortar folder (dataset/test_shift/<group>)")
    parser.add_argument("--out", required=True, help="the --out of topomortar.py --parts nnunet: the stronger base")
    parser.add_argument("--trainer", required=True, choices=BASE_TRAINERS, help="the stronger base's trainer")
    parser.add_argument("--weaker", required=True, help="the --out of the weaker base, with its seed refiners")
    parser.add_argument("--weaker_trainer", default=TRAINER, choices=BASE_TRAINERS)
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    started, out, weaker = time.time(), os.path.abspath(args.out), os.path.abspath(args.weaker)
    env = nnunet_environment(out)
    raw = os.path.join(env["nnUNet_raw"], DATASET)
    model = read_model_folder(os.path.join(env["nnUNet_results"], DATASET, f"{args.trainer}__nnUNetPlans__2d"))
    weaker_model = read_model_folder(os.path.join(nnunet_environment(weaker)["nnUNet_results"], DATASET,
                                                  f"{args.weaker_trainer}__nnUNetPlans__2d"))
    sources = {"val": (os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs"))}
    for group in args.groups:
        sources[group] = (convert_group(args.source, raw, group), os.path.join(raw, f"labelsShift_{group}"))
    results = {variant: [] for variant in VARIANTS}
    with open(os.path.join(out, "copied.log"), "a") as log:
        for group, (images, labels) in sources.items():
            base_folder = os.path.join(out, "shift", group, "base")
            predict_base(images, base_folder, env, log, args.trainer, trained_folds(model.path))
            sources[group] = (images, labels, base_folder)
        for seed in args.seeds:
            weaker_refiner = os.path.join(seed_model_path(weaker_model.path, weaker, seed, {}), "rnca")
            if not os.path.isfile(os.path.join(weaker_refiner, "rnca.json")):
                raise SystemExit(f"{weaker_refiner} not found: run topomortar_shift.py --out {args.weaker} --seeds "
                                 f"{seed} first")
            for variant in VARIANTS:
                path = copied_model_folder(model, weaker_refiner, out, variant, seed, env)
                results[variant].append(evaluate_seed(model, path, raw, sources, os.path.join(
                    out, "copied", variant.replace(" ", "_"), f"seed{seed}", "walls"), env, log, False))
    tables = [spread_table(f"{group}, rNCA of the `{args.weaker_trainer}` base {variant}", [
        {"summary": seed[group]["summary"], "read_out": seed[group]["read_out"]} for seed in results[variant]],
        args.seeds)
        for group in results[VARIANTS[0]][0] for variant in VARIANTS]
    for table in tables:
        print("\n" + table, flush=True)
    header = (f"Generated by `python benchmarks/topomortar_copied.py --trainer {args.trainer} --weaker_trainer "
              f"{args.weaker_trainer} --groups {' '.join(args.groups)} --seeds {' '.join(map(str, args.seeds))}` in "
              f"{(time.time() - started) / 60:.0f} minutes (CPU).")
    write_markdown(args.markdown, "Quality benchmark: TopoMortar, a refiner copied into a stronger base", header,
                   tables)


if __name__ == "__main__":
    main()
