"""Write the session's consolidated report files."""

from __future__ import annotations

import json
from pathlib import Path

from ..results import Record, environment, report_dict, write_atomic
from .markdown import render

JSON_NAME, MARKDOWN_NAME = "quantbench.json", "quantbench.md"


def models_info(records: list[Record]) -> dict[str, dict]:
    """Per model: where its weights came from (kind, file, hash or revision) and its family."""
    models: dict[str, dict] = {}
    for record in records:
        if record.model_info.get("source") and record.model not in models:
            models[record.model] = {"source": record.model_info["source"], "family": record.model_info.get("family")}
    return models


def write_reports(records: list[Record], report_dir: Path, command: str) -> list[Path]:
    devices = [r.device for r in records]
    env = environment("cuda" if "cuda" in devices else "cpu", command)
    models = models_info(records)
    json_path, markdown_path = Path(report_dir) / JSON_NAME, Path(report_dir) / MARKDOWN_NAME
    write_atomic(json_path, json.dumps(report_dict(records, env, models), indent=2, default=str) + "\n")
    write_atomic(markdown_path, render(records, env, models))
    return [json_path, markdown_path]
