"""Regression gate: compare this run's records with a stored baseline, metric by metric.

A tolerance is relative (`ms_per_token:5%`) or absolute in the metric's own unit (`accuracy:1pt`, `peak_mem_mb:50`).
A change for the worse fails only when it exceeds the tolerance and the measured noise of both runs:

- within a run, the spread (IQR) of the timed repeats of each side, for every metric that has one (results.METRICS);
- between runs, the documented default of the device and decode mode (results.NOISE_DEFAULTS) while the baseline
  has fewer than MIN_HISTORY runs; a saved baseline keeps each metric of its last HISTORY_RUNS runs, and from
  MIN_HISTORY runs on the gate allows what a new run of the same code reaches with probability 1 - ALPHA: a
  one-sided prediction bound, Student's t on the logarithms, with the runs' variance pooled with the default's
  (worth PRIOR_DF degrees of freedom). Pooled, a few steady runs tighten the gate gradually instead of three runs'
  t quantile (22 at two degrees of freedom) making it blind, and a machine noisier than the default widens it.

Accuracy is compared item by item: the baseline keeps each item's outcome, and a drop fails only when it exceeds
the tolerance and the paired interval excludes zero (the test the in-run accuracy check uses). Every accuracy check
says when its item count is too small to detect the drop it is asked to catch. Improvements never fail.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from .results import (
    GATED_METRICS,
    HISTORY_RUNS,
    METRICS,
    MIN_HISTORY,
    NOISE_DEFAULTS,
    Record,
    load_report,
    write_atomic,
)
from .thresholds import Check

ALPHA = 0.001  # false-alarm probability per metric and test once the baseline's own spread is known
PRIOR_DF = 2  # degrees of freedom the device default counts for, pooled with a baseline's runs


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
        if metric not in GATED_METRICS:
            raise ValueError(f"tolerance {part!r}: unknown metric {metric!r}; valid: {', '.join(sorted(GATED_METRICS))}")
        relative = amount.endswith("%")
        number = amount.removesuffix("%").removesuffix("pt")
        try:
            value = float(number) / (100 if relative else 1)
        except ValueError:
            raise ValueError(f"tolerance {part!r}: {amount!r} is not a number, a percentage or points") from None
        if not math.isfinite(value):
            raise ValueError(f"tolerance {part!r}: must be a finite number (nan or inf would switch the gate off)")
        if value < 0:
            raise ValueError(f"tolerance {part!r} must not be negative")
        if metric == "accuracy" and relative:
            raise ValueError(f"tolerance {part!r}: accuracy tolerances are in points (accuracy:1pt)")
        tolerances[metric] = Tolerance(value, relative)
    return tolerances


@dataclass
class Baseline:
    """A saved run: its records by test id, and per test the history of each metric over its last runs."""

    path: Path
    records: dict[str, Record]
    history: dict[str, dict[str, list[float]]]
    versions: dict = field(default_factory=dict)  # the library versions of the run it was saved from


def load_baseline(path: Path) -> Baseline:
    """A saved run; ValueError naming the file when it is not a readable report."""
    data = load_report(path)
    try:
        records = [Record.from_dict(r) for r in data["records"]]
    except (TypeError, AttributeError) as error:
        raise ValueError(f"{path}: malformed record ({error})") from None
    history = data.get("history") or {}
    if not isinstance(history, dict) or not all(isinstance(h, dict) for h in history.values()):
        raise ValueError(f"{path}: malformed history (expected test -> metric -> list of numbers)")
    versions = (data.get("environment") or {}).get("versions")
    return Baseline(Path(path), {r.test: r for r in records if r.outcome not in ("skipped", "crashed")}, history,
                    versions if isinstance(versions, dict) else {})


def device_mismatch(base: Record, new: Record, path: Path) -> str | None:
    """Why two records must not be compared (measured on different devices), or None."""
    if (base.device_name or base.device) == (new.device_name or new.device):
        return None
    return (f"baseline {path} measured {new.test} on {base.device_name or base.device}, this run is on "
            f"{new.device_name or new.device}: refusing to compare (--qb-force-baseline, or --force for quantbench "
            "compare, compares anyway)")


def weights_identity(record: Record) -> dict | None:
    """What identifies the weights a record measured (the source's kind and its digest, revision or config), or None
    when the record does not say. A local directory's path is not part of it: the same weights move between machines."""
    source = (record.model_info or {}).get("source")
    if not isinstance(source, dict) or not source.get("kind"):
        return None
    keys = ("kind", "sha256_16") if source["kind"] == "dir" else \
        ("kind", "id", "sha256", "sha256_16", "revision", "preset", "config")
    return {k: source[k] for k in keys if source.get(k) not in (None, "")}


def source_mismatch(base: Record, new: Record, path: Path) -> str | None:
    """Why two records of one test id measured different weights (the default alias loads the hub's weights online
    and the embedded GGUF offline; a hub revision moved; another synthetic config), or None. Where a side records
    no digest or revision (a hub id loaded online), only what both record is held against each other."""
    before, after = weights_identity(base), weights_identity(new)
    if before is None or after is None or before == after:
        return None
    if before["kind"] == after["kind"] and all(before[k] == after[k] for k in set(before) & set(after)):
        return None  # what both say agrees (a hub id loaded online records no revision)
    describe = lambda identity: ", ".join(f"{k} {str(v)[:16]}" for k, v in identity.items() if k != "config")
    return (f"baseline {path} measured {new.test} on other weights ({describe(before)}) than this run "
            f"({describe(after)}): refusing to compare (--qb-force-baseline, or --force for quantbench compare, "
            "compares anyway)")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def between_run_noise(history: list[float], device: str, mode: str, kind: str,
                      path: tuple[float, str] | None = None) -> tuple[float, str]:
    """Relative worsening a rerun of the same code may show, and where that figure comes from. `path`: an unsteady
    kernel path's noise (unsteady_path), which replaces a smaller default for the timings."""
    default = NOISE_DEFAULTS.get((device, mode), NOISE_DEFAULTS[("cuda", "eager")]).get(kind, 0.0)
    label = f"{device} {mode} default"
    if path is not None and kind in ("decode", "timing") and path[0] > default:
        default, label = path[0], f"{device} {mode} default for {path[1]}"
    values = [v for v in history if v > 0]
    if len(values) < MIN_HISTORY or not default:
        runs = f"{len(values)} run" + ("" if len(values) == 1 else "s")
        return default, f"{label} while the baseline has {runs}"
    from scipy.stats import t

    logs = [math.log(v) for v in values]
    n = len(logs)
    # The default read as the prediction bound of one baseline run (a difference of two runs) at PRIOR_DF
    prior_variance = (math.log1p(default) / (t.ppf(1 - ALPHA, PRIOR_DF) * math.sqrt(2))) ** 2
    df = PRIOR_DF + n - 1
    pooled = math.sqrt((PRIOR_DF * prior_variance + (n - 1) * statistics.variance(logs)) / df)
    bound = t.ppf(1 - ALPHA, df) * pooled * math.sqrt(1 + 1 / n)
    return math.expm1(bound), f"spread of {n} baseline runs pooled with the {label}"


def _compare_metric(metric: str, base: Record, new: Record, tolerance: Tolerance, history: list[float]) -> Check:
    spec = METRICS[metric]
    before, after = base.metrics[metric], new.metrics[metric]
    if len(history) >= MIN_HISTORY:  # the baseline's typical value, not its last draw
        before = statistics.median(history)
    worse = (before - after) if spec.higher_is_better else (after - before)
    allowed = tolerance.value * abs(before) if tolerance.relative else tolerance.value
    within = sum(_number(r.metrics.get(spec.spread)) or 0.0 for r in (base, new)) if spec.spread else 0.0
    relative, source = between_run_noise(history, new.device, new.mode, spec.noise, unsteady_path(base, new))
    # The noise is a factor: a rerun as slow as (1 + r) times the baseline's ms/token has 1 / (1 + r) of its tokens/s.
    between = abs(before) * (relative / (1 + relative) if spec.higher_is_better else relative)
    regressed = worse > max(allowed, within, between)
    change = (after - before) / before * 100 if before else 0.0
    verdict = "regression" if regressed else ("improvement" if worse < 0 else "within tolerance and noise")
    shown = f"{tolerance.value * 100:g}%" if tolerance.relative else f"{tolerance.value:g} {spec.unit}"
    noise = [f"within-run {within:.3g} {spec.unit}"] if spec.spread else []
    if spec.noise != "exact":
        noise.append(f"between-run x{1 + relative:.3g} = {between:.3g} {spec.unit} ({source})")
    message = (f"{metric} {after:.2f} vs baseline {before:.2f} ({change:+.1f}%): {verdict} "
               f"(tolerance {shown}{'; noise ' + ', '.join(noise) if noise else ''})")
    limit = before + max(allowed, within, between) * (-1 if spec.higher_is_better else 1)
    return Check(f"regression[{metric}]", not regressed, after, limit, message, before)


def _outcomes(record: Record, task: str) -> tuple[list[bool], list[float]]:
    details = record.task_details.get(task, {})
    outcomes = details.get("outcomes")
    if not isinstance(outcomes, str) or set(outcomes) - {"0", "1"}:
        return [], []
    scores = details.get("scores")
    scores = [float(s) for s in scores] if isinstance(scores, list) and len(scores) == len(outcomes) else []
    return [c == "1" for c in outcomes], scores


def _compare_accuracy(task: str, base: Record, new: Record, tolerance: Tolerance) -> Check:
    from .stats import compare_paired, power_note

    before, after = base.accuracy_pct[task], new.accuracy_pct[task]
    name = f"accuracy[{task}]"
    base_correct, base_scores = _outcomes(base, task)
    new_correct, new_scores = _outcomes(new, task)
    head = f"{name} {after:.1f}% vs baseline {before:.1f}% ({after - before:+.1f} pt)"
    if base_correct and len(base_correct) == len(new_correct):
        paired = compare_paired(base_correct, new_correct, base_scores or None, new_scores or None)
        regressed = paired.drop_pt > tolerance.value + 1e-9 and paired.ci_low_pt > 0
        flips = paired.flips_to_wrong + paired.flips_to_right
        detail = (f"paired over {paired.n} items: drop {paired.drop_pt:.1f} pt, 95% CI [{paired.ci_low_pt:.1f}, "
                  f"{paired.ci_high_pt:.1f}] pt, McNemar p={paired.p_value:.3g}, {paired.flips_to_wrong} right->wrong, "
                  f"{paired.flips_to_right} wrong->right")
        note = power_note(paired.n, flips / paired.n, tolerance.value)
    else:  # an older baseline without per-item outcomes, or other items: the two accuracies alone
        n = min(base.task_details.get(task, {}).get("n") or 0, new.task_details.get(task, {}).get("n") or 0)
        spread = 1.96 * math.sqrt(sum(p * (100 - p) for p in (before, after)) / n) if n else 0.0
        regressed = before - after > max(tolerance.value, spread)
        detail = ("unpaired (the baseline has no per-item outcomes for these items): " +
                  (f"the drop must exceed {spread:.1f} pt, 1.96 standard errors of the two accuracies" if n else
                   "item counts unknown, judged on the two accuracies alone"))
        note = power_note(n, 0.0, tolerance.value) if n else None
    verdict = "regression" if regressed else ("improvement" if after > before else "within tolerance and noise")
    message = f"{head}: {verdict} (tolerance {tolerance.value:g} pt; {detail})" + (f"; {note}" if note else "")
    return Check(f"regression[{name}]", not regressed, after, before - tolerance.value, message, before)


# What ran, beside what was measured: the record fields and libraries that decide a case's kernels. A change past
# tolerance and noise names those that differ from the baseline's run, so a kernel path or a library upgrade reads
# as the likely cause of a slowdown rather than leaving the commit alone to blame.
RAN_METRICS = ("kernel", "decode_step", "compile_attention", "compile_fused", "compile_tuning", "compile_fallback",
               "capture_fallback")
RAN_MODEL_INFO = ("precision_params", "quantization")


def what_ran(record: Record) -> dict[str, str]:
    """The settings and kernels a record ran with, flattened to names (timings, keys ending in _s, left out)."""
    ran = {key: str(record.metrics[key]) for key in RAN_METRICS if record.metrics.get(key) not in (None, "")}
    for section in RAN_MODEL_INFO:
        for key, value in (record.model_info.get(section) or {}).items():
            if not key.endswith("_s") and isinstance(value, (str, int, float, bool)):
                ran[f"{section}.{key}"] = str(value)
    return ran


# Kernel paths whose speed moves between processes of one commit past their device's default, with the worst
# slowest/fastest ratio measured over fresh processes, less one. bitsandbytes' CPU 4-bit layers with a compute dtype
# other than bf16 dequantize every weight at every call (OpenMP-parallel): on a 2-core CPU SmolLM2 nf4 decoded at
# 57-70 ms/token in most processes and 105-145 in others, steady within each (docs/results/cpu/regression-gate).
UNSTEADY_PATHS = {("quantization.cpu_4bit_kernel", "dequantize"): 1.55}


def unsteady_path(base: Record, new: Record) -> tuple[float, str] | None:
    """(between-run noise, name) of a kernel path in UNSTEADY_PATHS that both runs took: the noise of a rerun of the
    same path (where the paths differ, ran_differently names the change instead)."""
    before, after = what_ran(base), what_ran(new)
    for (key, prefix), noise in UNSTEADY_PATHS.items():
        if before.get(key, "").startswith(prefix) and after.get(key, "").startswith(prefix):
            return noise, f"{key} '{after[key]}', whose speed moves between processes"
    return None


def ran_differently(base: Record, new: Record, base_versions: dict | None = None,
                    new_versions: dict | None = None) -> list[str]:
    """'name: before -> after' for each setting, kernel or library version two runs of one test differ in (the
    versions of libraries both runs list)."""
    before, after = what_ran(base), what_ran(new)
    for name in set(base_versions or {}) & set(new_versions or {}):
        before[name], after[name] = (str(v or "not installed") for v in (base_versions[name], new_versions[name]))
    return [f"{key}: {before.get(key, '(none)')} -> {after.get(key, '(none)')}"
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def compare(base: Record, new: Record, tolerances: dict[str, Tolerance],
            history: dict[str, list[float]] | None = None) -> list[Check]:
    """One check per metric both records measured; `passed` is False only for a regression beyond tolerance and
    noise. `history`: the baseline's values of each metric over its last runs (newest last)."""
    checks = []
    for metric, tolerance in tolerances.items():
        if metric == "accuracy":
            checks += [_compare_accuracy(task, base, new, tolerance)
                       for task in base.accuracy_pct if task in new.accuracy_pct]
        elif _number(base.metrics.get(metric)) is not None and _number(new.metrics.get(metric)) is not None:
            past = (history or {}).get(metric) or [base.metrics[metric]]  # a baseline without history is one run
            values = [v for v in past if _number(v) is not None]
            checks.append(_compare_metric(metric, base, new, tolerance, values))
    return checks


def gate(baseline: Baseline, record: Record, tolerances: dict[str, Tolerance], force: bool = False,
         versions: dict | None = None) -> list[Check]:
    """Checks of `record` against the same test in `baseline` (none when the baseline lacks it); ValueError when
    the two ran on different devices and `force` is off. A regression names what ran differently from the baseline
    (ran_differently; `versions`: this session's library versions)."""
    base = baseline.records.get(record.test)
    if base is None:
        return []
    mismatch = device_mismatch(base, record, baseline.path) or source_mismatch(base, record, baseline.path)
    if mismatch and not force:
        raise ValueError(mismatch)
    checks = compare(base, record, tolerances, baseline.history.get(record.test))
    changed = ran_differently(base, record, baseline.versions, versions)
    if not changed:
        return checks
    note = f"; ran differently from the baseline: {'; '.join(changed)}"
    return [c if c.passed else replace(c, message=c.message + note) for c in checks]


def _gated_metrics(record: Record) -> dict[str, float]:
    return {m: float(record.metrics[m]) for m in GATED_METRICS if _number(record.metrics.get(m)) is not None}


def save_baseline(path: Path, report: dict) -> int:
    """Write `report` (report_dict) as the baseline in `path`, carrying on the metric history of the baseline
    already there: per test, each metric's values over the last HISTORY_RUNS runs on the same device. A record whose
    regression check failed does not enter the history. Returns the most runs any test's history now holds."""
    previous = None
    if Path(path).exists():
        try:
            previous = load_baseline(path)
        except ValueError:
            previous = None  # an unreadable old baseline is replaced; its history cannot be carried on
    history: dict[str, dict[str, list[float]]] = {}
    for data in report["records"]:
        record = Record.from_dict(data)
        if record.outcome in ("skipped", "crashed"):
            continue
        if any(c.get("name", "").startswith("regression[") and not c.get("passed") for c in record.checks):
            if previous and record.test in previous.history:
                history[record.test] = previous.history[record.test]
            continue
        past = {}
        if previous is not None and record.test in previous.records:
            old = previous.records[record.test]
            if (old.device_name or old.device) == (record.device_name or record.device):
                past = previous.history.get(record.test) or {m: [v] for m, v in _gated_metrics(old).items()}
        metrics = _gated_metrics(record)
        history[record.test] = {m: ([*past.get(m, []), v])[-HISTORY_RUNS:] for m, v in metrics.items()}
    write_atomic(Path(path), json.dumps({**report, "history": history}, indent=2, default=str) + "\n")
    return max((len(v) for h in history.values() for v in h.values()), default=0)
