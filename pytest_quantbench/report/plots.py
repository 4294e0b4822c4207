"""PNG plots of the per-precision summary (matplotlib, optional): size, speed and memory bars, a normalized heatmap,
and accuracy against memory with the Pareto front marked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import replacing
from . import accuracy_columns, lower_is_better

# The metrics drawn as bars, with each plot's axis title.
BARS = {"footprint_mb": "model footprint (MB)", "tokens_per_s": "tokens/s", "peak_mem_mb": "peak memory (MB)"}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower x is better, higher y is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def normalized(summary: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Each metric scaled to [0, 1] across precisions, 1 the best (inverted where lower is better)."""
    labels = summary["label"] if "label" in summary else summary["model"] + " " + summary["precision"]
    out = pd.DataFrame(index=labels.to_numpy())
    for metric in metrics:
        values = summary[metric].astype(float).to_numpy()
        span = values.max() - values.min()
        if not span:  # all equal: every precision is the best, whichever way is better
            out[metric] = values * 0 + 1
            continue
        scaled = (values - values.min()) / span
        out[metric] = 1 - scaled if lower_is_better(metric) else scaled
    return out


def write_plots(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write the PNGs for a summary frame (one row per model and precision); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summary.empty:
        return []
    summary = summary.assign(label=summary["model"] + " " + summary["precision"])
    paths = []
    for metric, title in BARS.items():
        if metric not in summary:
            continue
        fig, ax = plt.subplots(figsize=(max(4, len(summary) * 0.9), 3.5))
        ax.bar(summary["label"], summary[metric].astype(float), color="tab:blue")
        ax.set_ylabel(title)
        ax.set_title(f"{title} per precision")
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"{metric}.png"))
    metrics = [m for m in [*BARS, "ms_per_token", "ttft_ms", *accuracy_columns(summary)] if m in summary]
    if len(metrics) >= 2:
        grid = normalized(summary, metrics)
        fig, ax = plt.subplots(figsize=(1.2 * len(metrics) + 2, 0.5 * len(grid) + 1.5))
        image = ax.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(metrics)), [m.removeprefix("acc:") for m in metrics], rotation=45, ha="right")
        ax.set_yticks(range(len(grid)), grid.index)
        fig.colorbar(image, ax=ax, label="normalized (1 = best)")
        ax.set_title("metrics per precision, normalized")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "heatmap.png"))
    accuracy = accuracy_columns(summary)
    if accuracy and "footprint_mb" in summary:
        mean_accuracy = summary[accuracy].astype(float).mean(axis=1)
        points = list(zip(summary["footprint_mb"].astype(float), mean_accuracy))
        front = pareto_front(points)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.scatter(*zip(*points), color="tab:gray")
        for (x, y), label in zip(points, summary["label"]):
            ax.annotate(label, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        best = sorted(points[i] for i in front)
        ax.plot(*zip(*best), color="tab:red", marker="o", label="Pareto front")
        ax.set_xlabel(BARS["footprint_mb"])
        ax.set_ylabel("mean accuracy over tasks (%)")
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "accuracy_vs_memory.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
