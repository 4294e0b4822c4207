"""A short 'which precision to ship' section derived from the per-precision summary."""

from __future__ import annotations

import pandas as pd

from ..results import METRICS
from ..stats import min_detectable_drop
from . import accuracy_columns
from .plots import normalized

ACCURACY_BUDGET_PT = 5.0  # "smallest within budget": mean accuracy at most this far below the most accurate


def noise(summary: pd.DataFrame, accuracy: list[str]) -> str:
    """'; ...' saying which accuracy differences the items measured cannot tell from chance, or ''."""
    counts = [f"n:{c.removeprefix('acc:')}" for c in accuracy]
    if not all(c in summary for c in counts):
        return ""
    items = int(summary[counts].min().sum())  # the fewest items any precision was scored on, over the tasks
    detectable = min_detectable_drop(items) * 100
    if detectable <= ACCURACY_BUDGET_PT:
        return ""
    if detectable == float("inf"):
        return f"; on {items} items no difference can be told from noise"
    return f"; on {items} items differences under {detectable:.0f} pt cannot be told from noise (95% confidence, 80% power)"


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
    # Precisions are ranked on the tasks all of them ran: a mean over different task sets compares nothing.
    accuracy = [c for c in accuracy_columns(summary) if summary[c].notna().all()]
    mean_accuracy = summary[accuracy].astype(float).mean(axis=1) if accuracy else None
    if "tokens_per_s" in summary:
        i = summary["tokens_per_s"].astype(float).idxmax()
        lines.append(f"- **Fastest**: {label[i]} ({summary['tokens_per_s'][i]:.1f} {METRICS['tokens_per_s'].unit})")
    if mean_accuracy is not None and mean_accuracy.notna().any():
        i = mean_accuracy.idxmax()
        over = f"{len(accuracy)} tasks" if len(accuracy) > 1 else accuracy[0].removeprefix("acc:")
        lines.append(f"- **Most accurate**: {label[i]} (mean accuracy {mean_accuracy[i]:.1f}% over {over}"
                     f"{noise(summary, accuracy)})")
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
