"""Reports, all rendered from one pandas DataFrame of the session's records."""

from __future__ import annotations

import pandas as pd

from ..results import METRICS, Record

# The per-case table's metric columns, in METRICS order, with the header each gets in Markdown.
COLUMNS = {name: metric.label for name, metric in METRICS.items() if metric.label}
# The headers of the metrics that hold a labelled metric's within-run spread (the IQR over the timed repeats).
SPREAD_COLUMNS = {metric.spread: f"{metric.label} IQR" for metric in METRICS.values() if metric.spread and metric.label}


def lower_is_better(column: str) -> bool:
    """Which way a report column improves: from METRICS, and lower for a task's perplexity (accuracy: higher)."""
    metric = METRICS.get(column)
    return column.startswith("ppl:") if metric is None else not metric.higher_is_better


def as_shown(column: str, value: float) -> float:
    """A value in the unit its column shows: a fraction marked percent in METRICS becomes a percentage."""
    metric = METRICS.get(column)
    return value * 100 if metric is not None and metric.percent else value


def records_frame(records: list[Record]) -> pd.DataFrame:
    """One row per (machine, model, precision, decoding, mode, batch size): the metrics and accuracies of all its
    tests merged. `machine` is the device's model name (a merged CPU + H100 report keeps both rows)."""
    rows: dict[tuple, dict] = {}
    for record in records:
        if record.outcome == "skipped":
            continue
        machine = record.device_name or record.device
        key = (machine, record.model, record.precision, record.decoding, record.mode, record.batch_size)
        row = rows.setdefault(key, {"machine": machine, "model": record.model, "precision": record.precision,
                                    "decoding": record.decoding, "mode": record.mode,
                                    "batch_size": record.batch_size, "device": record.device, "family": "",
                                    "compute": record.model_info.get("precision_params", {}).get("compute_dtype", "")})
        row["family"] = row["family"] or record.model_info.get("family", "")  # decoder, encoder-decoder, image-text
        for name, value in record.metrics.items():
            row.setdefault(name, value)
        for task, value in record.accuracy_pct.items():
            row.setdefault(f"acc:{task}", value)
            if "n" in record.task_details.get(task, {}):  # the items behind it: how far apart is still noise
                row.setdefault(f"n:{task}", record.task_details[task]["n"])
        for task, details in record.task_details.items():  # tasks without accuracy: their perplexity
            if task not in record.accuracy_pct and "word_perplexity" in details.get("metrics", {}):
                row.setdefault(f"ppl:{task}", details["metrics"]["word_perplexity"])
    return pd.DataFrame(list(rows.values()))


def accuracy_columns(frame: pd.DataFrame) -> list[str]:
    return sorted(c for c in frame.columns if c.startswith("acc:"))


def perplexity_columns(frame: pd.DataFrame) -> list[str]:
    """Word perplexity of tasks without accuracy (lower is better, so kept apart from the accuracy columns)."""
    return sorted(c for c in frame.columns if c.startswith("ppl:"))
