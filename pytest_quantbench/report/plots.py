"""PNG plots of the per-precision summary (matplotlib, optional): size, speed and memory bars, a heatmap of each
model's metrics against its baseline precision, and accuracy against memory with the Pareto front marked.

The numbers behind each plot come from small pure functions (error_bars, heatmap_panels, colour_scale,
mean_accuracy, pareto_front, place_labels), so that hand-computed cases test them; the drawing functions only draw."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import METRICS, Record, replacing
from ..settings import DEFAULT_BASELINE
from . import accuracy_columns, as_shown, lower_is_better, perplexity_columns

BARS = ("footprint_mb", "tokens_per_s", "peak_mem_mb")
HEATMAP_METRICS = ("footprint_mb", "peak_mem_mb", "tokens_per_s", "ms_per_token", "ttft_ms")
# The heatmap's colours saturate at this relative change: fixed, so that a 1-item difference on a small task stays
# pale and colours mean the same in every report (the cell's number tells the rest).
RELATIVE_RANGE = 0.5
DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def axis_label(column: str) -> str:
    """A column's name with its unit, from METRICS (a task's: its name and acc (%) or word perplexity)."""
    if column.startswith("acc:"):
        return f"{column[4:]} acc (%)"
    if column.startswith("ppl:"):
        return f"{column[4:]} word ppl"
    metric = METRICS.get(column)
    if metric is None:
        return column
    return metric.label or (f"{column} ({metric.unit})" if metric.unit else column)


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


def row_labels(summary: pd.DataFrame, with_model: bool = False) -> list[str]:
    """Each row's precision, with its mode, batch size and machine where the summary holds more than one (and its
    model)."""
    parts = [summary["precision"].astype(str)]
    for column in ("mode", "batch_size", "machine"):
        if column in summary and summary[column].nunique() > 1:
            parts.append(("bs" if column == "batch_size" else "") + summary[column].astype(str))
    if with_model:
        parts.insert(0, summary["model"].astype(str))
    return [" ".join(row) for row in zip(*parts)]


def error_bars(summary: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Half the within-run IQR of `metric` per row, drawn either side of the median (a record keeps the IQR's
    width, not its quartiles); NaN where a row has none, None where the summary carries no spread for it."""
    metric_spec = METRICS.get(metric)
    spread = metric_spec.spread if metric_spec else None
    if spread is None or spread not in summary:
        return None
    return summary[spread].astype(float).to_numpy() / 2


def baseline_precision(precisions: list[str], device: str | None, recorded: str | None = None) -> str:
    """The precision a group is compared against: the one its records name (vs_baseline, fidelity) if the group
    has it, else the device's default baseline (fp32 on cpu, bf16 on cuda), else the other default, else the first."""
    for candidate in (recorded, DEFAULT_BASELINE.get(device or ""), *DEFAULT_BASELINE.values()):
        if candidate in precisions:
            return candidate
    return precisions[0]


def recorded_baselines(records: list[Record]) -> dict[tuple[str, str], str]:
    """(machine, model) -> the baseline precision its records were compared against, where any were."""
    named: dict[tuple[str, str], Counter] = {}
    for record in records:
        for task, details in record.task_details.items():
            if not isinstance(details, dict):
                continue
            precision = details.get("baseline") if task == "fidelity" else \
                (details.get("vs_baseline") or {}).get("precision")
            if precision:
                named.setdefault((record.device_name or record.device, record.model), Counter())[precision] += 1
    return {key: counts.most_common(1)[0][0] for key, counts in named.items()}


def relative_to_baseline(group: pd.DataFrame, metrics: list[str], baseline: str) -> pd.DataFrame:
    """Each metric's change from the baseline row, relative to it and signed so that positive is better
    (footprint 500 -> 125 MB: +0.75; accuracy 50 -> 41.7 %: -0.17); NaN where either value is missing or the
    baseline's is 0. Rows in the group's order; `group` holds one precision per row."""
    base = group[group["precision"] == baseline].iloc[0]
    out = pd.DataFrame(index=group.index)
    for metric in metrics:
        reference = float(base[metric]) if pd.notna(base[metric]) else math.nan
        values = group[metric].astype(float)
        change = (values - reference) / abs(reference) if reference else values * math.nan
        out[metric] = -change if lower_is_better(metric) else change
    return out


@dataclass
class HeatmapPanel:
    """One model's heatmap: its rows' values and their signed relative changes (metrics as columns), which rows
    are a baseline, and the baseline precisions named."""

    model: str
    values: pd.DataFrame
    changes: pd.DataFrame
    is_baseline: list[bool]
    baselines: list[str]

    @property
    def metrics(self) -> list[str]:
        return list(self.values.columns)


def heatmap_panels(summary: pd.DataFrame, metrics: list[str],
                   baselines: dict[tuple[str, str], str] | None = None) -> list[HeatmapPanel]:
    """A panel per model, its rows compared with the baseline of their machine, mode and batch size
    (baseline_precision, from `baselines`: (machine, model) -> recorded precision); columns the metrics that model
    has."""
    keys = [c for c in ("machine", "model", "mode", "batch_size") if c in summary]
    panels = []
    for model, rows in summary.groupby("model", sort=False):
        changes, flags, named = [], pd.Series(False, index=rows.index), []
        for _, group in rows.groupby(keys, sort=False):
            first = group.iloc[0]
            recorded = (baselines or {}).get((first.get("machine", ""), model))
            base = baseline_precision(list(group["precision"]), first.get("device"), recorded)
            if base not in named:
                named.append(base)
            changes.append(relative_to_baseline(group, metrics, base))
            flags[group.index[group["precision"] == base]] = True
        shown = [m for m in metrics if rows[m].notna().any()]
        panels.append(HeatmapPanel(model, rows[shown], pd.concat(changes).loc[rows.index, shown], list(flags),
                                   named))
    return panels


def colour_scale():
    """The heatmap's colour map and norm: diverging around 0 (the baseline's own value), red worse, blue better,
    saturating at ±RELATIVE_RANGE; grey where a cell has no change to show."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    return colormaps["RdBu"].with_extremes(bad="0.85"), Normalize(-RELATIVE_RANGE, RELATIVE_RANGE)


def mean_accuracy(summary: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Mean accuracy per row over the tasks every row with an accuracy has (a task run for some precisions only
    would pull theirs apart), or over each row's own tasks where they share none; and the tasks averaged."""
    tasks = accuracy_columns(summary)
    scored = summary[tasks].astype(float).dropna(how="all")
    common = [t for t in tasks if scored[t].notna().all()]
    means = summary[common or tasks].astype(float).mean(axis=1)
    return means, common


def place_labels(anchors: list[tuple[float, float]], sizes: list[tuple[float, float]],
                 bounds: tuple[float, float, float, float], obstacles: list[tuple[float, float, float, float]] = (),
                 radius: float = 8.0) -> list[tuple[float, float]]:
    """Offsets (pixels, of each label's lower-left corner from its point) so that no two labels overlap, none
    covers a point (a marker of `radius`) or an obstacle box (x0, y0, x1, y1) and all stay inside `bounds` where
    possible: the nearest free spot around the point, else the least overlapping one."""
    taken = [*obstacles, *((x - radius, y - radius, x + radius, y + radius) for x, y in anchors)]
    offsets = []
    for (x, y), (w, h) in zip(anchors, sizes):
        best, best_cost = (radius, radius), math.inf
        for d in (radius * k for k in (1.2, 2.5, 4, 6, 9)):
            for dx, dy in ((d, -h / 2), (d, d), (-w / 2, d), (-w - d, d), (-w - d, -h / 2), (-w - d, -h - d),
                           (-w / 2, -h - d), (d, -h - d)):
                box = (x + dx, y + dy, x + dx + w, y + dy + h)
                cost = sum(_overlap(box, other) for other in taken) + _outside(box, bounds) * 10
                if cost < best_cost:
                    best, best_cost = (dx, dy), cost
            if best_cost == 0:
                break
        offsets.append(best)
        taken.append((x + best[0], y + best[1], x + best[0] + w, y + best[1] + h))
    return offsets


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _outside(box: tuple[float, ...], bounds: tuple[float, ...]) -> float:
    """The area of `box` outside `bounds`."""
    return (box[2] - box[0]) * (box[3] - box[1]) - _overlap(box, bounds)


def write_plots(summary: pd.DataFrame, out_dir: Path,
                baselines: dict[tuple[str, str], str] | None = None) -> list[Path]:
    """Write the PNGs for a summary frame (one row per model and precision); returns the paths written.
    `baselines`: (machine, model) -> the baseline precision the records name (see baseline_precision)."""
    import matplotlib

    matplotlib.use("Agg")

    if summary.empty:
        return []
    summary = summary.reset_index(drop=True)
    paths = [_bars(summary, metric, out_dir / f"{metric}.png") for metric in BARS if metric in summary]
    metrics = [m for m in [*HEATMAP_METRICS, *accuracy_columns(summary), *perplexity_columns(summary)]
               if m in summary and summary[m].notna().any()]
    if metrics and len(summary) >= 2:
        paths.append(_heatmap(summary, metrics, baselines or {}, out_dir / "heatmap.png"))
    if accuracy_columns(summary) and "footprint_mb" in summary:
        paths.append(_accuracy_vs_memory(summary, out_dir / "accuracy_vs_memory.png"))
    return [p for p in paths if p is not None]


def _model_colours(summary: pd.DataFrame) -> dict[str, str]:
    return {model: f"C{i % 10}" for i, model in enumerate(summary["model"].unique())}


def _bars(summary: pd.DataFrame, metric: str, path: Path) -> Path:
    """One bar per row, coloured by model, with IQR error bars where the summary carries the metric's spread."""
    import matplotlib.pyplot as plt

    colours = _model_colours(summary)
    values = as_shown(metric, summary[metric].astype(float))
    errors = error_bars(summary, metric)
    fig, ax = plt.subplots(figsize=(max(4.5, len(summary) * 0.8 + 1.5), 4), dpi=DPI)
    positions = np.arange(len(summary))
    ax.bar(positions, values, color=[colours[m] for m in summary["model"]],
           yerr=None if errors is None else as_shown(metric, errors), capsize=4, ecolor="black")
    ax.set_xticks(positions, row_labels(summary), rotation=30, ha="right")
    ax.set_xlabel("precision")
    ax.set_ylabel(axis_label(metric))
    title = f"{axis_label(metric).split(' (')[0]} per precision"
    if errors is not None and np.isfinite(errors).any():
        title += "\nmedian; error bar: interquartile range over the timed repeats"
    ax.set_title(title, fontsize=10)
    if len(colours) > 1:
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()], labels=list(colours),
                  title="model", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return _save(fig, path)


def _heatmap(summary: pd.DataFrame, metrics: list[str], baselines: dict, path: Path) -> Path:
    """A panel per model (see heatmap_panels), the values written in the cells, one colour bar."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = heatmap_panels(summary, metrics, baselines)
    labels = row_labels(summary)
    width = max(len(p.metrics) for p in panels) * 1.15 + 3.5
    height = max(3.6, sum(0.45 * len(p.values) + 1.6 for p in panels) + 0.6)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, height), dpi=DPI, squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [len(p.values) + 2.5 for p in panels]})
    cmap, norm = colour_scale()
    for ax, panel in zip(axes[:, 0], panels):
        grid = panel.changes.to_numpy(dtype=float)
        image = ax.imshow(np.clip(grid, -RELATIVE_RANGE, RELATIVE_RANGE), cmap=cmap, norm=norm, aspect="auto")
        for (i, j), change in np.ndenumerate(grid):
            value = panel.values.iloc[i, j]
            text = "–" if pd.isna(value) else _short(as_shown(panel.metrics[j], float(value)))
            if panel.is_baseline[i]:
                text += "\nbaseline"
            elif not math.isnan(change):
                text += "\n" + _percent(change)
            strong = not math.isnan(change) and abs(change) > RELATIVE_RANGE * 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color="white" if strong else "black")
        ax.set_xticks(range(len(panel.metrics)), [axis_label(m) for m in panel.metrics], rotation=30, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(panel.values)), [labels[k] + (" (baseline)" if b else "")
                                                 for k, b in zip(panel.values.index, panel.is_baseline)], fontsize=8)
        ax.set_ylabel("precision")
        ax.set_title(f"{panel.model}: against {' / '.join(panel.baselines)}", fontsize=10)
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, extend="both",
                 format=FuncFormatter(lambda v, _: _percent(v)),
                 label="change from the baseline (+: better)")
    fig.suptitle("Each metric against the baseline precision: blue better, red worse, white as the baseline\n"
                 f"(relative change, colour saturating at ±{RELATIVE_RANGE:.0%}; cells: value and change)",
                 fontsize=9)
    return _save(fig, path)


def _percent(change: float) -> str:
    return f"{change:+.0%}" if round(change * 100) else "0%"


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _accuracy_vs_memory(summary: pd.DataFrame, path: Path) -> Path | None:
    """Mean accuracy against footprint, a colour and marker per model, labels placed apart, the Pareto front."""
    import matplotlib.pyplot as plt

    means, tasks = mean_accuracy(summary)
    keep = means.notna() & summary["footprint_mb"].notna()
    if not keep.any():
        return None
    rows, means = summary[keep], means[keep]
    points = list(zip(rows["footprint_mb"].astype(float), means))
    front = pareto_front(points)
    colours = _model_colours(rows)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=DPI)
    for k, model in enumerate(colours):
        mine = (rows["model"] == model).to_numpy()
        ax.scatter(rows["footprint_mb"][mine], means[mine], color=colours[model], marker=MARKERS[k % len(MARKERS)],
                   s=40, zorder=3, label=model)
    best = sorted(points[i] for i in front)
    ax.plot(*zip(*best), color="black", linestyle="--", linewidth=1, drawstyle="steps-post", zorder=2,
            label="Pareto front (nothing smaller is as accurate)")
    ax.scatter(*zip(*best), s=160, facecolors="none", edgecolors="black", zorder=2)
    ax.set_xlabel(axis_label("footprint_mb"))
    ax.set_ylabel(f"mean accuracy over {', '.join(t[4:] for t in tasks)} (%)" if tasks else
                  "mean accuracy over each point's tasks (%)")
    ax.set_title("Accuracy against model footprint (up and left is better)", fontsize=10)
    ax.margins(0.12, 0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _label_points(fig, ax, points, row_labels(rows, with_model=False), best)
    return _save(fig, path)


def _label_points(fig, ax, points: list[tuple[float, float]], labels: list[str],
                  front: list[tuple[float, float]]) -> None:
    """Annotate each point with its label where place_labels finds room (measured in the laid-out figure), off
    the legend and the front's steps."""
    together: dict[tuple[float, float], list[str]] = {}  # points at one place get one label naming them all
    for point, label in zip(points, labels):
        together.setdefault(point, []).append(label)
    points, labels = list(together), [", ".join(names) for names in together.values()]
    renderer = fig.canvas.get_renderer()
    anchors = [tuple(p) for p in ax.transData.transform(points)]
    sizes = []
    for label in labels:
        probe = ax.text(0, 0, label, fontsize=8)
        extent = probe.get_window_extent(renderer)
        sizes.append((extent.width, extent.height))
        probe.remove()
    legend, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    obstacles = [(legend.x0, legend.y0, legend.x1, legend.y1)]
    corners = ax.transData.transform(front)
    for (x1, y1), (x2, y2) in pairwise(corners):  # the steps: along, then up
        obstacles += [(x1, y1 - 2, x2, y1 + 2), (x2 - 2, y1, x2 + 2, y2)]
    offsets = place_labels(anchors, sizes, (box.x0, box.y0, box.x1, box.y1), obstacles, radius=7 * fig.dpi / 72)
    to_points = 72 / fig.dpi
    for (x, y), (dx, dy), label, size in zip(points, offsets, labels, sizes):
        far = math.hypot(dx + size[0] / 2, dy + size[1] / 2) > 40
        ax.annotate(label, (x, y), xytext=(dx * to_points, dy * to_points), textcoords="offset points",
                    ha="left", va="bottom", fontsize=8, bbox={"boxstyle": "square,pad=0", "fc": "white",
                                                              "ec": "none", "alpha": 0.7},
                    arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6} if far else None)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=fig.dpi)
    finally:
        plt.close(fig)
    return path
