"""Paired statistics and pass@k against hand-computed values."""

from __future__ import annotations

from math import comb

import pytest

from pytest_quantbench.stats import compare_paired, mcnemar_exact, paired_bootstrap, pass_at_k
from pytest_quantbench.tasks import TaskResult
from pytest_quantbench.thresholds import TaskOutcome, Thresholds, accuracy_drop, evaluate, parse_drop_test


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (20, 0, 1, 0.0),
    (20, 20, 1, 1.0),
    (10, 5, 1, 0.5),
    (3, 1, 1, 1 / 3),
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (20, 1, 10, 0.5),  # 1 - C(19,10)/C(20,10) = 1 - 10/20
    (20, 3, 10, 1 - 720 / 6840),  # 1 - (10*9*8)/(20*19*18)
    (20, 12, 10, 1.0),  # fewer than k failures: every draw of 10 contains a pass
])
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_form():
    for n in (5, 20, 100):
        for c in range(n + 1):
            for k in (1, 2, 5):
                direct = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(direct, abs=1e-9)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="at least 10 samples"):
        pass_at_k(5, 1, 10)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


@pytest.mark.parametrize(("b", "c", "expected"), [
    (10, 2, 2 * (1 + 12 + 66) / 4096),  # 0.0386
    (0, 0, 1.0),
    (5, 5, 1.0),
    (1, 0, 1.0),
    (6, 0, 2 / 64),
    (3, 1, 2 * 5 / 16),
])
def test_mcnemar_exact_hand_values(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected)
    assert mcnemar_exact(c, b) == pytest.approx(expected)  # two-sided: symmetric


def test_mcnemar_b10_c2_is_0_0386():
    assert round(mcnemar_exact(10, 2), 4) == 0.0386


def test_bootstrap_interval_matches_the_exact_resampling_distribution():
    # Four items, the candidate lost item 0 only: a resample's drop is (times item 0 is drawn) / 4, and that count
    # is Binomial(4, 1/4): P = .316, .422, .211, .047, .004 for 0..4. The 2.5% quantile is 0; the 97.5% quantile
    # is 3/4 (the CDF passes 0.975 between 2 (0.949) and 3 (0.996)).
    low, high = paired_bootstrap([1, 1, 0, 0], [0, 1, 0, 0])
    assert (low, high) == (0.0, 0.75)


def test_bootstrap_is_deterministic_and_zero_for_identical_results():
    base = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    assert paired_bootstrap(base, base) == (0.0, 0.0)
    cand = [0, 0, 1, 1, 0, 1, 0, 0, 1, 0]
    assert paired_bootstrap(base, cand) == paired_bootstrap(base, cand)


def test_one_point_drop_on_100_questions_is_not_significant():
    base = [True] * 60 + [False] * 40
    cand = [False] + [True] * 59 + [False] * 40  # one flip right -> wrong
    result = compare_paired(base, cand)
    assert result.drop_pt == pytest.approx(1.0)
    assert result.ci_low_pt <= 0 <= result.ci_high_pt
    assert (result.flips_to_wrong, result.flips_to_right) == (1, 0)
    assert result.p_value == 1.0
    assert not result.significant and result.verdict == "not significant"


def test_twenty_point_drop_is_significant():
    base = [True] * 60 + [False] * 40
    cand = [False] * 20 + [True] * 40 + [False] * 40
    result = compare_paired(base, cand)
    assert result.drop_pt == pytest.approx(20.0)
    assert result.ci_low_pt > 0
    assert result.p_value == pytest.approx(2 / 2**20)
    assert result.verdict == "significant drop"


def test_scores_drive_the_drop_when_given():
    # pass@1 per problem under sampling: 0.5 and 1.0 vs 0.25 and 1.0; flips from the right/wrong lists
    result = compare_paired([True, True], [False, True], [0.5, 1.0], [0.25, 1.0])
    assert result.drop_pt == pytest.approx(12.5)
    assert (result.flips_to_wrong, result.flips_to_right) == (1, 0)


def test_accuracy_drop_modes():
    base = [True] * 60 + [False] * 40
    cand = [False] + [True] * 59 + [False] * 40
    paired = compare_paired(base, cand)
    point = accuracy_drop("arc", "nf4", 0.59, "fp32", 0.60, 0.5, paired)
    assert not point.passed
    assert "not significant" in point.message and "McNemar p=1" in point.message
    lenient = accuracy_drop("arc", "nf4", 0.59, "fp32", 0.60, 0.5, paired, "significant")
    assert lenient.passed and "not failed: the drop is not significant" in lenient.message
    big = compare_paired(base, [False] * 20 + [True] * 40 + [False] * 40)
    assert not accuracy_drop("arc", "nf4", 0.40, "fp32", 0.60, 10.0, big, "significant").passed
    # without per-item results the significant mode falls back to the point estimate, and says so
    fallback = accuracy_drop("arc", "nf4", 0.40, "fp32", 0.60, 10.0, None, "significant")
    assert not fallback.passed and "point estimate" in fallback.message


def test_thresholds_evaluate_passes_paired_results_and_fidelity_limits():
    thresholds = Thresholds(max_accuracy_drop=0.5, drop_test="significant", max_kl=0.01, min_top1_agreement=90)
    paired = compare_paired([True] * 60 + [False] * 40, [False] + [True] * 59 + [False] * 40)
    outcome = TaskOutcome(TaskResult("arc", 0.59, 100), TaskResult("arc", 0.60, 100), "fp32", paired)
    checks = evaluate(thresholds, "nf4", {"kl_mean": 0.02, "top1_agreement_pct": 95.0}, {"arc": outcome})
    by_name = {c.name: c for c in checks}
    assert by_name["accuracy_drop[arc]"].passed
    assert not by_name["kl_mean"].passed and "0.02 nats > limit 0.01 nats" in by_name["kl_mean"].message
    assert by_name["top1_agreement_pct"].passed


def test_drop_test_parser():
    assert parse_drop_test(None) is None
    assert parse_drop_test(" Significant ") == "significant"
    with pytest.raises(ValueError, match="valid: point, significant"):
        parse_drop_test("bonferroni")
    assert Thresholds().updated(drop_test="point", max_kl="0.5").max_kl == 0.5
