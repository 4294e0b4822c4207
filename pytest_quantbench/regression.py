"""Regression gate: compare this run's records with a stored baseline run, metric by metric, within tolerances.

A tolerance is relative (`ms_per_token:5%`) or absolute in the metric's own unit (`accuracy:1pt`, `peak_mem_mb:50`).
Only a change for the worse beyond the tolerance is a regression; for timings it must also exceed the measured spread
(IQR) of both runs, so noise alone never fails a build. Improvements are reported, never failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .results import Record, load_report
from .thresholds import Check

# Which direction is better for each metric the gate knows; accuracy is per task (accuracy:<task> or all tasks).
HIGHER_IS_BETTER = {"tokens_per_s", "accuracy"}
LOWER_IS_BETTER = {"ms_per_token", "latency_ms", "ttft_ms", "peak_mem_mb", "footprint_mb", "load_s"}
SPREAD = {"ms_per_token": "ms_per_token_iqr", "latency_ms": "latency_iqr_ms"}


@dataclass(frozen=True)
class Tolerance:
    value: float
    relative: bool  # True: a fraction of the baseline value; False: absolute, in the metric's unit (pt for accuracy)


def parse_tolerances(spec: str) -> dict[str, Tolerance]:
    """'ms_per_token:5%,accuracy:1pt,peak_mem_mb:50' -> {metric: Tolerance}; ValueError on anything else."""
    tolerances = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        metric, sep, amount = part.partition(":")
        metric, amount = metric.strip(), amount.strip().lower()
        if not sep or not amount:
            raise ValueError(f"tolerance {part!r}: expected METRIC:AMOUNT such as ms_per_token:5% or accuracy:1pt")
        if metric not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
            valid = ", ".join(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER))
            raise ValueError(f"tolerance {part!r}: unknown metric {metric!r}; valid: {valid}")
        relative = amount.endswith("%")
        number = amount.removesuffix("%").removesuffix("pt")
        try:
            value = float(number) / (100 if relative else 1)
        except ValueError:
            raise ValueError(f"tolerance {part!r}: {amount!r} is not a number, a percentage or points") from None
        if value < 0:
            raise ValueError(f"tolerance {part!r} must not be negative")
        tolerances[metric] = Tolerance(value, relative)
    return tolerances


def load_baseline(path: Path) -> dict[str, Record]:
    """Measured records of a saved run by test id; ValueError naming the file when it is not a readable report."""
    data = load_report(path)
    try:
        records = [Record.from_dict(r) for r in data["records"]]
    except TypeError as error:
        raise ValueError(f"{path}: malformed record ({error})") from None
    return {r.test: r for r in records if r.outcome != "skipped"}


def device_mismatch(base: Record, new: Record, path: Path) -> str | None:
    """Why two records must not be compared (measured on different devices), or None."""
    if (base.device_name or base.device) == (new.device_name or new.device):
        return None
    return (f"baseline {path} measured {new.test} on {base.device_name or base.device}, this run is on "
            f"{new.device_name or new.device}: refusing to compare (--qb-force-baseline, or --force for quantbench compare, compares anyway)")


def _values(record: Record, metric: str) -> dict[str, float]:
    if metric == "accuracy":
        return {f"accuracy[{task}]": value for task, value in record.accuracy_pct.items()}
    return {metric: record.metrics[metric]} if metric in record.metrics else {}


def compare(base: Record, new: Record, tolerances: dict[str, Tolerance]) -> list[Check]:
    """One check per metric both records measured; `passed` is False only for a regression beyond tolerance."""
    checks = []
    for metric, tolerance in tolerances.items():
        base_values, new_values = _values(base, metric), _values(new, metric)
        for name, before in base_values.items():
            if name not in new_values:
                continue
            after = new_values[name]
            worse = (before - after) if metric in HIGHER_IS_BETTER else (after - before)
            allowed = tolerance.value * abs(before) if tolerance.relative else tolerance.value
            noise = base.metrics.get(SPREAD.get(metric, ""), 0.0) + new.metrics.get(SPREAD.get(metric, ""), 0.0)
            regressed = worse > allowed and worse > noise
            unit = "%" if tolerance.relative else ("pt" if metric == "accuracy" else "")
            shown = tolerance.value * 100 if tolerance.relative else tolerance.value
            change = (after - before) / before * 100 if before else 0.0
            verdict = "regression" if regressed else ("improvement" if worse < 0 else "within tolerance")
            message = (f"{name} {after:.2f} vs baseline {before:.2f} ({change:+.1f}%): {verdict} "
                       f"(tolerance {shown:g}{unit}{f', noise {noise:.2f}' if noise else ''})")
            checks.append(Check(f"regression[{name}]", not regressed, after, before + allowed if metric not in
                                HIGHER_IS_BETTER else before - allowed, message, before))
    return checks
