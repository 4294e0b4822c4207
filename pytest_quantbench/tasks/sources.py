"""Where task data comes from: local files under `--qb-data-dir`, else the Hugging Face hub through `datasets`.

Local files are read row by row (jsonl and csv with the standard library, parquet through `datasets`), so a
malformed row is reported with its file and line. Nothing here knows a task's schema: tasks check their rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from . import DataUnavailable
from .generation import DatasetError

Row = tuple[dict, str]  # a row and where it came from ("file:line"), for error messages


def read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
            rows.append((row, where))
    return rows


def read_csv(path: Path, columns: list[str] | None = None) -> list[Row]:
    """Rows as dicts: keyed by `columns` for a headerless file (MMLU's original CSVs), else by the header row."""
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header, line = columns, 1
        for record in reader:
            where, line = f"{path}:{line}", reader.line_num + 1  # a record starts after the previous one ends
            if header is None:
                header = record
                continue
            if len(record) != len(header):
                raise DatasetError(f"{where}: expected {len(header)} fields ({', '.join(header)}), got {len(record)}")
            rows.append((dict(zip(header, record)), where))
    return rows


def read_parquet(path: Path) -> list[Row]:
    from datasets import load_dataset

    table = load_dataset("parquet", data_files=str(path), split="train")
    return [(dict(row), f"{path}:row {i + 1}") for i, row in enumerate(table)]


def read_table(path: Path, columns: list[str] | None = None) -> list[Row]:
    """A .jsonl, .csv or .parquet file as rows; a .csv without a header needs `columns`."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".csv":
        return read_csv(path, columns)
    if path.suffix == ".parquet":
        return read_parquet(path)
    raise DatasetError(f"{path}: unsupported file type (use .jsonl, .csv or .parquet)")


def first_existing(data_dir: Path | None, candidates: Iterable[str]) -> Path | None:
    """The first of `candidates` (paths relative to the data directory) that exists, else None."""
    if data_dir is None:
        return None
    for candidate in candidates:
        if (Path(data_dir) / candidate).is_file():
            return Path(data_dir) / candidate
    return None


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub's host answers at all (`datasets` retries for about 40 s before giving up otherwise)."""
    import os
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def hub_rows(path: str, name: str | None, split: str, how_to_provide: str) -> list[Row]:
    """A split from the hub (or, with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1, from the `datasets` cache);
    DataUnavailable saying how to provide it when that fails."""
    import os

    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not offline and not hub_reachable():
        raise DataUnavailable(f"{path} is not in --qb-data-dir and the hub is unreachable; {how_to_provide}")
    try:
        from datasets import load_dataset

        table = load_dataset(path, name, split=split)
    except Exception as error:  # noqa: BLE001  (no network, not cached, auth: all mean "provide the data locally")
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise DataUnavailable(f"{path} ({name or 'default'}, {split}) could not be loaded "
                              f"{'offline' if offline else ''} ({reason}); {how_to_provide}") from None
    label = f"{path}/{name or ''}:{split}"
    return [(dict(row), f"{label} row {i + 1}") for i, row in enumerate(table)]


def stratified(items: list, limit: int | None, key: Callable[[object], str]) -> list:
    """A deterministic subset of `limit` items that keeps every stratum: round-robin over strata in first-seen
    order, each taking its items in file order; the subset keeps the original order."""
    if limit is None or limit >= len(items):
        return items
    strata: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        strata.setdefault(key(item), []).append(index)
    chosen: list[int] = []
    queues = [list(indices) for indices in strata.values()]
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return [items[i] for i in sorted(chosen)]
