"""The held-out cases and the score that pick the checkpoint and the read-out sizes: they must span the
bases, and the score must not let repairs pay for breakage."""
from rnca_nnunet.metrics import mean_metrics
from rnca_nnunet.validation import (AUTOMATIC_FOLDS, ValidationResult, read_out_fold_count, read_out_folds,
                                   split_cases)


def result(before_errors, after_errors):
    """One class ('wall'), one loop-error count per case, Dice the same everywhere."""
    metrics = lambda error: {"wall": {"dice": 0.9, "beta0_error": 0.0, "beta1_error": float(error),  # noqa: E731
                                      "broken": float(error > 0)}}
    per_case = [{"case": str(i), "before": metrics(b), "after": metrics(a)}
                for i, (b, a) in enumerate(zip(before_errors, after_errors))]
    return ValidationResult(0, mean_metrics([c["before"] for c in per_case]),
                            mean_metrics([c["after"] for c in per_case]), per_case)


def test_a_checkpoint_that_breaks_an_intact_case_loses_to_one_that_repairs_less():
    before = [2, 2, 0, 0]  # two broken walls, two intact ones
    repairs_both_breaks_one = result(before, [0, 0, 1, 0])  # fewer errors on average ...
    repairs_one_breaks_none = result(before, [0, 2, 0, 0])
    assert repairs_both_breaks_one.newly_broken_share == 0.5 and repairs_one_breaks_none.newly_broken_share == 0.0
    mean_error = lambda r: r.after["wall"]["beta1_error"]  # noqa: E731
    assert mean_error(repairs_both_breaks_one) < mean_error(repairs_one_breaks_none), "... so mean errors prefer it"
    assert repairs_one_breaks_none.score < repairs_both_breaks_one.score


def test_the_read_out_decision_keeps_nnunets_topology_where_repairs_barely_pay_for_breakage():
    """TopoMortar's noisy labels, seed 0, 10 held-out walls: the guard off repaired three one-loop walls and
    broke one of seven intact ones, and on the val walls then broke 5 of 15 intact ones; guard 0 changed no
    loop. The checkpoint score (harm once) prefers the guard off; the decision (harm twice) must keep guard 0."""
    before, after = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    guard_off, guard_0 = result(before, after), result(before, before)
    assert guard_off.score < guard_0.score, "with harm charged once the repairs win ..."
    assert guard_0.decision_score(["wall"]) < guard_off.decision_score(["wall"]), "... with harm charged twice not"
    worse_bases = [2, 2, 2, 0, 0, 0, 0, 0, 0, 0]  # the same repairs of two loops each still win
    unchanged = result(worse_bases, worse_bases)
    assert result(worse_bases, after).decision_score(["wall"]) < unchanged.decision_score(["wall"])


def test_without_intact_cases_the_score_is_the_share_of_errors_left():
    assert result([2, 4], [1, 2]).newly_broken_share == 0.0
    assert abs(result([2, 4], [1, 2]).score - (1.5 + 1) / (3 + 1)) < 1e-9


def test_held_out_cases_span_the_bases_from_worst_to_best_when_errors_are_given():
    errors = [(7 * i) % 50 for i in range(50)]  # every count 0..49 once, in shuffled order
    cases = [f"case{i}" for i in range(50)]
    for seed in range(5):
        train, held = split_cases(cases, 0.2, seed, errors)
        counts = sorted(errors[cases.index(c)] for c in held)
        assert len(held) == 10 and sorted(train + held) == sorted(cases)
        assert all(5 * k <= count < 5 * (k + 1) for k, count in enumerate(counts)), counts
    random_draws = [sorted(errors[cases.index(c)] for c in split_cases(cases, 0.2, seed)[1]) for seed in range(20)]
    assert any(draw[-1] < 45 or draw[0] >= 5 for draw in random_draws), "a random draw can miss the extremes"
    assert split_cases(cases, 0.2, 3, errors) == split_cases(cases, 0.2, 3, errors)


def test_read_out_folds_hold_out_every_case_once_and_keep_the_shipped_rules_split():
    errors = [(7 * i) % 50 for i in range(50)]
    cases = [f"case{i}" for i in range(50)]
    for folds, counts in ((5, None), (3, errors), (4, None)):
        splits = read_out_folds(cases, 0.2, 1, folds, counts)
        assert splits[0] == split_cases(cases, 0.2, 1, counts), "fold 1 is the shipped rule's split"
        assert len(splits) == folds
        held = [case for _, held_out in splits for case in held_out]
        assert sorted(held) == sorted(cases), "every case held out exactly once"
        assert all(sorted(train + held_out) == sorted(cases) for train, held_out in splits)
    assert read_out_folds(cases, 0.2, 1, 1) == [split_cases(cases, 0.2, 1)]
    assert read_out_folds(["only"], 0.2, 0, 5) == [(["only"], [])], "no fold trains on nothing"


def test_every_cv_case_chooses_the_read_out_when_many_are_already_right():
    """Unset, read_out_folds follows the CV cases: TopoMortar's noisy labels (33 of 50 walls intact) get every
    case choosing, the demo nnU-Net base (1 of 50) the held-out cases; a preset's number is kept as it is."""
    noisy, demo = [0] * 33 + [2] * 17, [0] + [30] * 49
    assert read_out_fold_count(None, noisy)[0] == AUTOMATIC_FOLDS > 1
    assert read_out_fold_count(None, demo)[0] == 1
    assert read_out_fold_count(None, [0] * 5 + [1] * 15)[0] == AUTOMATIC_FOLDS, "a quarter intact is enough"
    assert read_out_fold_count(None, [0] * 4 + [1] * 16)[0] == 1
    assert read_out_fold_count(None, [])[0] == 1
    assert read_out_fold_count(1, noisy)[0] == 1 and read_out_fold_count(3, demo)[0] == 3
    _, line = read_out_fold_count(None, noisy)
    assert "33 of 50 CV cases (66%)" in line and "automatic" in line
