"""Shared fixtures: real nnU-Net v2 runs (plan, preprocess, short CPU training, --npz CV output)
on small generated datasets. Built once per run, under pytest-xdist once for all its workers; every test that
needs a model reuses them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
from filelock import FileLock

from rnca_nnunet.nnunet_trainers import TRAINER_FOLDER
from rnca_nnunet.experiments.synthetic import dataset_name, write_dataset

TEST_TRAINER = "nnUNetTrainer_rncaTest"
MODEL_FIXTURES = {"vessel_model", "cardiac3d_model", "trained_vessel_refiner", "vessel_evaluation",
                  "vessel_base_probabilities"}


def pytest_collection_modifyitems(items) -> None:
    """Mark `slow` every test that trains nnU-Net or a refiner (a model fixture, or a module marked slow), so
    that `pytest -m "not slow"` runs the unit tests alone while developing. Order for pytest-xdist's workers:
    the refiners a module trains for itself first, so that one worker builds the shared nnU-Net models while
    the other trains instead of both waiting on them; the short unit tests last, to fill the end of the run."""
    def uses_a_model(item) -> bool:
        return bool(MODEL_FIXTURES & set(getattr(item, "fixturenames", ())))

    for item in items:
        if uses_a_model(item):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, uses_a_model(item)))


@dataclass
class NnunetModel:
    env: Dict[str, str]
    raw_dataset: str
    model_folder: str
    dataset_id: int
    configuration: str

    def run(self, *command: str, check: bool = True, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        """A console script of this project or of nnU-Net, in this model's environment (or `env`)."""
        result = subprocess.run(list(command), env=env or self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def run_all(self, commands: List[List[str]], check: bool = False) -> List[subprocess.CompletedProcess]:
        """Several independent commands, two at a time: most of a short command's time is its imports."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(lambda command: self.run(*command, check=check), commands))

    def predict_args(self, images: str, out: str, folds: List[str], processes: int = 0) -> List[str]:
        """nnUNetv2_predict's arguments; with `processes` 0 (the default here) nnU-Net and we predict without
        worker pools, which saves the 4 s each pool takes to start; tests of the pools pass 1."""
        return ["-i", images, "-o", out, "-d", str(self.dataset_id), "-c", self.configuration, "-tr", TEST_TRAINER,
                "-f", *folds, "-device", "cpu", "--disable_progress_bar", "-npp", str(processes), "-nps",
                str(processes)]


def _environment(root: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=os.path.join(root, "raw"), nnUNet_preprocessed=os.path.join(root, "preprocessed"),
               nnUNet_results=os.path.join(root, "results"), nnUNet_extTrainer=TRAINER_FOLDER,
               nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", PYTHONUNBUFFERED="1")
    threads = _threads_per_worker()
    if threads:
        env.update(OMP_NUM_THREADS=str(threads))
    return env


def _threads_per_worker() -> Optional[int]:
    """Under pytest-xdist, this machine's cores shared among its workers: two workers of two threads each on two
    cores fight over them, where one thread each keeps both busy. None: not under xdist, PyTorch's default."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    return max(1, (os.cpu_count() or 1) // int(workers)) if workers else None


def pytest_configure(config) -> None:
    threads = _threads_per_worker()
    if threads:
        import torch

        torch.set_num_threads(threads)


def built_once(tmp_path_factory, name: str, build: Callable[[str], None]) -> str:
    """The folder `name`, filled by `build` once per test run. Under pytest-xdist every worker gets the same folder:
    the first to ask builds it under a file lock and the others wait for it, so no nnU-Net is trained twice."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(str(folder))
            done.touch()
    return str(folder)


def _model(root: str, kind: str, dataset_id: int, configuration: str) -> NnunetModel:
    env = _environment(root)
    raw = os.path.join(env["nnUNet_raw"], dataset_name(kind, dataset_id))
    return NnunetModel(env, raw, os.path.join(env["nnUNet_results"], os.path.basename(raw),
                                              f"{TEST_TRAINER}__nnUNetPlans__{configuration}"),
                       dataset_id, configuration)


def _trained_model(tmp_path_factory, kind: str, dataset_id: int, configuration: str, cases: int, test_cases: int,
                   folds: List[int]) -> NnunetModel:
    """A real nnU-Net: plan, preprocess and train `folds` on a generated dataset (once per test run)."""
    def build(root: str) -> None:
        model = _model(root, kind, dataset_id, configuration)
        write_dataset(kind, model.env["nnUNet_raw"], dataset_id, cases, test_cases, seed=dataset_id)
        model.run("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "1")
        for fold in folds:
            model.run(sys.executable, "-c", "import sys, torch; from nnunetv2.run.run_training import run_training; "
                      "run_training(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], "
                      "export_validation_probabilities=True, device=torch.device('cpu'))",
                      str(dataset_id), configuration, str(fold), TEST_TRAINER)

    return _model(built_once(tmp_path_factory, f"nnunet{configuration}", build), kind, dataset_id, configuration)


@pytest.fixture(scope="session")
def vessel_model(tmp_path_factory) -> NnunetModel:
    """2D vessels, folds 0 and 1 of a real nnU-Net trained for a few dozen iterations."""
    return _trained_model(tmp_path_factory, "vessels2d", 901, "2d", 10, 3, [0, 1])


@pytest.fixture(scope="session")
def cardiac3d_model(tmp_path_factory) -> NnunetModel:
    """3D multi-class cardiac stacks, fold 0 of a real 3d_fullres nnU-Net."""
    return _trained_model(tmp_path_factory, "cardiac3d", 902, "3d_fullres", 6, 2, [0])


@pytest.fixture(scope="session")
def trained_vessel_refiner(vessel_model, tmp_path_factory) -> NnunetModel:
    """The vessel model with a briefly trained rnca/ refiner."""
    built_once(tmp_path_factory, "vessel_refiner", lambda _: vessel_model.run(
        "nnUNetv2_train_rnca", str(vessel_model.dataset_id), "-c", "2d", "-tr", TEST_TRAINER, "-device", "cpu",
        "--iterations", "6", "--disable_progress_bar"))
    return vessel_model


@pytest.fixture(scope="session")
def vessel_evaluation(trained_vessel_refiner, tmp_path_factory):
    """The held-out cases predicted by nnU-Net (fold 0) and with the refiner (--save_uncertainty), evaluated
    with an HTML report: (folder, summary.json, the evaluation's stdout)."""
    model = trained_vessel_refiner
    images = os.path.join(model.raw_dataset, "imagesTs")

    def build(folder: str) -> None:
        model.run_all([["nnUNetv2_predict", *model.predict_args(images, os.path.join(folder, "base"), ["0"])],
                       ["nnUNetv2_predict_rnca", *model.predict_args(images, os.path.join(folder, "refined"), ["0"]),
                        "--refiner", "rnca", "--save_uncertainty"]], check=True)
        result = model.run("nnUNetv2_evaluate_rnca", "-ref", os.path.join(model.raw_dataset, "labelsTs"),
                           "-pred", os.path.join(folder, "base"), "-pred_refined", os.path.join(folder, "refined"),
                           "-o", os.path.join(folder, "summary.json"), "--html", os.path.join(folder, "html"),
                           "-images", images)
        Path(folder, "stdout.txt").write_text(result.stdout)

    folder = Path(built_once(tmp_path_factory, "evaluation", build))
    return folder, json.loads((folder / "summary.json").read_text()), (folder / "stdout.txt").read_text()


@pytest.fixture(scope="session")
def vessel_base_probabilities(trained_vessel_refiner, tmp_path_factory) -> str:
    """nnU-Net's fold-0 predictions of the held-out cases with --save_probabilities (read it, never write)."""
    model = trained_vessel_refiner
    return built_once(tmp_path_factory, "base_probabilities", lambda folder: model.run(
        "nnUNetv2_predict", *model.predict_args(os.path.join(model.raw_dataset, "imagesTs"), folder, ["0"]),
        "--save_probabilities"))


def train_on_corrupted(kind: str, preset: str, iterations: int, train: int, checkpoint: int, held_out: int):
    """A refiner trained on generated cases whose base masks are synthetic corruptions of their labels (`train`
    cases, `checkpoint` more to choose the checkpoint and read-out), and `held_out` cases of another seed."""
    import torch

    from rnca_nnunet.config import load_preset
    from rnca_nnunet.state import LabelSemantics, Normalisation
    from rnca_nnunet.experiments.synthetic import GENERATORS, corrupted_cases
    from rnca_nnunet.train import train_refiner

    cases = corrupted_cases(kind, train + checkpoint, seed=101)
    config = load_preset(preset, {"iterations": iterations, "validate_every": iterations // 4})
    ndim = len(config.patch_size)
    refiner, _ = train_refiner(cases[:train], cases[train:], LabelSemantics(GENERATORS[kind][1]),
                               Normalisation(["ZScoreNormalization"], {}), ndim, config, {}, torch.device("cpu"),
                               log=lambda line: None, show_progress=False)
    return refiner, corrupted_cases(kind, held_out, seed=202)


def share_of_labels_changed_by_bfloat16(refiner, cases) -> float:
    """Share of voxels whose refined label differs between bfloat16 autocast (the default on a CPU with
    bfloat16 instructions, whether or not this one has them) and float32."""
    import numpy as np

    def labels(precision):
        variant = refiner.replace(precision=precision)
        return [variant.segment(variant.refine_context(np.concatenate([c.image, c.mask]), variant.steps, False)[0],
                                c.mask) for c in cases]

    reduced, full = labels("bfloat16"), labels("float32")
    return sum(int((a != b).sum()) for a, b in zip(reduced, full)) / sum(a.size for a in full)


def validate_shipped_rule_alone_and_clean_up_alone(refiner, cases, iteration: int):
    """Held-out metrics of the shipped refiner, of its rule without the read-out clean-up, and of the clean-up
    without the rule (a zero update keeps every mask), so a test can require the rule to earn its result."""
    import copy

    import torch

    from rnca_nnunet.cleanup import CleanUp
    from rnca_nnunet.validation import validate

    shipped = validate(refiner, cases, iteration)
    rule_alone = validate(refiner.replace(clean_up=CleanUp()), cases, iteration)
    still = copy.deepcopy(refiner.model)
    torch.nn.init.zeros_(still.update_out.weight)
    clean_up_alone = validate(refiner.replace(model=still), cases, iteration)
    return shipped, rule_alone, clean_up_alone
