"""An interactive HTML page of the trade-offs (Plotly, optional extra `html`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import write_atomic
from . import accuracy_columns


def write_html(frame: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """Accuracy against memory (marker size: tokens/s) and speed per decoding, in one self-contained page."""
    import plotly.express as px
    import plotly.io as pio

    figures = []
    accuracy = accuracy_columns(summary)
    if accuracy and "footprint_mb" in summary:
        points = summary.assign(mean_accuracy=summary[accuracy].astype(float).mean(axis=1),
                                size=summary.get("tokens_per_s", pd.Series(1.0, index=summary.index)).fillna(1.0))
        figures.append(px.scatter(points, x="footprint_mb", y="mean_accuracy", color="precision", symbol="model",
                                  size="size", hover_data=[c for c in ["ms_per_token", "peak_mem_mb", *accuracy]
                                                           if c in points],
                                  title="Accuracy against model footprint (marker size: tokens/s)"))
    if "tokens_per_s" in frame:
        figures.append(px.bar(frame, x="precision", y="tokens_per_s", color="decoding", barmode="group",
                              facet_col="model", title="Throughput per precision and decoding"))
    if "peak_mem_mb" in summary:
        figures.append(px.bar(summary, x="precision", y="peak_mem_mb", color="model", barmode="group",
                              title="Peak memory per precision"))
    body = "\n".join(pio.to_html(f, full_html=False, include_plotlyjs="inline" if i == 0 else False)
                     for i, f in enumerate(figures))
    write_atomic(path, f"<!doctype html><html><head><meta charset='utf-8'><title>quantbench</title></head>"
                       f"<body><h1>quantbench report</h1>{body}</body></html>")
    return path
