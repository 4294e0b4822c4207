"""Thresholds -> checks that pass, or fail with the measured value, the limit and the baseline in the message.

`Thresholds` holds a test's limits (options, ini keys or its marker); `evaluate` holds what a test measured against
them: its metrics (limits from results.METRICS' `threshold` field) and each task's outcome beside the baseline
precision's (accuracy drop, perplexity increase)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

from .results import METRICS


@dataclass(frozen=True)
class Thresholds:
    """Limits a test is held to; None means unchecked."""

    max_accuracy_drop: float | None = None
    max_memory_mb: float | None = None
    max_footprint_mb: float | None = None
    min_tokens_per_s: float | None = None
    max_ms_per_token: float | None = None
    max_perplexity_increase: float | None = None  # percent, for tasks without accuracy (perplexity)
    max_kl: float | None = None  # mean KL divergence from the baseline precision, nats
    min_top1_agreement: float | None = None  # percent of positions whose top token matches the baseline's
    drop_test: str | None = None  # "point" (None) or "significant": when an accuracy drop fails

    def updated(self, **overrides) -> Thresholds:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown threshold(s) {sorted(unknown)}; valid: {sorted(known)}")
        return dataclasses.replace(self, **{k: threshold_value(k, v) for k, v in overrides.items()})


# Thresholds that are percentages (points) cannot exceed 100.
PERCENT_THRESHOLDS = ("max_accuracy_drop", "min_top1_agreement")


def non_negative_number(name: str, value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:  # a NaN limit compares False and would switch its check off
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


DROP_TESTS = ("point", "significant")


def parse_drop_test(value) -> str | None:
    """'point' (the drop's point estimate is held to the limit) or 'significant' (it fails only when the paired
    interval excludes zero too); None when unset."""
    if value in (None, ""):
        return None
    name = str(value).strip().lower()
    if name not in DROP_TESTS:
        raise ValueError(f"unknown drop test {value!r}; valid: {', '.join(DROP_TESTS)}")
    return name


def threshold_value(name: str, value, label: str | None = None):
    """A threshold from a marker keyword (`name`) or an option (`label`): a finite number >= 0, at most 100 for
    the ones in percentage points; ValueError naming it otherwise."""
    if name == "drop_test":
        return parse_drop_test(value)
    number = non_negative_number(label or name, value)
    if number is not None and name in PERCENT_THRESHOLDS and number > 100:
        raise ValueError(f"{label or name} is in percentage points (0-100), got {value!r}")
    return number


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: float
    limit: float
    message: str
    baseline: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def accuracy_drop(task: str, precision: str, accuracy: float, baseline_precision: str, baseline_accuracy: float,
                  max_drop_pt: float, paired=None, drop_test: str | None = None) -> Check:
    """Accuracies are fractions; the drop and its limit are in percentage points. With `paired` (a
    stats.PairedComparison) the message gives the interval and McNemar's p; `drop_test="significant"` fails only a
    drop that is over the limit and whose interval excludes zero."""
    drop = (baseline_accuracy - accuracy) * 100
    over = drop > max_drop_pt + 1e-9
    passed = not over
    message = (f"{task}: {precision} accuracy {accuracy * 100:.1f}% vs {baseline_precision} {baseline_accuracy * 100:.1f}%: "
               f"drop {drop:.1f} pt {'>' if over else '<='} allowed {max_drop_pt:.1f} pt")
    if paired is not None:
        message += (f" (paired {paired.confidence * 100:.0f}% CI [{paired.ci_low_pt:.1f}, {paired.ci_high_pt:.1f}] pt, "
                    f"McNemar p={paired.p_value:.3g}, {paired.n} items: {paired.verdict})")
    if paired is not None:
        from .stats import power_note  # numpy: not imported by the plugin at start-up

        note = power_note(paired.n, (paired.flips_to_wrong + paired.flips_to_right) / paired.n, max_drop_pt)
        message += f"; {note}" if note else ""
    if drop_test == "significant" and over:
        if paired is None:
            message += "; no per-item results to test significance: judged on the point estimate"
        elif not paired.significant:
            passed = True
            message += "; not failed: the drop is not significant (drop test 'significant')"
    return Check(f"accuracy_drop[{task}]", passed, drop, max_drop_pt, message, baseline_accuracy * 100)


def clearly_above_chance(metrics: dict) -> bool:
    """False when a task reports its chance level and the accuracy is within two standard errors of it: a drop
    from there measures noise, not damage (SmolLM2-135M on MMLU). True when the task reports no chance level."""
    if "chance" not in metrics or "acc" not in metrics:
        return True
    return metrics["acc"] - metrics["chance"] > 2 * metrics.get("acc_stderr", 0.0)


def at_chance(task: str, precision: str, accuracy: float, baseline_precision: str, baseline: dict,
              max_drop_pt: float) -> Check:
    """The accuracy-drop check of a task whose baseline is at chance: recorded, not gated."""
    drop = (baseline["acc"] - accuracy) * 100
    message = (f"{task}: not gated: {baseline_precision} accuracy {baseline['acc'] * 100:.1f}% is at chance "
               f"({baseline['chance'] * 100:.1f}%, within two standard errors of {baseline.get('acc_stderr', 0) * 100:.1f} pt); "
               f"{precision} {accuracy * 100:.1f}%, drop {drop:.1f} pt recorded")
    return Check(f"accuracy_drop[{task}]", True, drop, max_drop_pt, message, baseline["acc"] * 100)


def perplexity_increase(task: str, precision: str, value: float, baseline_precision: str, baseline_value: float,
                        max_increase_pct: float, metric: str = "word_perplexity") -> Check:
    """Perplexity may rise at most `max_increase_pct` percent over the baseline's."""
    increase = (value / baseline_value - 1) * 100
    passed = increase <= max_increase_pct + 1e-9
    message = (f"{task}: {precision} {metric} {value:.3f} vs {baseline_precision} {baseline_value:.3f}: "
               f"{increase:+.2f}% {'<=' if passed else '>'} allowed {max_increase_pct:.2f}%")
    return Check(f"perplexity_increase[{task}]", passed, increase, max_increase_pct, message, baseline_value)


def at_most(metric: str, value: float, limit: float, unit: str, fmt: str = ".1f") -> Check:
    passed = value <= limit
    message = f"{metric} {value:{fmt}} {unit} {'<=' if passed else '>'} limit {limit:{fmt}} {unit}"
    return Check(metric, passed, value, limit, message)


def at_least(metric: str, value: float, limit: float, unit: str, fmt: str = ".1f") -> Check:
    passed = value >= limit
    message = f"{metric} {value:{fmt}} {unit} {'>=' if passed else '<'} minimum {limit:{fmt}} {unit}"
    return Check(metric, passed, value, limit, message)


@dataclass
class TaskOutcome:
    """One task's result on a case (a tasks.TaskResult, accuracy a fraction), and where a threshold compares it with
    the baseline precision, the baseline's result on the same items and their paired comparison."""

    result: Any
    baseline: Any = None
    baseline_precision: str | None = None
    paired: Any = None  # stats.PairedComparison, when both have per-item outcomes


def evaluate(thresholds: Thresholds, precision: str, metrics: dict, outcomes: dict[str, TaskOutcome]) -> list[Check]:
    """Every check that applies to what a test measured; metrics it did not measure are not checked. A task's
    drop is checked where its outcome has a baseline: not gated when the baseline is at chance."""
    checks = []
    for task, outcome in outcomes.items():
        result, base = outcome.result, outcome.baseline
        if base is None:
            continue
        if thresholds.max_accuracy_drop is not None and result.accuracy is not None and base.accuracy is not None:
            if not clearly_above_chance(base.metrics):
                checks.append(at_chance(task, precision, result.accuracy, outcome.baseline_precision, base.metrics,
                                        thresholds.max_accuracy_drop))
            else:
                checks.append(accuracy_drop(task, precision, result.accuracy, outcome.baseline_precision,
                                            base.accuracy, thresholds.max_accuracy_drop, outcome.paired,
                                            thresholds.drop_test))
    for task, outcome in outcomes.items():
        measured, base = outcome.result.metrics, outcome.baseline.metrics if outcome.baseline else {}
        if thresholds.max_perplexity_increase is not None and "word_perplexity" in measured and \
                "word_perplexity" in base:
            checks.append(perplexity_increase(task, precision, measured["word_perplexity"],
                                              outcome.baseline_precision, base["word_perplexity"],
                                              thresholds.max_perplexity_increase))
    # Budgets; fidelity is against the baseline precision (the baseline itself scores 0 and 100%).
    for metric, spec in METRICS.items():
        limit = getattr(thresholds, spec.threshold) if spec.threshold else None
        if limit is not None and metric in metrics:
            check = at_least if spec.higher_is_better else at_most
            checks.append(check(metric, metrics[metric], limit, spec.unit, fmt=".3g" if metric == "kl_mean" else ".1f"))
    return checks
