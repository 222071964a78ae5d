"""The end-to-end demo on CPU, using only the commands a user types.

Generated vessel dataset -> nnUNetv2_plan_and_preprocess -> short nnU-Net training of all 5 folds
with --npz -> nnUNetv2_train_rnca -> nnUNetv2_predict_rnca on held-out cases without and with
--refiner rnca -> nnUNetv2_evaluate_rnca before/after table.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict, List

from rnca_nnunet.nnunet_trainers import TRAINER_FOLDER

TRAINER = "nnUNetTrainer_rncaDemo"


def _run(command: List[str], env: Dict[str, str], log_file) -> None:
    started = time.time()
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"demo step failed (exit {result.returncode}): {' '.join(command)}; see {log_file.name}")
    print(f"  done in {time.time() - started:.0f} s", flush=True)


def run_demo(out: str, dataset_id: int = 991, cases: int = 30, test_cases: int = 10,
             rnca_iterations: int = 600) -> str:
    """Run every step in `out` (nnUNet_raw/preprocessed/results live there); returns the table."""
    out = os.path.abspath(out)
    env = dict(os.environ, nnUNet_raw=os.path.join(out, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(out, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(out, "nnUNet_results"), nnUNet_extTrainer=TRAINER_FOLDER,
               nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2")
    os.makedirs(out, exist_ok=True)
    dataset = f"Dataset{dataset_id:03d}_SyntheticVessels2d"
    images = os.path.join(env["nnUNet_raw"], dataset, "imagesTs")
    labels = os.path.join(env["nnUNet_raw"], dataset, "labelsTs")
    predict = ["-i", images, "-d", str(dataset_id), "-c", "2d", "-tr", TRAINER, "-device", "cpu",
               "--disable_progress_bar"]
    with open(os.path.join(out, "demo.log"), "w") as log:
        print(f"rnca-nnunet demo in {out} (full log: {log.name})")
        _run([sys.executable, "-m", "rnca_nnunet.synthetic", "vessels2d", "--out", env["nnUNet_raw"], "--id",
              str(dataset_id), "--cases", str(cases), "--test_cases", str(test_cases)], env, log)
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "2"], env, log)
        for fold in range(5):
            _run(["nnUNetv2_train", str(dataset_id), "2d", str(fold), "-tr", TRAINER, "-device", "cpu", "--npz"],
                 env, log)
        _run(["nnUNetv2_train_rnca", str(dataset_id), "-c", "2d", "-tr", TRAINER, "-device", "cpu",
              "--iterations", str(rnca_iterations), "--disable_progress_bar"], env, log)
        _run(["nnUNetv2_predict_rnca", *predict, "-o", os.path.join(out, "predicted_nnunet")], env, log)
        _run(["nnUNetv2_predict_rnca", *predict, "-o", os.path.join(out, "predicted_rnca"), "--refiner", "rnca"],
             env, log)
        table = subprocess.run(["nnUNetv2_evaluate_rnca", "-ref", labels, "-pred",
                                os.path.join(out, "predicted_nnunet"), "-pred_refined",
                                os.path.join(out, "predicted_rnca"), "-o", os.path.join(out, "summary.json")],
                               env=env, capture_output=True, text=True, check=True).stdout
    print(f"\nHeld-out test cases, nnU-Net (base) vs nnU-Net + rNCA (refined):\n\n{table}")
    return table


if __name__ == "__main__":
    from rnca_nnunet.cli import demo_entry_point

    demo_entry_point()
