"""Where task data comes from: local files under `--qb-data-dir`, else the Hugging Face hub through `datasets`.

Local files are read row by row (jsonl and csv with the standard library, parquet through `datasets`), so a
malformed row is reported with its file and line. Nothing here knows a task's schema: tasks check their rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from ..hub import hub_reachable
from . import DatasetError, DataUnavailable

Row = tuple[dict, str]  # a row and where it came from ("file:line"), for error messages


def _lines(path: Path):
    """A UTF-8 text file's lines, ends kept (a leading byte-order mark dropped); DatasetError naming the first line
    that is not UTF-8."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DatasetError(f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start + 1} "
                                   "of the line)") from None


def read_jsonl(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(_lines(path), 1):
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
    reader = csv.reader(_lines(path))
    header, line = columns, 1
    try:
        for record in reader:
            where, line = f"{path}:{line}", reader.line_num + 1  # a record starts after the previous one ends
            if header is None:
                header = record
                continue
            if len(record) != len(header):
                raise DatasetError(f"{where}: expected {len(header)} fields ({', '.join(header)}), got {len(record)}")
            rows.append((dict(zip(header, record)), where))
    except csv.Error as error:  # e.g. a field over the csv module's size limit
        raise DatasetError(f"{path}:{line}: not valid CSV ({error})") from None
    return rows


def read_parquet(path: Path) -> list[Row]:
    from datasets import load_dataset

    try:
        table = load_dataset("parquet", data_files=str(path), split="train")
    except Exception as error:  # noqa: BLE001  (pyarrow and datasets raise many kinds for a broken file)
        raise DatasetError(f"{path}: not a readable parquet file ({type(error).__name__}: "
                           f"{str(error).splitlines()[0][:160] if str(error) else ''})") from None
    return [(dict(row), f"{path}:row {i + 1}") for i, row in enumerate(table)]


def read_table(path: Path, columns: list[str] | None = None) -> list[Row]:
    """A .jsonl, .csv or .parquet file as rows; a .csv without a header needs `columns`."""
    readers = {".jsonl": read_jsonl, ".csv": lambda p: read_csv(p, columns), ".parquet": read_parquet}
    if path.suffix not in readers:
        raise DatasetError(f"{path}: unsupported file type (use .jsonl, .csv or .parquet)")
    rows = readers[path.suffix](path)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def first_existing(data_dir: Path | None, candidates: Iterable[str]) -> Path | None:
    """The first of `candidates` (paths relative to the data directory) that exists, else None."""
    if data_dir is None:
        return None
    for candidate in candidates:
        if (Path(data_dir) / candidate).is_file():
            return Path(data_dir) / candidate
    return None


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
