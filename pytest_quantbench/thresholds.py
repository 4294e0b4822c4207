"""Thresholds -> checks that pass, or fail with the measured value, the limit and the baseline in the message."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .settings import Thresholds


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
                  max_drop_pt: float) -> Check:
    """Accuracies are fractions; the drop and its limit are in percentage points."""
    drop = (baseline_accuracy - accuracy) * 100
    passed = drop <= max_drop_pt + 1e-9
    message = (f"{task}: {precision} accuracy {accuracy * 100:.1f}% vs {baseline_precision} {baseline_accuracy * 100:.1f}%: "
               f"drop {drop:.1f} pt {'<=' if passed else '>'} allowed {max_drop_pt:.1f} pt")
    return Check(f"accuracy_drop[{task}]", passed, drop, max_drop_pt, message, baseline_accuracy * 100)


def at_most(metric: str, value: float, limit: float, unit: str) -> Check:
    passed = value <= limit
    message = f"{metric} {value:.1f} {unit} {'<=' if passed else '>'} limit {limit:.1f} {unit}"
    return Check(metric, passed, value, limit, message)


def at_least(metric: str, value: float, limit: float, unit: str) -> Check:
    passed = value >= limit
    message = f"{metric} {value:.1f} {unit} {'>=' if passed else '<'} minimum {limit:.1f} {unit}"
    return Check(metric, passed, value, limit, message)


def evaluate(thresholds: Thresholds, metrics: dict, precision: str, accuracies: dict[str, float],
             baseline_precision: str, baseline_accuracies: dict[str, float]) -> list[Check]:
    """Every check that applies to what a test measured; metrics it did not measure are not checked."""
    checks = []
    if thresholds.max_accuracy_drop is not None and precision != baseline_precision:
        for task, accuracy in accuracies.items():
            if task in baseline_accuracies:
                checks.append(accuracy_drop(task, precision, accuracy, baseline_precision, baseline_accuracies[task],
                                            thresholds.max_accuracy_drop))
    limits = [
        ("peak_mem_mb", thresholds.max_memory_mb, at_most, "MB"),
        ("footprint_mb", thresholds.max_footprint_mb, at_most, "MB"),
        ("ms_per_token", thresholds.max_ms_per_token, at_most, "ms"),
        ("tokens_per_s", thresholds.min_tokens_per_s, at_least, "tokens/s"),
    ]
    for metric, limit, check, unit in limits:
        if limit is not None and metric in metrics:
            checks.append(check(metric, metrics[metric], limit, unit))
    return checks
