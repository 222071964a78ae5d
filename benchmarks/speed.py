"""Speed and memory: the refinement stage against nnU-Net's own prediction, measured in one run.

Part `pipeline` (default): for a 2D dataset (vessels2d, `2d`) and a 3D one (cardiac3d, `3d_fullres`), train
nnU-Net's demo trainer (fold 0, --npz) and a short rNCA on its CV output, then predict the held-out cases
in this process twice, with nnU-Net's own `nnUNetPredictor` and with `RNCAPredictor`, at nnU-Net's
defaults (test-time mirroring) and at its fastest (--disable_tta); one fold each time. Reported per setting:
nnU-Net's time, the refinement's time (inside the refining run) and their ratio, steps, voxel-steps per
second. Part `memory`: peak RSS of refining a volume and ones 4x and 16x as large, each in a fresh process. Part
`training_memory`: peak RSS of a short training on N and 4N cases, in memory and on disk.
Part `topomortar`: the same on the TopoMortar demo base of `benchmarks/topomortar.py --parts nnunet`
(`--topomortar`, its --out folder), 5 folds at --disable_tta. Part `rule`: each trained rule alone on a
large generated case (the cases repeated along every axis), in every numeric variant this device offers
(float32, bf16 autocast, channels-last; on CUDA also fp16 autocast and torch.compile): seconds, voxel-steps
per second, peak GPU memory and the share of voxels whose label differs from float32's.

    python benchmarks/speed.py --out speed_output --markdown benchmarks/SPEED.md
Finished nnU-Net folds and refiners in --out are kept, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from provenance import machine, provenance
from topomortar import BASE_TRAINERS
from rnca_nnunet.cpu_memory import reuse_freed_memory
from rnca_nnunet.experiments.demo import TRAINER, generate_dataset, nnunet_environment, run_step, train_base_model
from rnca_nnunet.device_policy import PRECISIONS
from rnca_nnunet.experiments.synthetic import corrupted_cases

DATASETS = {"vessels2d": (971, "2d", 600), "cardiac3d": (972, "3d_fullres", 30)}  # id, configuration, rNCA iterations
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PIPELINE_HEADER = ("| dataset | nnU-Net setting | refiner precision | cases | nnU-Net s/case | refinement s/case | "
                   "refinement / nnU-Net | whole run, s/case added | steps/case | voxel-steps/s |\n"
                   "|---|---|---|---|---|---|---|---|---|---|\n")


def prepare(kind: str, out: str, cases: int, test_cases: int, log) -> Dict[str, str]:
    """Dataset, nnU-Net fold 0 with --npz, and a short rNCA on its CV output (each kept if already there)."""
    dataset_id, configuration, iterations = DATASETS[kind]
    env = nnunet_environment(out)
    dataset = generate_dataset(kind, dataset_id, cases, test_cases, env, log)
    env["nnUNet_compile"] = "f"  # minutes of compilation would dwarf a 150-iteration training
    train_base_model(dataset_id, configuration, env, log, folds=[0], device=DEVICE.type)
    model_folder = os.path.join(env["nnUNet_results"], dataset, f"{TRAINER}__nnUNetPlans__{configuration}")
    timing = os.path.join(out, "rnca_training.json")
    if not os.path.isfile(os.path.join(model_folder, "rnca", "rnca.json")):
        started = time.perf_counter()
        run_step(["nnUNetv2_train_rnca", str(dataset_id), "-c", configuration, "-tr", TRAINER, "-device",
                  DEVICE.type, "--disable_progress_bar"]
                 + ([] if DEVICE.type == "cuda" else ["--iterations", str(iterations)]), env, log)
        with open(os.path.join(model_folder, "rnca", "rnca.json")) as handle:
            train = json.load(handle)["trained_on"]["train"]
        with open(timing, "w") as handle:
            json.dump({"device": machine(), "seconds": time.perf_counter() - started, "iterations": train["iterations"],
                       "rule": f"{train['hidden_channels']} hidden, width {train['update_width']}, patch "
                               f"{'x'.join(map(str, train['patch_size']))}"}, handle)
    os.environ["nnUNet_extTrainer"] = env["nnUNet_extTrainer"]
    return {"model_folder": model_folder, "images": os.path.join(env["nnUNet_raw"], dataset, "imagesTs"),
            "training_record": timing}


def training_rows(paths: Dict[str, Dict[str, str]]) -> List[str]:
    """How long `nnUNetv2_train_rnca` took when `prepare` ran it (the whole command, data loading included)."""
    rows = []
    for kind, kind_paths in paths.items():
        if os.path.isfile(kind_paths["training_record"]):
            with open(kind_paths["training_record"]) as handle:
                record = json.load(handle)
            rows.append(f"| {kind} | {record['rule']} | {record['iterations']} | {record['seconds']:.0f} | "
                        f"{record['seconds'] / record['iterations']:.3f} | {record['device']} |")
    return rows


def timed_prediction(model_folder: str, images: str, out: str, mirroring: bool, refine: bool,
                     precision: str = "default", folds: Sequence[int] = (0,)) -> Dict[str, float]:
    """One in-process prediction of every case; with `refine`, the time spent inside the refiner too."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from rnca_nnunet.predictor import RNCAPredictor

    device = DEVICE
    predictor = (RNCAPredictor if refine else nnUNetPredictor)(device=device, use_mirroring=mirroring,
                                                               allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, tuple(folds))
    record = {"refine_s": 0.0, "steps": 0, "voxel_steps": 0, "cases": 0}
    if refine:
        predictor.log = lambda line: None
        if precision != "default":
            predictor.refiner = predictor.refiner.replace(precision=precision)
        record["precision"] = predictor.refiner.precision
        predictor.refiner = TimedRefiner(predictor.refiner, record)
    start = time.perf_counter()
    predictor.predict_from_files(images, out, num_processes_preprocessing=1, num_processes_segmentation_export=1)
    record["total_s"] = time.perf_counter() - start
    if refine and not record["cases"]:
        print(f"error: the refiner of {model_folder} refined none of the cases in {images}: the predictor no longer "
              f"calls refine_case; time what it calls", file=sys.stderr)
        sys.exit(2)
    return record


class TimedRefiner:
    """A refiner that adds the time, steps and voxel-steps of each `refine_case` (what prediction calls) to
    `record`."""

    def __init__(self, refiner, record: Dict[str, float]):
        self.refiner, self.record = refiner, record

    def __getattr__(self, name: str):
        return getattr(self.refiner, name)

    def refine_case(self, image, probabilities, steps=None):
        start = time.perf_counter()
        case = self.refiner.refine_case(image, probabilities, steps)
        if self.refiner.device.type == "cuda":
            torch.cuda.synchronize()
        self.record["refine_s"] += time.perf_counter() - start
        self.record["steps"] += case.steps
        self.record["voxel_steps"] += case.steps * int(np.prod(image.shape[1:]))
        self.record["cases"] += 1
        return case


def pipeline_rows(kind: str, paths: Dict[str, str], out: str, precisions: List[str]) -> List[str]:
    rows = []
    for setting, mirroring in (("defaults (mirroring)", True), ("fastest (--disable_tta)", False)):
        for precision in precisions:
            plain = timed_prediction(paths["model_folder"], paths["images"], os.path.join(out, "plain"), mirroring,
                                     False)
            refined = timed_prediction(paths["model_folder"], paths["images"], os.path.join(out, "refined"),
                                       mirroring, True, precision)
            rows.append(pipeline_row(kind, setting, refined.pop("precision"), plain, refined))
            print(rows[-1], flush=True)
    return rows


def topomortar_rows(bench_folder: str, out: str, precisions: List[str], trainer: str = TRAINER) -> List[str]:
    """The TopoMortar base of `benchmarks/topomortar.py --parts nnunet --trainer` (its --out folder), all 5 folds
    at --disable_tta, on its 20 val walls (256x256): the issue's setting for refinement <= 25% of nnU-Net."""
    results = os.path.join(bench_folder, "nnUNet_results")
    datasets = [d for d in sorted(os.listdir(results)) if d.startswith("Dataset950")] if os.path.isdir(results) else []
    if not datasets:
        print(f"error: no Dataset950 in {results}; run benchmarks/topomortar.py --parts nnunet --out {bench_folder} "
              f"first (--topomortar names its --out folder)", file=sys.stderr)
        sys.exit(2)
    dataset = datasets[0]
    model_folder = os.path.join(results, dataset, f"{trainer}__nnUNetPlans__2d")
    images = os.path.join(bench_folder, "nnUNet_raw", dataset, "imagesTs")
    os.environ.update(nnunet_environment(bench_folder))
    rows = []
    for precision in precisions:
        plain = timed_prediction(model_folder, images, os.path.join(out, "plain"), False, False, folds=range(5))
        refined = timed_prediction(model_folder, images, os.path.join(out, "refined"), False, True, precision,
                                   range(5))
        rows.append(pipeline_row(f"TopoMortar (5 folds, {trainer})", "fastest (--disable_tta)",
                                 refined.pop("precision"), plain, refined))
        print(rows[-1], flush=True)
    return rows


def pipeline_row(kind: str, setting: str, precision: str, plain: Dict[str, float], refined: Dict[str, float]) -> str:
    n = refined["cases"]
    return (f"| {kind} | {setting} | {precision} | {n} | {plain['total_s'] / n:.2f} | {refined['refine_s'] / n:.3f} | "
            f"{100 * refined['refine_s'] / plain['total_s']:.1f}% | "
            f"{(refined['total_s'] - plain['total_s']) / n:+.2f} | {refined['steps'] / n:.0f} | "
            f"{refined['voxel_steps'] / refined['refine_s']:.3g} |")


MEMORY_PROBE = """
import sys, numpy as np, torch
from rnca_nnunet.cpu_memory import reuse_freed_memory
from rnca_nnunet.refiner_folder import read_refiner
reuse_freed_memory()  # as the console scripts do
torch.set_num_threads(int(sys.argv[3]))
refiner = read_refiner(sys.argv[1], torch.device("cpu"))
factor = int(sys.argv[2])
rng = np.random.default_rng(0)
shape = (64, 96 * factor, 96)
image = rng.normal(size=(1, *shape)).astype(np.float32)
probabilities = rng.dirichlet(np.ones(refiner.semantics.mask_channels + 1), size=shape).transpose(3, 0, 1, 2)
probabilities = np.ascontiguousarray(probabilities, np.float32)  # as nnU-Net hands them over
status = lambda key: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key)))
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from now: import peaks do not count
before = status("VmRSS:")
refiner.refine(image, probabilities)
print(status("VmHWM:") - before, int(np.prod(shape)))
"""


def memory_rows(refiner_folder: str) -> List[str]:
    """Peak RSS added by refining a 64x96x96 volume and ones 4x and 16x as large, each in a fresh process: the
    first fits the CPU cell budget whole, the others run in tiles, so their peak must be the same."""
    rows = []
    for factor in (1, 4, 16):
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, refiner_folder, str(factor),
                                 str(torch.get_num_threads())], capture_output=True, text=True, check=True)
        added_kib, cells = map(int, result.stdout.split()[-2:])
        rows.append(f"| 3D rule, volume x{factor} | {cells} | {added_kib / 2 ** 20:.2f} |")
        print(rows[-1], flush=True)
    return rows


TRAINING_PROBE = """
import resource, sys, tempfile, numpy as np, torch
from dataclasses import replace
from rnca_nnunet.case_store import store_case
from rnca_nnunet.config import load_preset
from rnca_nnunet.state import LabelSemantics, Normalisation
from rnca_nnunet.experiments.synthetic import GENERATORS, corrupted_cases
from rnca_nnunet.train import train_refiner
torch.set_num_threads(int(sys.argv[3]))
on_disk, count, folder = sys.argv[1] == "disk", int(sys.argv[2]), tempfile.mkdtemp()
cases = []
for index in range(count):  # cardiac3d volumes enlarged 4x in-plane: 12 x 192 x 192, one at a time
    case = corrupted_cases("cardiac3d", 1, seed=index)[0]
    tile = lambda a: np.ascontiguousarray(np.tile(a, (1,) * (a.ndim - 2) + (4, 4)))
    case = replace(case, image=tile(case.image), mask=tile(case.mask), target=tile(case.target), valid=tile(case.valid))
    cases.append(store_case(case, folder + "/cases", 2) if on_disk else case)
config = load_preset("cardiac_2d", {"iterations": 10, "validate_every": 10, "inference_steps": 16})
train_refiner(cases[:-2], cases[-2:], LabelSemantics(GENERATORS["cardiac3d"][1]), Normalisation(["ZScoreNormalization"], {}),
              2, config, {}, torch.device("cpu"), log=lambda line: None, show_progress=False,
              work_folder=folder + "/read_out" if on_disk else None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def training_memory_rows() -> List[str]:
    """Peak RSS of a short training on N and 4N enlarged cardiac3d volumes, cases in memory vs on disk."""
    rows = []
    for mode in ("memory", "disk"):
        for count in (8, 32):
            result = subprocess.run([sys.executable, "-c", TRAINING_PROBE, mode, str(count),
                                     str(torch.get_num_threads())], capture_output=True, text=True, check=True)
            rows.append(f"| cases {'in memory (old)' if mode == 'memory' else 'on disk (case_store.py)'} | {count} | "
                        f"{int(result.stdout.split()[-1]) / 2 ** 20:.2f} |")
            print(rows[-1], flush=True)
    return rows


REPEATS = {"cuda": {"vessels2d": (1, 32, 32), "cardiac3d": (10, 8, 8)},  # 4096^2 and 120x384x384 cells
           "cpu": {"vessels2d": (1, 4, 4), "cardiac3d": (2, 2, 2)}}


def large_case(kind: str, repeat: Sequence[int]) -> np.ndarray:
    """The rule's input (normalised image + base mask) of a generated case repeated `repeat` times per axis."""
    case = corrupted_cases(kind, 1, seed=0)[0]
    return np.tile(np.concatenate([case.image, case.mask]), (1, *repeat))


def rule_variants() -> List[Tuple[str, str, bool, bool]]:
    """(name, precision, channels-last, torch.compile) worth trying on this device."""
    if DEVICE.type == "cpu":
        return [("float32", "float32", False, False), ("bfloat16 autocast", "bfloat16", False, False),
                ("float32, channels-last", "float32", True, False), ("bfloat16, channels-last", "bfloat16", True, False)]
    return [("float32", "float32", False, False), ("bfloat16 autocast", "bfloat16", False, False),
            ("float16 autocast", "float16", False, False), ("float32, channels-last", "float32", True, False),
            ("bfloat16, channels-last", "bfloat16", True, False), ("bfloat16, torch.compile", "bfloat16", False, True)]


def rule_rows(paths: Dict[str, Dict[str, str]]) -> List[str]:
    """Each trained rule on a large case in every variant: time (after one warm-up run), voxel-steps/s, peak GPU
    memory, and the voxels whose label differs from float32's (share of all voxels and of float32's foreground)."""
    from rnca_nnunet.refiner_folder import read_refiner

    rows = []
    for kind, kind_paths in paths.items():
        loaded = read_refiner(os.path.join(kind_paths["model_folder"], "rnca"), DEVICE)
        context = large_case(kind, REPEATS[DEVICE.type][kind])
        reference = None
        for name, precision, channels_last, compiled in rule_variants():
            refiner = loaded.replace(precision=precision, channels_last=channels_last)
            if compiled:
                refiner.model.step = torch.compile(refiner.model.step, dynamic=False)
            run = lambda: refiner.refine_context(context, refiner.steps, stop_when_stable=False)[0]
            try:
                run()
            except Exception as error:  # torch.compile needs a working compiler toolchain: report, go on
                vars(refiner.model).pop("step", None)
                rows.append(f"| {kind} | - | {name} | failed: {str(error).strip().splitlines()[0][:80]} |")
                print(rows[-1], flush=True)
                continue
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            refined = run()
            seconds = time.perf_counter() - start  # refine_context returns on the host: nothing left queued
            labels = refiner.segment(refined, context[-refiner.semantics.mask_channels:])
            vars(refiner.model).pop("step", None)
            reference = labels if reference is None else reference
            differ = int((labels != reference).sum())
            peak = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f}" if DEVICE.type == "cuda" else "-"
            cells = int(np.prod(context.shape[1:]))
            rows.append(f"| {kind} | {'x'.join(map(str, context.shape[1:]))} | {name} | {refiner.steps} | "
                        f"{seconds:.3f} | {cells * refiner.steps / seconds:.3g} | {peak} | "
                        f"{100 * differ / labels.size:.4f}% | {100 * differ / max(1, int((reference > 0).sum())):.3f}% |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="speed_output")
    parser.add_argument("--parts", nargs="+", default=["pipeline", "memory", "training_memory", "rule"],
                        choices=["pipeline", "memory", "training_memory", "rule", "topomortar"])
    parser.add_argument("--topomortar", default="bench_topomortar",
                        help="part topomortar: the --out folder of benchmarks/topomortar.py --parts nnunet")
    parser.add_argument("--trainer", default=TRAINER, choices=BASE_TRAINERS,
                        help="part topomortar: the base's nnU-Net trainer, as given to topomortar.py")
    parser.add_argument("--cases", type=int, default=10, help="training cases per dataset")
    parser.add_argument("--test_cases", type=int, default=5, help="predicted cases per dataset")
    parser.add_argument("--precisions", nargs="+", default=["default"], choices=["default", *PRECISIONS],
                        help="refiner precisions of part pipeline (autocast dtype; default: the refiner's own)")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    reuse_freed_memory()  # the malloc tuning the console scripts apply (cpu_memory.py)
    started, sections = time.time(), []
    os.makedirs(args.out, exist_ok=True)
    print(f"machine: {machine()}")
    with open(os.path.join(args.out, "speed.log"), "a") as log:
        paths = {kind: prepare(kind, os.path.abspath(os.path.join(args.out, kind)), args.cases, args.test_cases, log)
                 for kind in DATASETS if {"pipeline", "memory", "rule"} & set(args.parts)}
    if "pipeline" in args.parts:
        rows = [r for kind in DATASETS
                for r in pipeline_rows(kind, paths[kind], os.path.join(args.out, kind), args.precisions)]
        sections.append(PIPELINE_HEADER + "\n".join(rows))
    if "topomortar" in args.parts:
        sections.append(PIPELINE_HEADER + "\n".join(topomortar_rows(os.path.abspath(args.topomortar),
                                                                    os.path.join(args.out, "topomortar"),
                                                                    args.precisions, args.trainer)))
    if "memory" in args.parts:
        rows = memory_rows(os.path.join(paths["cardiac3d"]["model_folder"], "rnca"))
        sections.append("| refinement | cells | peak RSS added, GiB |\n|---|---|---|\n" + "\n".join(rows))
    if "training_memory" in args.parts:
        sections.append("| training (cardiac3d 12x192x192, 2D rule, 10 iterations, 16 inference steps) | cases | peak RSS GiB |\n"
                        "|---|---|---|\n" + "\n".join(training_memory_rows()))
    trainings = training_rows(paths)
    if trainings:
        sections.append("| rNCA training | rule | iterations | seconds (whole command) | s/iteration | device |\n"
                        "|---|---|---|---|---|---|\n" + "\n".join(trainings))
    if "rule" in args.parts:
        sections.append("| trained rule | cells | variant | steps | seconds | voxel-steps/s | peak GPU GiB | labels "
                        "differing from float32 (all voxels) | (of float32's foreground) |\n"
                        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rule_rows(paths)))
    text = (f"# Speed benchmark\n\n{provenance()}\n\nGenerated by `python benchmarks/speed.py` in "
            f"{(time.time() - started) / 60:.0f} minutes, {torch.get_num_threads()} torch threads on {machine()}; "
            f"nnU-Net `{TRAINER}` fold 0, one fold per prediction, "
            f"{args.test_cases} cases per dataset.\n\n" + "\n\n".join(sections) + "\n")
    print("\n" + text)
    if args.markdown:
        from rnca_nnunet.files import atomic_path

        with atomic_path(args.markdown) as tmp:
            open(tmp, "w").write(text)


if __name__ == "__main__":
    main()
