"""Thresholds -> checks that pass, or fail with the measured value, the limit and the baseline in the message."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .results import METRICS
from .settings import Thresholds
from .stats import power_note


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


def evaluate(thresholds: Thresholds, metrics: dict, precision: str, accuracies: dict[str, float],
             baseline_precision: str, baseline_accuracies: dict[str, float], task_metrics: dict | None = None,
             baseline_task_metrics: dict | None = None, paired: dict | None = None) -> list[Check]:
    """Every check that applies to what a test measured; metrics it did not measure are not checked.

    `task_metrics`/`baseline_task_metrics` (task -> its result's metrics) let a baseline at chance go ungated and
    give perplexity tasks their check; `paired` (task -> stats.PairedComparison) the accuracy drop its interval."""
    checks = []
    task_metrics, baseline_task_metrics = task_metrics or {}, baseline_task_metrics or {}
    if thresholds.max_accuracy_drop is not None and precision != baseline_precision:
        for task, accuracy in accuracies.items():
            if task in baseline_accuracies and not clearly_above_chance(baseline_task_metrics.get(task, {})):
                checks.append(at_chance(task, precision, accuracy, baseline_precision, baseline_task_metrics[task],
                                        thresholds.max_accuracy_drop))
            elif task in baseline_accuracies:
                checks.append(accuracy_drop(task, precision, accuracy, baseline_precision, baseline_accuracies[task],
                                            thresholds.max_accuracy_drop, (paired or {}).get(task),
                                            thresholds.drop_test))
    if thresholds.max_perplexity_increase is not None and precision != baseline_precision:
        for task, measured in task_metrics.items():
            base = baseline_task_metrics.get(task, {})
            if "word_perplexity" in measured and "word_perplexity" in base:
                checks.append(perplexity_increase(task, precision, measured["word_perplexity"], baseline_precision,
                                                  base["word_perplexity"], thresholds.max_perplexity_increase))
    # Budgets; fidelity is against the baseline precision (the baseline itself scores 0 and 100%).
    limits = {"peak_mem_mb": thresholds.max_memory_mb, "footprint_mb": thresholds.max_footprint_mb,
              "ms_per_token": thresholds.max_ms_per_token, "tokens_per_s": thresholds.min_tokens_per_s,
              "kl_mean": thresholds.max_kl, "top1_agreement_pct": thresholds.min_top1_agreement}
    for metric, limit in limits.items():
        if limit is not None and metric in metrics:
            spec = METRICS[metric]
            check = at_least if spec.higher_is_better else at_most
            checks.append(check(metric, metrics[metric], limit, spec.unit, fmt=".3g" if metric == "kl_mean" else ".1f"))
    return checks
