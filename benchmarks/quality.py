"""Quality benchmark on generated datasets: nnU-Net alone vs post-processing baselines vs rNCA.

For each dataset: generate it, train nnU-Net briefly on CPU (folds 0-2, --npz), train the rNCA on the
CV predictions, predict the held-out test cases, then compare on them: no post-processing, nnU-Net's
keep-largest-component, morphological closing, the rNCA read-out's clean-up alone, rNCA (a 3D rule on
cardiac3d), and zero-shot rNCA (the cardiac2d refiner applied slice by slice to cardiac3d). Prints one table per
dataset and writes them to a markdown file.

    python benchmarks/quality.py --out bench_output --markdown benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from importlib import resources
from typing import List, Optional, Sequence

import numpy as np

from provenance import provenance
from rnca_nnunet.experiments.baselines import apply_to_folder, keep_largest_component, morphological_closing
from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.config import load_preset
from rnca_nnunet.data import read_model_folder
from rnca_nnunet.experiments.demo import TRAINER, generate_dataset, nnunet_environment, run_step, train_base_model
from rnca_nnunet.evaluate import COLUMNS, evaluate_folders
from rnca_nnunet.files import atomic_path
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.refiner_folder import read_refiner

SPREAD_COLUMNS = ("dice", "cldice", "beta0_error", "beta1_error", "beta1_signed")
DATASETS = {"vessels2d": (981, "2d"), "cardiac2d": (982, "2d"), "cardiac3d": (983, "3d_fullres")}


def compare_methods(dataset_id: int, dataset: str, configuration: str, folds: List[int], out: str,
                    iterations: Optional[int], log, preset: Optional[str] = None, trainer: str = TRAINER) -> dict:
    """With a trained base model: train the refiner (unless `iterations` is 0; None: the preset's), write every
    method's test predictions. Test-time mirroring is off for every method: it quadruples CPU prediction time."""
    env = nnunet_environment(out)
    model_folder = os.path.join(env["nnUNet_results"], dataset, f"{trainer}__nnUNetPlans__{configuration}")
    train = iterations != 0
    if train and not os.path.isfile(os.path.join(model_folder, "rnca", "rnca.json")):  # kept from an earlier run
        run_step(["nnUNetv2_train_rnca", str(dataset_id), "-c", configuration, "-tr", trainer, "-device", "cpu",
                  "--disable_progress_bar", *(["--iterations", str(iterations)] if iterations else []),
                  *(["--preset", preset] if preset else [])], env, log)
    images = os.path.join(env["nnUNet_raw"], dataset, "imagesTs")
    folders = {name: os.path.join(out, "predictions", name) for name in ("base", "largest component", "closing")}
    run_step(["nnUNetv2_predict", "-i", images, "-o", folders["base"], "-d", str(dataset_id), "-c", configuration,
              "-tr", trainer, "-f", *map(str, folds), "-device", "cpu", "--save_probabilities", "--disable_tta",
              "--disable_progress_bar"], env, log)
    model = read_model_folder(model_folder)
    labels = [v for k, v in model.dataset_json["labels"].items() if k != "background"]
    apply_to_folder(keep_largest_component, labels, folders["base"], folders["largest component"], model.file_ending)
    apply_to_folder(morphological_closing, labels, folders["base"], folders["closing"], model.file_ending)
    if train:
        add_cleanup_baseline(folders, read_refiner(os.path.join(model_folder, "rnca")), labels,
                             os.path.join(out, "predictions", "clean-up alone"), model.file_ending)
        unguarded = unguarded_model_folder(model_folder, os.path.join(out, "unguarded"))
        for name, folder in (("rNCA", model_folder), ("rNCA, guard off (same weights)", unguarded)):
            folders[name] = os.path.join(out, "predictions", name.split(",")[0] + (" unguarded" if "," in name else ""))
            run_step(["nnUNetv2_refine_rnca", "-i", folders["base"], "-images", images, "-o", folders[name],
                      "-m", folder, "-device", "cpu"], env, log)
    return {"model_folder": model_folder, "folders": folders, "images": images,
            "labels": os.path.join(env["nnUNet_raw"], dataset, "labelsTs")}


def linked_model_folder(model_folder: str, copy: str, folds) -> str:
    """`copy` as a model folder whose dataset.json, plans.json and folds link to `model_folder`'s, so another
    refiner can be trained beside the same nnU-Net base without copying its checkpoints."""
    os.makedirs(copy, exist_ok=True)
    for name in ("dataset.json", "plans.json", *(f"fold_{fold}" for fold in folds)):
        if not os.path.lexists(os.path.join(copy, name)):
            os.symlink(os.path.join(model_folder, name), os.path.join(copy, name))
    return copy


def one_row_per_method(folders: dict) -> dict:
    """Method -> folder with names that are the same for every seed (the clean-up's sizes, which each seed's
    read-out chose, out of its name), without the zero-shot rows only the first seed has."""
    return {("clean-up alone" if name.startswith("clean-up alone") else name): folder
            for name, folder in folders.items() if name != "rNCA zero-shot"}


def seed_folder(base_out: str, dataset: str, seed: int, configuration: str, folds: Sequence[int],
                trainer: str = TRAINER) -> str:
    """An --out for `seed`'s refiner: the base's nnU-Net raw and preprocessed folders and a model folder whose
    dataset.json, plans.json and folds link to the base's, with no rnca/ of its own yet."""
    out = os.path.join(base_out, "seeds", f"seed{seed}")
    base_env, env = nnunet_environment(base_out), nnunet_environment(out)
    os.makedirs(out, exist_ok=True)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not os.path.lexists(env[name]):
            os.symlink(base_env[name], env[name])
    model = os.path.join(dataset, f"{trainer}__nnUNetPlans__{configuration}")
    linked_model_folder(os.path.join(base_env["nnUNet_results"], model), os.path.join(env["nnUNet_results"], model),
                        folds)
    return out


def seeded_preset(out: str, seed: int, preset: str) -> str:
    """A shipped preset with only its seed changed, as a preset file a user could pass."""
    values = json.loads(resources.files("rnca_nnunet.plugin_configs").joinpath(f"{preset}.json").read_text())
    values["seed"] = seed
    path = os.path.join(out, f"{preset}_seed{seed}.json")
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(values, handle, indent=2)
    return path


def unguarded_model_folder(model_folder: str, out: str) -> str:
    """A copy of the model folder's JSON files and refiner whose read-out has neither guard nor the labels'
    topology and refines every class, as before the guards existed: the same weights, to show what they do."""
    copy = os.path.join(out, *model_folder.rstrip(os.sep).split(os.sep)[-2:])
    os.makedirs(os.path.join(copy, "rnca"), exist_ok=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy2(os.path.join(model_folder, name), copy)
    shutil.copy2(os.path.join(model_folder, "rnca", "refiner.safetensors"), os.path.join(copy, "rnca"))
    with open(os.path.join(model_folder, "rnca", "rnca.json")) as handle:
        config = json.load(handle)
    config.update(guard=None, outline_guard=None, keep_label_topology=False, unrefined_labels=[],
                  fill_opened_holes_above=None)
    with open(os.path.join(copy, "rnca", "rnca.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    return copy


def add_cleanup_baseline(folders: dict, refiner: RNCARefiner, labels: List[int], out_folder: str,
                         file_ending: str) -> None:
    """The rNCA read-out's clean-up sizes alone on the base masks, when the refiner uses any: shows what the rule
    adds (the guard and the unrefined labels compare with the base, and change nothing on the base itself)."""
    c = refiner.clean_up
    sizes = CleanUp(c.min_component_size, c.min_hole_size, c.max_hole_radius)
    if sizes != CleanUp():
        folders[f"clean-up alone ({sizes})"] = out_folder
        per_slice = refiner.model.shape.ndim == 2
        apply_to_folder(lambda segmentation, _: sizes(segmentation, per_slice), labels, folders["base"], out_folder,
                        file_ending)


def zero_shot(source: dict, target: dict, out: str, log) -> None:
    """Refine the target's base predictions with the source's refiner, dropped into a copy of the target's
    model folder as a user would drop it into theirs."""
    model_folder = os.path.join(out, *target["model_folder"].split(os.sep)[-2:])
    shutil.rmtree(model_folder, ignore_errors=True)
    os.makedirs(model_folder)
    for name in ("dataset.json", "plans.json"):
        shutil.copy(os.path.join(target["model_folder"], name), model_folder)
    shutil.copytree(os.path.join(source["model_folder"], "rnca"), os.path.join(model_folder, "rnca"))
    target["folders"]["rNCA zero-shot"] = os.path.join(out, "predictions")
    run_step(["nnUNetv2_refine_rnca", "-i", target["folders"]["base"], "-images", target["images"], "-o",
              target["folders"]["rNCA zero-shot"], "-m", model_folder, "-device", "cpu"], dict(os.environ), log)


def results_table(kind: str, summary: dict) -> str:
    """Rows: methods (per class); columns: the metrics, broken base cases repaired, intact ones newly broken, and
    cases made worse than the base (more beta0 + beta1 errors)."""
    lines = [f"### {kind}", "", "| method | class | " + " | ".join(COLUMNS)
             + " | repaired | intact newly broken | made worse |", "|" + "---|" * (len(COLUMNS) + 5)]
    for method, per_class in summary["mean"].items():
        for name, m in per_class.items():
            repair = summary["repair"].get(method, {}).get(name)
            rates = (f"{repair['repaired']} of {repair['broken_before']} | "
                     f"{repair['newly_broken']} of {repair['intact_before']} | {repair['made_worse']}"
                     ) if repair else "- | - | -"
            lines.append(f"| {method} | {name} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + f" | {rates} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_output")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--test_cases", type=int, default=10)
    parser.add_argument("--rnca_iterations", type=int, default=800)
    parser.add_argument("--rnca_iterations_3d", type=int, default=600,
                        help="iterations of the 3D rule (default_3d preset; ~2.5 minutes on 2 CPU cores); 0: none")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2],
                        help="nnU-Net folds to train (CV predictions of the other folds' cases are not made); "
                             "three keep the CPU run under 30 minutes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="refiner training seeds (one nnU-Net base each dataset; the other seeds' refiners are "
                             "trained beside it from the preset with its seed changed); spread tables for several")
    parser.add_argument("--markdown", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    started, tables, results, per_seed = time.time(), [], {}, {}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.log"), "w") as log:
        for kind in args.datasets:
            dataset_id, configuration = DATASETS[kind]
            out = os.path.abspath(os.path.join(args.out, kind))
            env = nnunet_environment(out)
            dataset = generate_dataset(kind, dataset_id, args.cases, args.test_cases, env, log)
            train_base_model(dataset_id, configuration, env, log, args.folds)
            iterations = args.rnca_iterations_3d if configuration.startswith("3d") else args.rnca_iterations
            preset = "default_3d" if configuration.startswith("3d") else "vessels_2d"  # nnUNetv2_train_rnca's
            per_seed[kind] = []
            for seed in args.seeds:
                shipped = seed == load_preset(preset).seed
                seed_out = out if shipped else seed_folder(out, dataset, seed, configuration, args.folds)
                per_seed[kind].append(compare_methods(dataset_id, dataset, configuration, args.folds, seed_out,
                                                      iterations, log, None if shipped else
                                                      seeded_preset(seed_out, seed, preset)))
            results[kind] = per_seed[kind][0]
        if {"cardiac2d", "cardiac3d"} <= set(results):
            zero_shot(results["cardiac2d"], results["cardiac3d"], os.path.abspath(os.path.join(args.out, "zero")), log)
    for kind, result in results.items():
        tables.append(results_table(f"{kind} (seed {args.seeds[0]})" if len(args.seeds) > 1 else kind,
                                    evaluate_folders(result["labels"], result["folders"])))
        print("\n" + tables[-1], flush=True)
        if len(args.seeds) > 1:
            seeds = [{"summary": evaluate_folders(r["labels"], one_row_per_method(r["folders"])),
                      "read_out": str(read_refiner(os.path.join(r["model_folder"], "rnca")).clean_up)}
                     for r in per_seed[kind]]
            for name in seeds[0]["summary"]["mean"]["base"]:
                tables.append(spread_table(f"{kind}, {name}", seeds, args.seeds, name))
                print("\n" + tables[-1], flush=True)
    header = (f"Generated by `python benchmarks/quality.py` in {(time.time() - started) / 60:.0f} minutes on CPU; "
              f"{args.cases} training and {args.test_cases} held-out test cases per dataset; nnU-Net "
              f"`{TRAINER}` folds {args.folds}, predicted without test-time mirroring; rNCA "
              f"{args.rnca_iterations} iterations ({args.rnca_iterations_3d or 'no 3D rule'} in 3D), refiner seeds "
              f"{' '.join(map(str, args.seeds))}.")
    write_markdown(args.markdown, "Quality benchmark: generated datasets", header, tables)


def spread_table(title: str, results: List[dict], seeds: Sequence[int], label: str = "mortar") -> str:
    """Mean (min-max) over `seeds` (one result each, in order) of each method's metrics and harm for `label`,
    one row per method."""
    columns = [*SPREAD_COLUMNS, "repaired", "newly_broken", "made_worse"]
    lines = [f"### {title}: mean (min-max) over {len(results)} seeds", "",
             "| method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for method in results[0]["summary"]["mean"]:
        cells = []
        for column in columns:
            if column in SPREAD_COLUMNS:
                values = [r["summary"]["mean"][method][label][column] for r in results]
            elif method == "base":
                cells.append("-")
                continue
            else:
                values = [r["summary"]["repair"][method][label][column] for r in results]
            cells.append(f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if column in SPREAD_COLUMNS
                         else f"{np.mean(values):.1f} ({min(values)}-{max(values)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- seed {seed}: read-out {r['read_out']}" for seed, r in zip(seeds, results)]
    return "\n".join(lines)


def write_markdown(path: Optional[str], title: str, header: str, tables: List[str]) -> None:
    """Tables under a title and a line saying how they were made; metric definitions are in docs/metrics-and-data.md."""
    if path:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as handle:
                handle.write(f"# {title}\n\n{provenance()}\n\n{header} Metrics and conventions: see "
                             f"docs/metrics-and-data.md.\n\n" + "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
