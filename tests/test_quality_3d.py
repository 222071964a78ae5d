"""Quality of the 3D recipe (default_3d): held-out generated cardiac volumes whose myocardium is broken.

The base masks are synthetic corruptions of the labels (cuts through the wall, specks, holes, thickness
changes), so a real 3D rule trains on a CPU in a few minutes. The rule alone (no read-out clean-up) must
halve the myocardium's loop errors without costing a Dice point, which an identity refiner cannot; the
shipped refiner must halve the broken walls and repair more of them than its clean-up alone does.
"""
import torch

from rnca_nnunet.config import load_preset
from rnca_nnunet.state import LabelSemantics, Normalisation
from rnca_nnunet.synthetic import GENERATORS, corrupted_cases
from rnca_nnunet.train import train_refiner
from rnca_nnunet.validation import validate

ITERATIONS = 300  # about 3 minutes on 2 CPU cores


def test_3d_rule_repairs_broken_myocardium_walls_of_held_out_volumes():
    torch.set_num_threads(2)
    train, held_out = corrupted_cases("cardiac3d", 16, seed=101), corrupted_cases("cardiac3d", 10, seed=202)
    config = load_preset("default_3d", {"iterations": ITERATIONS, "validate_every": ITERATIONS // 3})
    refiner, _ = train_refiner(train[:12], train[12:], LabelSemantics(GENERATORS["cardiac3d"][1]),
                               Normalisation(["ZScoreNormalization"], {}), 3, config, {},
                               torch.device("cpu"), log=lambda line: None, show_progress=False)
    shipped = validate(refiner, held_out, config.iterations)
    sizes = refiner.min_component_size, refiner.min_hole_size
    refiner.min_component_size = refiner.min_hole_size = 0
    rule_alone = validate(refiner, held_out, config.iterations)
    refiner.min_component_size, refiner.min_hole_size = sizes
    torch.nn.init.zeros_(refiner.model.update_out.weight)  # the rule now keeps every mask: the clean-up alone
    clean_up_alone = validate(refiner, held_out, config.iterations)
    before, alone, after = rule_alone.before["MYO"], rule_alone.after["MYO"], shipped.after["MYO"]
    assert before["broken"] >= 0.5 and before["beta1_error"] >= 0.5, "the base walls must be broken"
    assert alone["beta1_error"] <= 0.5 * before["beta1_error"], (before, alone)
    assert alone["dice"] >= before["dice"] - 0.01, (before, alone)
    assert after["broken"] <= 0.5 * before["broken"], (before, after)
    assert after["broken"] < clean_up_alone.after["MYO"]["broken"], (after, clean_up_alone.after["MYO"])
