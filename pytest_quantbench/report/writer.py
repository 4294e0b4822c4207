"""Write the session's consolidated report files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..results import Record, environment, report_dict, write_atomic
from . import records_frame
from .markdown import render, summary_frame
from .plots import recorded_baselines, write_plots

JSON_NAME, MARKDOWN_NAME, CSV_NAME, HTML_NAME = "quantbench.json", "quantbench.md", "quantbench.csv", "quantbench.html"
# What the HTML page is rendered with (the `html` extra).
HTML_NEEDS = ("markdown_it", "nh3")


def models_info(records: list[Record]) -> dict[str, dict]:
    """Per model: where its weights came from (kind, file, hash or revision) and its family."""
    models: dict[str, dict] = {}
    for record in records:
        if record.model_info.get("source") and record.model not in models:
            models[record.model] = {"source": record.model_info["source"], "family": record.model_info.get("family")}
    return models


def write_reports(records: list[Record], report_dir: Path, command: str, env: dict | None = None,
                  write_json: bool = True, merged_from: list[dict] | None = None) -> list[Path]:
    """JSON, Markdown, CSV, (with matplotlib) PNG plots and (with the html extra) the HTML page; `env` from a saved
    report, else this machine's.
    `merged_from`: the reports a merged one joins, recorded in its JSON."""
    devices = [r.device for r in records]
    shown_env = env or environment("cuda" if "cuda" in devices else "cpu", command)
    models = models_info(records)
    json_path, markdown_path = Path(report_dir) / JSON_NAME, Path(report_dir) / MARKDOWN_NAME
    if write_json:
        # A saved environment stays as recorded in the JSON, even an empty one.
        data = report_dict(records, shown_env if env is None else env, models)
        if merged_from is not None:
            data["merged_from"] = merged_from
        write_atomic(json_path, json.dumps(data, indent=2, default=str) + "\n")
    markdown = render(records, shown_env, models)
    write_atomic(markdown_path, markdown)
    paths = [json_path, markdown_path] if write_json else [markdown_path]
    frame, plots = records_frame(records), []
    if not frame.empty:
        csv_path = Path(report_dir) / CSV_NAME
        write_atomic(csv_path, frame.to_csv(index=False))
        paths.append(csv_path)
        if importlib.util.find_spec("matplotlib") is not None:  # plots are an optional extra
            plots = write_plots(summary_frame(frame), Path(report_dir) / "plots", recorded_baselines(records))
            paths += plots
    if all(importlib.util.find_spec(name) is not None for name in HTML_NEEDS):  # so is the page
        from .html import write_html

        paths.append(write_html(markdown, plots, Path(report_dir) / HTML_NAME))
    return paths
