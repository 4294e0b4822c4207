"""A short 'which precision to ship' section derived from the per-precision summary."""

from __future__ import annotations

import pandas as pd

from ..results import METRICS
from . import accuracy_columns
from .plots import normalized

ACCURACY_BUDGET_PT = 5.0  # "smallest within budget": mean accuracy at most this far below the most accurate


def recommendations(summary: pd.DataFrame) -> list[str]:
    """Markdown bullet lines; empty when there is nothing to compare."""
    if len(summary) < 2:
        return []
    label = summary["model"] + " " + summary["precision"]
    if "machine" in summary and summary["machine"].nunique() > 1:  # a merged report: say where it was measured
        label = label + " on " + summary["machine"].astype(str)
    if "mode" in summary and summary["mode"].nunique() > 1:
        label = label + " (" + summary["mode"].astype(str) + ")"
    if "batch_size" in summary and summary["batch_size"].nunique() > 1:
        label = label + " at batch " + summary["batch_size"].astype(str)
    lines = []
    accuracy = accuracy_columns(summary)
    mean_accuracy = summary[accuracy].astype(float).mean(axis=1) if accuracy else None
    if "tokens_per_s" in summary:
        i = summary["tokens_per_s"].astype(float).idxmax()
        lines.append(f"- **Fastest**: {label[i]} ({summary['tokens_per_s'][i]:.1f} {METRICS['tokens_per_s'].unit})")
    if mean_accuracy is not None and mean_accuracy.notna().any():
        i = mean_accuracy.idxmax()
        lines.append(f"- **Most accurate**: {label[i]} (mean accuracy {mean_accuracy[i]:.1f}%)")
        if "footprint_mb" in summary:
            within = summary[mean_accuracy >= mean_accuracy.max() - ACCURACY_BUDGET_PT]
            j = within["footprint_mb"].astype(float).idxmin()
            lines.append(f"- **Smallest within {ACCURACY_BUDGET_PT:g} pt of the most accurate**: {label[j]} "
                         f"({summary['footprint_mb'][j]:.1f} {METRICS['footprint_mb'].unit}, "
                         f"mean accuracy {mean_accuracy[j]:.1f}%)")
    metrics = [m for m in ["footprint_mb", "tokens_per_s", "peak_mem_mb", *accuracy] if m in summary]
    complete = summary.dropna(subset=metrics)
    if len(metrics) >= 2 and len(complete) >= 2:
        score = normalized(complete, metrics).mean(axis=1).to_numpy()
        best = complete.index[score.argmax()]
        lines.append(f"- **Best overall balance**: {label[best]} (mean normalized score {score.max():.2f} over "
                     f"{', '.join(m.removeprefix('acc:') for m in metrics)})")
    return lines
