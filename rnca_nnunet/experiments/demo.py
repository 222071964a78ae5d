"""The end-to-end demo on CPU, using only the commands a user types.

Generated vessel dataset -> nnUNetv2_plan_and_preprocess -> short nnU-Net training of all 5 folds
with --npz -> nnUNetv2_train_rnca -> nnUNetv2_predict_rnca on held-out cases without and with
--refiner rnca (with --png/--gif pictures) -> nnUNetv2_evaluate_rnca before/after table.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from rnca_nnunet.nnunet_trainers import TRAINER_FOLDER

TRAINER = "nnUNetTrainer_rncaDemo"


def run_step(command: List[str], env: Dict[str, str], log_file) -> None:
    started = time.time()
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"demo step failed (exit {result.returncode}): {' '.join(command)}; see {log_file.name}")
    print(f"  done in {time.time() - started:.0f} s", flush=True)


def nnunet_environment(out: str) -> Dict[str, str]:
    """nnU-Net's three folders inside `out`, plus the project's trainers, for subprocesses."""
    return dict(os.environ, nnUNet_raw=os.path.join(out, "nnUNet_raw"),
                nnUNet_preprocessed=os.path.join(out, "nnUNet_preprocessed"),
                nnUNet_results=os.path.join(out, "nnUNet_results"), nnUNet_extTrainer=TRAINER_FOLDER,
                nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2")


def generate_dataset(kind: str, dataset_id: int, cases: int, test_cases: int, env: Dict[str, str], log_file) -> str:
    """Write a generated dataset into nnUNet_raw; returns its name."""
    run_step([sys.executable, "-m", "rnca_nnunet.experiments.synthetic", kind, "--out", env["nnUNet_raw"], "--id",
              str(dataset_id), "--cases", str(cases), "--test_cases", str(test_cases)], env, log_file)
    return f"Dataset{dataset_id:03d}_Synthetic{kind[0].upper()}{kind[1:]}"


def train_base_model(dataset_id: int, configuration: str, env: Dict[str, str], log_file,
                     folds: Sequence[int] = range(5), device: str = "cpu", trainer: str = TRAINER) -> None:
    """Plan and preprocess, then train nnU-Net briefly (on the CPU by default) with --npz, so every case gets a
    CV prediction.

    Folds that already finished are kept and a stopped one with a checkpoint_latest.pth (the longer benchmark
    trainers save one every 5 epochs) continues from it with nnU-Net's --c, so a stopped benchmark can be run
    again."""
    run_step(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "2"], env, log_file)
    pattern = os.path.join(env["nnUNet_results"], f"Dataset{dataset_id:03d}_*", f"{trainer}__nnUNetPlans__{configuration}")
    for fold in folds:
        if glob.glob(os.path.join(pattern, f"fold_{fold}", "validation", "summary.json")):
            continue
        resume = glob.glob(os.path.join(pattern, f"fold_{fold}", "checkpoint_latest.pth"))
        run_step(["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-tr", trainer, "-device", device,
                  "--npz", *(["--c"] if resume else [])], env, log_file)


def run_demo(out: str, dataset_id: int = 991, cases: int = 30, test_cases: int = 10,
             rnca_iterations: int = 1000) -> str:
    """Run every step in `out` (nnUNet_raw/preprocessed/results live there); returns the table."""
    out = os.path.abspath(out)
    env = nnunet_environment(out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "demo.log"), "w") as log:
        print(f"rnca-nnunet demo in {out} (full log: {log.name})")
        dataset = generate_dataset("vessels2d", dataset_id, cases, test_cases, env, log)
        train_base_model(dataset_id, "2d", env, log)
        images = os.path.join(env["nnUNet_raw"], dataset, "imagesTs")
        labels = os.path.join(env["nnUNet_raw"], dataset, "labelsTs")
        predict = ["-i", images, "-d", str(dataset_id), "-c", "2d", "-tr", TRAINER, "-device", "cpu",
                   "--disable_progress_bar"]
        run_step(["nnUNetv2_train_rnca", str(dataset_id), "-c", "2d", "-tr", TRAINER, "-device", "cpu",
              "--iterations", str(rnca_iterations), "--disable_progress_bar"], env, log)
        run_step(["nnUNetv2_predict_rnca", *predict, "-o", os.path.join(out, "predicted_nnunet")], env, log)
        run_step(["nnUNetv2_predict_rnca", *predict, "-o", os.path.join(out, "predicted_rnca"), "--refiner", "rnca",
                  "--png", os.path.join(out, "pictures"), "--gif", os.path.join(out, "pictures")], env, log)
        table = subprocess.run(["nnUNetv2_evaluate_rnca", "-ref", labels, "-pred",
                                os.path.join(out, "predicted_nnunet"), "-pred_refined",
                                os.path.join(out, "predicted_rnca"), "-o", os.path.join(out, "summary.json")],
                               env=env, capture_output=True, text=True, check=True).stdout
    print(f"\nHeld-out test cases, nnU-Net (base) vs nnU-Net + rNCA (refined):\n\n{table}\n\n"
          f"Before/after pictures and the rule's step-by-step GIFs: {os.path.join(out, 'pictures')}")
    return table


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Run the CPU demo end to end and print a before/after table.")
    parser.add_argument("--out", default="demo_output", help="work folder (default demo_output)")
    parser.add_argument("--rnca_iterations", type=int, default=1000, help="rNCA training iterations")
    args = parser.parse_args(argv)
    run_demo(args.out, rnca_iterations=args.rnca_iterations)


if __name__ == "__main__":
    main()
