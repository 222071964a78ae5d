"""Shared fixtures: real nnU-Net v2 runs (plan, preprocess, short CPU training, --npz CV output)
on small generated datasets. Built once per session; every test that needs a model reuses them."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

from rnca_nnunet.nnunet_trainers import TRAINER_FOLDER
from rnca_nnunet.experiments.synthetic import write_dataset

TEST_TRAINER = "nnUNetTrainer_rncaTest"
MODEL_FIXTURES = {"vessel_model", "cardiac3d_model", "trained_vessel_refiner", "vessel_evaluation",
                  "vessel_base_probabilities"}


def pytest_collection_modifyitems(items) -> None:
    """Mark `slow` every test that trains nnU-Net or a refiner (a model fixture, or a module marked slow), so
    that `pytest -m "not slow"` runs the unit tests alone while developing."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    return env


def _train_model(root: str, kind: str, dataset_id: int, configuration: str, cases: int, test_cases: int,
                 folds: List[int]) -> NnunetModel:
    env = _environment(root)
    raw = write_dataset(kind, env["nnUNet_raw"], dataset_id, cases, test_cases, seed=dataset_id)
    model = NnunetModel(env, raw, "", dataset_id, configuration)
    model.run("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "1")
    for fold in folds:
        model.run(sys.executable, "-c", "import sys, torch; from nnunetv2.run.run_training import run_training; "
                  "run_training(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], "
                  "export_validation_probabilities=True, device=torch.device('cpu'))",
                  str(dataset_id), configuration, str(fold), TEST_TRAINER)
    name = os.path.basename(raw)
    model.model_folder = os.path.join(env["nnUNet_results"], name, f"{TEST_TRAINER}__nnUNetPlans__{configuration}")
    return model


@pytest.fixture(scope="session")
def vessel_model(tmp_path_factory) -> NnunetModel:
    """2D vessels, folds 0 and 1 of a real nnU-Net trained for a few dozen iterations."""
    return _train_model(str(tmp_path_factory.mktemp("nnunet2d")), "vessels2d", 901, "2d", 10, 3, [0, 1])


@pytest.fixture(scope="session")
def cardiac3d_model(tmp_path_factory) -> NnunetModel:
    """3D multi-class cardiac stacks, fold 0 of a real 3d_fullres nnU-Net."""
    return _train_model(str(tmp_path_factory.mktemp("nnunet3d")), "cardiac3d", 902, "3d_fullres", 6, 2, [0])


@pytest.fixture(scope="session")
def trained_vessel_refiner(vessel_model) -> NnunetModel:
    """The vessel model with a briefly trained rnca/ refiner."""
    vessel_model.run("nnUNetv2_train_rnca", str(vessel_model.dataset_id), "-c", "2d", "-tr", TEST_TRAINER,
                     "-device", "cpu", "--iterations", "6", "--disable_progress_bar")
    return vessel_model


@pytest.fixture(scope="session")
def vessel_evaluation(trained_vessel_refiner, tmp_path_factory):
    """The held-out cases predicted by nnU-Net (fold 0) and with the refiner (--save_uncertainty), evaluated
    with an HTML report: (folder, summary.json, the evaluation's stdout)."""
    import json

    model = trained_vessel_refiner
    folder = tmp_path_factory.mktemp("evaluation")
    images = os.path.join(model.raw_dataset, "imagesTs")
    model.run_all([["nnUNetv2_predict", *model.predict_args(images, str(folder / "base"), ["0"])],
                   ["nnUNetv2_predict_rnca", *model.predict_args(images, str(folder / "refined"), ["0"]),
                    "--refiner", "rnca", "--save_uncertainty"]], check=True)
    result = model.run("nnUNetv2_evaluate_rnca", "-ref", os.path.join(model.raw_dataset, "labelsTs"),
                       "-pred", str(folder / "base"), "-pred_refined", str(folder / "refined"),
                       "-o", str(folder / "summary.json"), "--html", str(folder / "html"), "-images", images)
    return folder, json.load(open(folder / "summary.json")), result.stdout


@pytest.fixture(scope="session")
def vessel_base_probabilities(trained_vessel_refiner) -> str:
    """nnU-Net's fold-0 predictions of the held-out cases with --save_probabilities (read it, never write)."""
    model = trained_vessel_refiner
    folder = os.path.join(os.path.dirname(model.env["nnUNet_raw"]), "base_probabilities")
    model.run("nnUNetv2_predict", *model.predict_args(os.path.join(model.raw_dataset, "imagesTs"), folder, ["0"]),
              "--save_probabilities")
    return folder


def train_on_corrupted(kind: str, preset: str, iterations: int, train: int, checkpoint: int, held_out: int):
    """A refiner trained on generated cases whose base masks are synthetic corruptions of their labels (`train`
    cases, `checkpoint` more to choose the checkpoint and read-out), and `held_out` cases of another seed."""
    import torch

    from rnca_nnunet.config import load_preset
    from rnca_nnunet.state import LabelSemantics, Normalisation
    from rnca_nnunet.experiments.synthetic import GENERATORS, corrupted_cases
    from rnca_nnunet.train import train_refiner

    torch.set_num_threads(2)
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
