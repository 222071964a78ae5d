"""Training patches: intensity augmentation reaches the image channels only, scaling and rotation keep
labels binary, a seed fixes a whole training, and the refiner keeps the weights' moving average."""
import random

import numpy as np
import pytest
import torch
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from rnca_nnunet.config import load_preset
from rnca_nnunet.model import RNCA
from rnca_nnunet.sampling import PatchSampler, intensity_augmentation, topology_error_count
from rnca_nnunet.state import LabelSemantics, Normalisation
from rnca_nnunet.experiments.synthetic import GENERATORS, corrupted_cases
from rnca_nnunet.train import train_refiner, update_average


class AddThousand(AbstractTransform):
    def __call__(self, **data):
        data["data"] = data["data"] + 1000.0
        return data


def test_intensity_augmentation_touches_the_image_channels_only():
    cases = corrupted_cases("cardiac2d", 2, seed=3)
    sampler = PatchSampler(cases, 2, load_preset("cardiac_2d"), np.random.default_rng(0))
    sampler.intensity = AddThousand()
    batch = sampler.sample(8)
    images = cases[0].image.shape[0]
    assert (batch["context"][:, :images] > 500).all(), "every image channel goes through the augmentation"
    for name, values in (("mask", batch["context"][:, images:]), ("target", batch["target"]), ("valid", batch["valid"])):
        assert values.min() >= 0 and values.max() <= 1, f"the {name} channels must not be augmented"


def test_intensity_augmentation_changes_some_images_and_keeps_them_finite():
    np.random.seed(0)
    images = np.random.default_rng(0).normal(size=(64, 3, 32, 32)).astype(np.float32)
    augmented = intensity_augmentation()(data=images.copy())["data"]
    changed = [not np.allclose(a, b) for a, b in zip(images, augmented)]
    assert 0.2 <= np.mean(changed) <= 0.9, "nnU-Net's probabilities: most, not all, images are changed"
    assert np.isfinite(augmented).all() and augmented.shape == images.shape


def test_scaling_and_rotation_turn_every_patch_and_keep_labels_binary():
    cases = corrupted_cases("vessels2d", 2, seed=5)
    batches = {}
    for p in (0.0, 1.0):
        np.random.seed(0)
        config = load_preset("vessels_2d", {"p_scale_rotate": p, "corrupted_fraction": 0.0})
        sampler = PatchSampler(cases, 2, config, np.random.default_rng(0))
        sampler.intensity = sampler.augment = lambda data: {"data": data}  # the crops alone
        batches[p] = sampler.sample(16)
    plain, turned = batches[0.0], batches[1.0]
    assert turned["target"].shape == plain["target"].shape
    assert all(not np.array_equal(a, b) for a, b in zip(plain["target"], turned["target"])), \
        "with probability 1 every patch is scaled and rotated, so none equals the plain crop of the same centre"
    for name in ("target", "line", "valid"):
        assert set(np.unique(turned[name])) <= {0.0, 1.0}, f"{name} must stay a label after interpolation"
    mask = turned["context"][:, cases[0].image.shape[0]:]
    assert mask.min() >= 0 and mask.max() <= 1 and len(np.unique(mask)) > 2, "probabilities stay soft, in [0, 1]"


def test_the_seed_fixes_a_training_whatever_random_numbers_were_drawn_before():
    """Same seed, same refiner to the last bit: batchgenerators' noise and blur draw from Python's `random`,
    its other augmentations from NumPy's global generator, and both are re-seeded by the training."""
    cases = corrupted_cases("vessels2d", 3, seed=7)
    config = load_preset("vessels_2d", {"iterations": 4, "validate_every": 100, "pool_size": 16, "batch_size": 4})
    losses, weights = [], []
    for global_seed in (1, 2):
        np.random.seed(global_seed)  # whatever ran before must not change the training
        random.seed(global_seed)
        refiner, record = train_refiner(cases, [], LabelSemantics(GENERATORS["vessels2d"][1]),
                                        Normalisation(["ZScoreNormalization"], {}), 2, config, {},
                                        torch.device("cpu"), log=lambda line: None, show_progress=False)
        losses.append(record.losses)
        weights.append(torch.cat([p.detach().flatten() for p in refiner.model.parameters()]))
    assert losses[0] == losses[1]
    assert torch.equal(weights[0], weights[1])


def test_the_moving_average_ramps_up_and_leaves_the_training_as_it_was():
    """update_average follows decay min(d, (1 + i) / (10 + i)); a training with ema_decay draws the same
    batches and losses as one without (the average is only read out) and keeps different weights."""
    layer = torch.nn.Linear(1, 1, bias=False)
    average = {name: value.detach().clone() for name, value in layer.state_dict().items()}
    expected = float(layer.weight.detach())
    for iteration, value in enumerate((1.0, 2.0, 3.0, 4.0), start=1):
        layer.weight.data.fill_(value)
        update_average(average, layer, 0.5, iteration)
        decay = min(0.5, (1 + iteration) / (10 + iteration))
        expected = decay * expected + (1 - decay) * value
        assert abs(float(average["weight"]) - expected) < 1e-6
    update_average(average, layer, 0.0, 5)
    assert float(average["weight"]) == 4.0, "decay 0 keeps the weights themselves"

    cases = corrupted_cases("vessels2d", 3, seed=7)
    trained = {}
    for decay in (0.0, 0.9):
        config = load_preset("vessels_2d", {"iterations": 30, "validate_every": 100, "pool_size": 16,
                                            "batch_size": 4, "ema_decay": decay})
        refiner, record = train_refiner(cases, [], LabelSemantics(GENERATORS["vessels2d"][1]),
                                        Normalisation(["ZScoreNormalization"], {}), 2, config, {},
                                        torch.device("cpu"), log=lambda line: None, show_progress=False)
        trained[decay] = (record.losses, torch.cat([p.detach().flatten() for p in refiner.model.parameters()]))
    torch.manual_seed(0)  # the training's seed: its initial weights
    initial = torch.cat([p.detach().flatten() for p in RNCA(refiner.model.shape).parameters()])
    (losses, final), (average_losses, averaged) = trained[0.0], trained[0.9]
    assert losses == average_losses, "the average must not feed back into the training"
    assert not torch.allclose(final, averaged), "the refiner must keep the average, not the last weights"
    assert (averaged - final).norm() < 0.5 * (initial - final).norm(), "the average follows the training"


def test_cases_with_more_topology_errors_are_drawn_more_often():
    cases = corrupted_cases("vessels2d", 3, seed=3)
    cases[0].mask = cases[0].target.copy()  # a case without any error
    counts = [topology_error_count(case, 2) for case in cases]
    assert counts[0] == 0 and max(counts) > 0
    uniform = PatchSampler(cases, 2, load_preset("vessels_2d", {"corrupted_fraction": 0.0}), np.random.default_rng(0))
    assert uniform.case_probabilities is None, "the default draws cases uniformly"
    config = load_preset("vessels_2d", {"corrupted_fraction": 0.0, "case_error_power": 0.5})
    sampler = PatchSampler(cases, 2, config, np.random.default_rng(0))
    expected = np.sqrt(1.0 + np.array(counts)) / np.sqrt(1.0 + np.array(counts)).sum()
    np.testing.assert_allclose(sampler.case_probabilities, expected)
    drawn = np.bincount([sampler.draw_case() for _ in range(3000)], minlength=len(cases)) / 3000
    np.testing.assert_allclose(drawn, expected, atol=0.03)


def test_local_intensity_augmentation_changes_images_locally_and_leaves_masks_alone():
    cases = corrupted_cases("vessels2d", 2, seed=5)
    batches = {}
    for p in (0.0, 1.0):
        np.random.seed(0), torch.manual_seed(0)
        config = load_preset("vessels_2d", {"p_local_intensity": p, "corrupted_fraction": 0.0})
        sampler = PatchSampler(cases, 2, config, np.random.default_rng(0))
        sampler.intensity = sampler.augment = lambda data: {"data": data}  # the crops and the local changes alone
        batches[p] = sampler.sample(16)
    images = cases[0].image.shape[0]
    plain, changed = batches[0.0], batches[1.0]
    np.testing.assert_array_equal(plain["context"][:, images:], changed["context"][:, images:])
    np.testing.assert_array_equal(plain["target"], changed["target"])
    difference = np.abs(plain["context"][:, :images] - changed["context"][:, :images])
    touched = (difference > 1e-4).mean(axis=(1, 2, 3))
    assert (touched > 0).all(), "with probability 1 every image is changed"
    assert (difference.reshape(len(difference), -1).std(1) > 1e-3).all(), \
        "the changes are local: no patch gets one offset everywhere"
    assert np.isfinite(changed["context"]).all()


def test_filled_holes_corruption_fills_the_share_of_holes_asked_for():
    from rnca_nnunet.corrupt import _filled_holes
    from rnca_nnunet.topology import enclosed_background
    grid = np.ones((96, 96), bool)
    for y in range(4, 84, 12):
        for x in range(4, 84, 12):
            grid[y:y + 8, x:x + 8] = False  # 49 bricks enclosed by mortar
    holes, count = enclosed_background(grid, 4)
    assert count == 49
    rng = np.random.default_rng(0)
    for share in (0.0, 0.5, 1.0):
        filled = _filled_holes(grid, rng, share)
        assert not (filled & grid).any(), "only holes are filled"
        bricks = len(np.unique(holes[filled]))
        assert abs(bricks - share * count) <= 12, f"share {share}: {bricks} of {count} bricks filled"
        assert all((filled[holes == h]).all() or not (filled[holes == h]).any() for h in range(1, count + 1)), \
            "a brick is filled whole or not at all"
    assert _filled_holes(grid[None], rng, 1.0).shape == (1, 96, 96)


@pytest.mark.slow  # trains seven small rules (about 45 s)
def test_read_out_folds_choose_on_every_case_and_leave_the_shipped_rule_as_it_was(tmp_path):
    """With read_out_folds 3 every case scores the read-out, each by a rule that did not train on it (its label
    maps in a folder of their own: on disk a case held out by one rule is a training case of another), and the
    shipped rule is the one a training without the extra folds keeps."""
    from rnca_nnunet.validation import read_out_folds

    cases = corrupted_cases("vessels2d", 6, seed=7)
    config = load_preset("vessels_2d", {"iterations": 6, "validate_every": 3, "pool_size": 16, "batch_size": 4,
                                        "inference_steps": 8, "read_out_folds": 3})
    (train, held_out), *more = read_out_folds(cases, config.val_fraction, config.seed, config.read_out_folds)
    runs = {}
    for name, folds, folder in (("one rule", [], None), ("in memory", more, None), ("on disk", more, str(tmp_path))):
        lines = []
        refiner, record = train_refiner(train, held_out, LabelSemantics(GENERATORS["vessels2d"][1]),
                                        Normalisation(["ZScoreNormalization"], {}), 2, config, {},
                                        torch.device("cpu"), log=lines.append, show_progress=False,
                                        work_folder=folder, more_folds=folds)
        runs[name] = (torch.cat([p.detach().flatten() for p in refiner.model.parameters()]), record, lines)
    weights, record, lines = runs["in memory"]
    assert torch.equal(weights, runs["one rule"][0]), "the extra rules must not change the shipped one"
    assert sorted(case["case"] for case in record.final.per_case) == sorted(case.name for case in cases)
    assert sorted(case["case"] for case in runs["one rule"][1].final.per_case) == sorted(c.name for c in held_out)
    assert any(line.startswith("read-out fold 3 of 3: iteration 6") for line in lines)
    assert runs["on disk"][1].final.per_case == record.final.per_case, "maps on disk must be each rule's own"


def test_every_cv_case_chooses_the_read_out_when_a_quarter_of_them_are_already_right():
    """What a training does with read_out_folds unset: the CV cases' own topology errors decide, so cases whose
    base already matches its label count as right, and with a quarter of them every case is held out once."""
    from dataclasses import replace

    from rnca_nnunet.validation import AUTOMATIC_FOLDS, read_out_fold_count, read_out_folds

    cases = corrupted_cases("vessels2d", 8, seed=7)
    counts = [topology_error_count(case, 2) for case in cases]
    assert min(counts) > 0, "the corruptions break every case"
    assert read_out_fold_count(None, counts)[0] == 1
    right = [replace(case, mask=case.target.copy()) if i < 2 else case for i, case in enumerate(cases)]
    counts = [topology_error_count(case, 2) for case in right]
    folds, line = read_out_fold_count(None, counts)
    assert counts[:2] == [0, 0] and folds == AUTOMATIC_FOLDS and "2 of 8 CV cases (25%)" in line
    splits = read_out_folds(right, 0.2, 0, folds)
    assert sorted(case.name for _, held_out in splits for case in held_out) == sorted(case.name for case in right)
