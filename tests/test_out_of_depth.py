"""The fall-back: a case the rule rewrites beyond what it did on held-out cases gets the clean-up alone."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from rnca_nnunet.cleanup import CleanUp, count_opened_holes, fill_opened_holes, rewritten_share
from rnca_nnunet.config import TrainConfig
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.errors import InputError
from rnca_nnunet.out_of_depth import FACTOR, held_out_shares, with_fall_back, with_opened_hole_limit
from rnca_nnunet.readout import decide_read_out
from rnca_nnunet.refiner_folder import read_refiner, save_refiner
from rnca_nnunet.state import segmentation_from_probabilities
from test_refiner import random_case, random_refiner


def bars():
    """(1, Y, X): three bars of label 1 and a speck the clean-up drops."""
    base = np.zeros((1, 40, 40), np.uint8)
    base[0, 5:10, 2:38] = base[0, 18:23, 2:38] = base[0, 30:35, 2:38] = 1
    base[0, 14, 20] = 1
    return base


def test_a_case_rewritten_beyond_the_limit_gets_the_sizes_alone_and_one_within_it_the_rule():
    base = bars()
    slightly = base.copy()
    slightly[0, 5:10, 2:6] = 0  # 20 of 541 structure cells: 3.7%
    heavily = base.copy()
    heavily[0, 18:35, 2:38] = 1  # two bars joined into one block
    clean_up = CleanUp(min_component_size=4, fall_back_above=0.2)
    assert rewritten_share(slightly, base) == pytest.approx(20 / 541)
    kept, share, fell_back, _ = clean_up.apply(slightly, True, base, None)
    assert not fell_back and share == pytest.approx(21 / 541), "the read-out's own speck removal counts too"
    np.testing.assert_array_equal(kept, CleanUp(min_component_size=4)(slightly, True))
    written, share, fell_back, _ = clean_up.apply(heavily, True, base, None)
    assert fell_back and share > 0.2
    np.testing.assert_array_equal(written, CleanUp(min_component_size=4)(base, True))
    assert written[0, 14, 20] == 0 and written[0, 25, 20] == 0, "the sizes alone: speck dropped, bars apart"
    np.testing.assert_array_equal(CleanUp(min_component_size=4)(heavily, True), clean_up.sizes(heavily, True))
    assert clean_up.apply(heavily, True, base, None)[0].sum() < CleanUp(min_component_size=4)(heavily, True).sum()


def test_the_refiner_writes_the_clean_up_alone_where_it_rewrote_too_much_and_says_so():
    refiner = random_refiner(2)
    image, probabilities = random_case((1, 32, 32))
    free = refiner.refine_case(image, probabilities)
    base = segmentation_from_probabilities(probabilities, refiner.semantics)
    share = rewritten_share(free.segmentation, base)
    assert share > 0.05, "the rule must rewrite something for the test to mean anything"
    limited = refiner.replace(clean_up=replace(refiner.clean_up, fall_back_above=share / 2))
    case = limited.refine_case(image, probabilities)
    assert case.fell_back and case.rewritten == pytest.approx(share)
    np.testing.assert_array_equal(case.segmentation, limited.clean_up.sizes(base, True))
    assert np.array_equal(case.probabilities.argmax(0), case.segmentation)
    assert "wrote the clean-up alone" in str(case) and "rewrote" in str(case)
    within = refiner.replace(clean_up=replace(refiner.clean_up, fall_back_above=min(1.0, share * 2)))
    case = within.refine_case(image, probabilities)
    assert not case.fell_back
    np.testing.assert_array_equal(case.segmentation, free.segmentation)
    assert free.rewritten is None and str(free) == f"{free.steps} steps"


@pytest.mark.parametrize("value", [1.5, -0.1, "0.3", True])
def test_an_impossible_fall_back_limit_in_rnca_json_is_one_line(tmp_path, value):
    save_refiner(random_refiner(2), str(tmp_path / "rnca"))
    config_file = tmp_path / "rnca" / "rnca.json"
    config = json.loads(config_file.read_text())
    config["fall_back_above"] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(InputError, match="fall_back_above"):
        read_refiner(str(tmp_path / "rnca"), torch.device("cpu"))


def refiner_and_held_out_cases():
    """A random rule, three raw (image, probabilities) cases and the same as held-out training cases."""
    refiner = random_refiner(2)
    raw = [random_case((1, 24, 24), seed) for seed in range(3)]
    cases = [TrainingCase(f"case{seed}", refiner.normalisation(image), probabilities[1:], probabilities[1:] > 0.5,
                          np.ones((1, 24, 24), np.float32), (1.0, 1.0, 1.0))
             for seed, (image, probabilities) in enumerate(raw)]
    return refiner, raw, cases


def test_the_limit_is_set_above_every_held_out_case_so_none_of_them_falls_back():
    refiner, raw, cases = refiner_and_held_out_cases()
    lines = []
    limited = with_fall_back(refiner, cases, lines.append)
    shares = held_out_shares(refiner, cases)
    assert min(shares) > 0, "the rule must rewrite something for the test to mean anything"
    assert limited.clean_up.fall_back_above == pytest.approx(min(1.0, FACTOR * max(shares)))
    assert "the 3 held-out cases" in lines[0] and f"{100 * max(shares):.1f}%" in lines[0]
    assert with_fall_back(refiner, [], lines.append) is refiner
    for (image, probabilities), share in zip(raw, shares):
        case = limited.refine_case(image, probabilities)
        assert not case.fell_back and case.rewritten == pytest.approx(share), "as the predictor refines it"


def wall() -> np.ndarray:
    """(1, Y, X): mortar (label 1) around a 4x4 grid of 6x6 bricks; mortar lines 3 cells wide."""
    mortar = np.ones((1, 40, 40), np.uint8)
    for y in range(4):
        for x in range(4):
            mortar[0, 3 + 9 * y:9 + 9 * y, 3 + 9 * x:9 + 9 * x] = 0
    return mortar


def test_holes_the_rule_opened_in_the_base_structure_are_filled_where_a_case_has_more_than_the_limit():
    """Three holes opened where nnU-Net drew mortar are filled once there are more than the limit; a brick the
    rule widened from one of nnU-Net's (most of its cells nnU-Net's background) stays, as does every brick."""
    base = wall()
    refined = base.copy()
    for y, x in ((10, 10), (19, 19), (28, 28)):
        refined[0, y, x] = 0  # a hole where mortar lines cross
    refined[0, 3:10, 3:9] = 0  # the first brick grown by a row of mortar: 6 of 42 cells were nnU-Net's mortar
    assert count_opened_holes(refined, base, True) == 3
    filled = fill_opened_holes(refined, base, True)
    expected = refined.copy()
    for y, x in ((10, 10), (19, 19), (28, 28)):
        expected[0, y, x] = 1
    np.testing.assert_array_equal(filled, expected)
    np.testing.assert_array_equal(CleanUp(fill_opened_holes_above=2)(refined, True, base, None), expected)
    np.testing.assert_array_equal(CleanUp(fill_opened_holes_above=3)(refined, True, base, None), refined)
    np.testing.assert_array_equal(CleanUp()(refined, True, base, None), refined)
    assert "holes the rule opened in the base's structure filled where a case has more than 2" in str(
        CleanUp(fill_opened_holes_above=2))


def test_the_opened_hole_limit_is_set_above_every_held_out_case_so_none_of_them_changes():
    refiner, raw, cases = refiner_and_held_out_cases()
    counts = []
    for image, probabilities in raw:
        base = segmentation_from_probabilities(probabilities, refiner.semantics)
        counts.append(count_opened_holes(refiner.refine_case(image, probabilities).segmentation, base, True))
    assert max(counts) > 0, "the rule must open holes for the test to mean anything"
    lines = []
    limited = with_opened_hole_limit(refiner, cases, lines.append)
    assert limited.clean_up.fill_opened_holes_above == pytest.approx(FACTOR * max(counts))
    assert "the 3 held-out cases" in lines[0] and f"{min(counts)}-{max(counts)} holes" in lines[0]
    assert with_opened_hole_limit(refiner, [], lines.append) is refiner
    for (image, probabilities), count in zip(raw, counts):
        case = limited.refine_case(image, probabilities)
        np.testing.assert_array_equal(case.segmentation, refiner.refine_case(image, probabilities).segmentation)
        assert case.opened_holes == count and not case.holes_filled
        assert f"opened {count} holes in nnU-Net's structure" in str(case) and "filled" not in str(case)
    below = refiner.replace(clean_up=replace(refiner.clean_up, fill_opened_holes_above=max(counts) - 1))
    image, probabilities = raw[int(np.argmax(counts))]
    base = segmentation_from_probabilities(probabilities, refiner.semantics)
    case = below.refine_case(image, probabilities)
    assert count_opened_holes(case.segmentation, base, True) == 0, \
        "beyond the limit every hole the rule opened in nnU-Net's structure is filled"
    assert case.holes_filled and "(more than any held-out case: filled)" in str(case), "the case's log line says so"


def test_the_limits_are_measured_on_the_cases_the_kept_rule_held_out_itself():
    """With read-out folds the other folds' rules refine more cases; a maximum over them is a looser ceiling
    of another rule (TopoMortar: 0 opened holes on the 10 walls the rule held out, 3 on all 50), so the limits
    come from the first `own_cases` alone. Fails if they are taken over every case that chose the read-out."""
    refiner, raw, cases = refiner_and_held_out_cases()
    base = [segmentation_from_probabilities(probabilities, refiner.semantics) for _, probabilities in raw]
    ordered = [cases[1], cases[0], cases[2]]
    config = TrainConfig(guard_search=False, fall_back=True)
    every, _ = decide_read_out(refiner, [], ordered, config, lambda line: None)
    lines = []
    own, _ = decide_read_out(refiner, [], ordered, config, lines.append, own_cases=1)
    assert own.clean_up.sizes == every.clean_up.sizes, "the read-out is chosen on every case either way"
    without_limits = own.replace(clean_up=replace(own.clean_up, fill_opened_holes_above=None, fall_back_above=None))
    counts = [count_opened_holes(without_limits.refine_case(image, probabilities).segmentation, b, True)
              for (image, probabilities), b in zip(raw, base)]
    assert counts[1] < max(counts), "the own case must open fewer holes for the test to mean anything"
    assert own.clean_up.fill_opened_holes_above == pytest.approx(FACTOR * counts[1])
    assert every.clean_up.fill_opened_holes_above == pytest.approx(FACTOR * max(counts))
    shares = held_out_shares(without_limits, [cases[1]])
    assert own.clean_up.fall_back_above == pytest.approx(min(1.0, FACTOR * shares[0]))
    assert "measured on the 1 cases it held out, not on the other read-out folds' 2" in "\n".join(lines)
