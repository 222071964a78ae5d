"""The held-out score that picks the checkpoint and the read-out sizes must not let repairs pay for breakage."""
from rnca_nnunet.metrics import mean_metrics
from rnca_nnunet.validation import ValidationResult


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


def test_without_intact_cases_the_score_is_the_share_of_errors_left():
    assert result([2, 4], [1, 2]).newly_broken_share == 0.0
    assert abs(result([2, 4], [1, 2]).score - (1.5 + 1) / (3 + 1)) < 1e-9
