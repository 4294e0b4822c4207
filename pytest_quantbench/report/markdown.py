"""The Markdown report (a verdict first, then one row per precision) and the short terminal table."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from ..results import Record, device_label
from . import COLUMNS, SPREAD_COLUMNS, accuracy_columns, as_shown, perplexity_columns, records_frame
from .comparison import decoding_pivot, fidelity_section, paired_section
from .recommend import recommendations

# The metrics that differ between decodings, for the by-decoding tables; the terminal's short table.
DECODING_COLUMNS = ("kernel", "ms_per_token", "bound_ms_per_token", "of_bound", "ms_per_token_cv", "tokens_per_s",
                    "latency_ms", "ttft_ms", "peak_mem_mb")
TERMINAL_COLUMNS = ("footprint_mb", "peak_mem_mb", "ms_per_token", "ms_per_token_iqr", "of_bound", "tokens_per_s")
LONG_TABLE = 12  # rows above which a table is folded into <details> (GitHub and the HTML page open it on a click)


def _table(frame: pd.DataFrame, columns: list[str], accuracy: str = "acc (%)", perplexity: str = "word ppl",
           **style) -> str:
    """The `columns` present in `frame` under their METRICS labels (a task's: its name and `accuracy` or
    `perplexity`), values as each column shows them."""
    present = [c for c in columns if c in frame.columns]
    headers = {c: COLUMNS.get(c) or SPREAD_COLUMNS.get(c) or _task_header(c, accuracy, perplexity) for c in present}
    shown = pd.DataFrame({headers[c]: as_shown(c, frame[c]) for c in present})
    return shown.to_markdown(index=False, floatfmt=".1f", missingval="–", **style)


def _task_header(column: str, accuracy: str, perplexity: str) -> str:
    if column.startswith("acc:"):
        return f"{column[4:]} {accuracy}"
    return f"{column[4:]} {perplexity}" if column.startswith("ppl:") else column


def _mode(frame: pd.DataFrame) -> list[str]:
    """The mode and batch-size columns, where the session measured more than one mode (eager and compiled) or a
    batch size other than 1."""
    shown = ["mode"] if "mode" in frame.columns and frame["mode"].nunique() > 1 else []
    if "batch_size" in frame.columns and set(frame["batch_size"]) != {1}:
        shown.append("batch_size")
    return shown


def _machine(frame: pd.DataFrame) -> list[str]:
    """The machine column, where the records come from more than one (a merged report)."""
    return ["machine"] if "machine" in frame.columns and frame["machine"].nunique() > 1 else []


def summary_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (machine, model, precision, mode, batch size): greedy where it was measured, else the first
    decoding."""
    if frame.empty:
        return frame
    order = frame["decoding"].map(lambda d: 0 if d == "greedy" else 1)
    ordered = frame.assign(_order=order).sort_values("_order", kind="stable")
    keys = [c for c in ("machine", "model", "precision", "mode", "batch_size") if c in frame.columns]
    merged = ordered.groupby(keys, sort=False).first().reset_index()
    return merged.drop(columns="_order")


def short_name(test: str) -> str:
    """A test id without its file path: `test_speed[smollm2-135m-nf4-greedy]`."""
    return test.split("::", 1)[-1]


def folded(summary: str, table: list[str]) -> list[str]:
    """A table as is, or folded into <details> when it is long."""
    if len(table) - 2 <= LONG_TABLE:
        return table
    return [f"<details><summary>{summary} ({len(table) - 2} rows)</summary>", "", *table, "", "</details>"]


def verdict(records: list[Record]) -> list[str]:
    """The headline: whether the session's tests and threshold checks passed, and the failures by name."""
    counts = Counter(r.outcome for r in records)
    checks = [c for r in records for c in r.checks]
    crossed = sum(not c["passed"] for c in checks)
    order = ["failed", *sorted(set(counts) - {"failed", "passed", "skipped"}), "passed", "skipped"]  # e.g. crashed
    tally = ", ".join(f"{counts[o]} {o}" for o in order if counts[o])
    failed = [r for r in records if r.outcome not in ("passed", "skipped")]
    headline = (f"**{'FAILED' if failed else 'PASSED'}**: {tally or 'no tests'}; "
                f"{crossed} of {len(checks)} threshold checks crossed.")
    lines = [headline]
    if failed:
        lines += ["", "| failed test | why |", "| --- | --- |"]
        lines += [f"| `{short_name(r.test)}` | {_first_line(r.reason)} |" for r in failed]
    return lines


def _first_line(text: str | None) -> str:
    """The first line of a reason, fit for a table cell."""
    line = text.strip().splitlines()[0].removeprefix("Failed: ") if text and text.strip() else ""
    return line.replace("|", "\\|")


def render(records: list[Record], env: dict, models: dict[str, dict]) -> str:
    frame = records_frame(records)
    versions = env.get("versions", {})
    lines = ["# quantbench report", "", *verdict(records)]
    advice = recommendations(summary_frame(frame)) if not frame.empty else []
    if advice:
        lines += ["", "## Recommendations", "", *advice]
    lines += [
        "", "## Run", "",
        (f"Device: {device_label(env)} · torch {versions.get('torch')} · transformers {versions.get('transformers')} · "
         f"bitsandbytes {versions.get('bitsandbytes')} · commit {str(env.get('git_commit'))[:10]}" if versions
         else f"Device: {device_label(env)} · library versions and commit not recorded"),
        "",
        f"Command: `{env.get('command')}`",
        "",
    ]
    if env.get("rebuilt"):
        lines[-1:-1] = [f"Rebuilt from the run's journal with `{env['rebuilt']}`.", ""]
    for name, info in models.items():
        source = info.get("source", {})
        described = ", ".join(f"{k} {v}" for k, v in source.items() if k != "note")
        lines.append(f"- **{name}** ({info.get('family', '?')}): {described}")
        if source.get("note"):
            lines.append(f"  - {source['note']}")
    accuracy = accuracy_columns(frame) + perplexity_columns(frame)
    if not frame.empty:
        lines += ["", "## By precision", "",
                  "Speed and memory from greedy decoding where measured; accuracy with greedy decoding."]
        families = list(summary_frame(frame).groupby("family", sort=False))
        for family, group in families:  # one table per model family (decoder, encoder-decoder, image-text)
            lines += ["", f"### {family or 'unknown'} models"] if len(families) > 1 else []
            lines += ["", _table(group, [*_machine(frame), "model", "precision", *_mode(frame), "family", "compute",
                                         "kernel", *accuracy, *COLUMNS])]
        lines += ["", "## By decoding", ""]
        for decoding, group in frame.groupby("decoding", sort=False):
            table = _table(group, [*_machine(frame), "model", "precision", *_mode(frame), "family", *accuracy,
                                   *DECODING_COLUMNS]).splitlines()
            lines += [f"### {decoding}", "", *folded(f"{decoding}: every case", table), ""]
        lines += decoding_pivot(frame)
    lines += paired_section(records) + fidelity_section(records) + gpu_section(records)
    unstable = [r for r in records if r.metrics.get("unstable")]
    if unstable:
        lines += ["", "## Unstable measurements", "",
                  ("Decode ms/token kept varying more than the target after the most repeats allowed: treat these "
                   "speeds as rough."), "", "| test | ms/token | CV (%) | repeats |", "| --- | --- | --- | --- |"]
        lines += [f"| `{short_name(r.test)}` | {r.metrics['ms_per_token']:.2f} | "
                  f"{as_shown('ms_per_token_cv', r.metrics['ms_per_token_cv']):.1f} | {r.metrics.get('repeats')} |"
                  for r in unstable]
    checks = sorted(((r, c) for r in records for c in r.checks), key=lambda rc: rc[1]["passed"])  # failures first
    if checks:
        table = ["| test | check | result |", "| --- | --- | --- |"]
        table += [f"| `{short_name(r.test)}` | {c['name']} | {'pass' if c['passed'] else '**FAIL**'}: {_first_line(c['message'])} |"
                  for r, c in checks]
        lines += ["", "## Threshold checks", "", *folded("every check", table)]
    troubled = sorted((r for r in records if r.outcome != "passed"), key=lambda r: r.outcome == "skipped")
    if troubled:
        table = ["| test | outcome | reason |", "| --- | --- | --- |"]
        table += [f"| `{short_name(r.test)}` | {r.outcome} | {_first_line(r.reason)} |" for r in troubled]
        lines += ["", "## Failed and skipped", "", *folded("every test that did not pass", table)]
    return "\n".join(lines).rstrip() + "\n"


def gpu_section(records: list[Record]) -> list[str]:
    """Which worker and which physical GPUs ran each measured case (NVML), with memory per GPU: the evidence that
    a multi-GPU session spread its work, and how a model split with device_map="auto" sits on its GPUs."""
    rows = [r for r in records if r.model_info.get("gpus")]
    if not rows:
        return []
    lines = ["", "## Workers and GPUs", "",
             ("Physical GPU index and the driver's (NVML) used memory at the end of the case's measurement (every "
              "process on that GPU); peak allocated is this process's torch allocator peak per GPU."), "",
             "| test | worker | GPUs (physical) | modules per device | NVML used (MB) | peak allocated (MB) | tokens/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        gpus = r.model_info["gpus"]
        if len(gpus) > 1:
            allocated = [r.metrics.get(f"peak_allocated_mb_gpu{i}") for i in range(len(gpus))]
        else:
            allocated = [r.metrics.get("peak_allocated_mb")]
        placement = r.model_info.get("device_map") or {}
        tokens = r.metrics.get("tokens_per_s")
        used = " / ".join(f"{g['nvml_used_mb']:.0f}" for g in gpus)
        peaks = " / ".join("–" if a is None else f"{a:.0f}" for a in allocated)
        where = ", ".join(f"{k}: {v}" for k, v in placement.items())
        lines.append(f"| `{r.test.split('::')[-1]}` | {r.worker} | {', '.join(str(g['index']) for g in gpus)} | "
                     f"{where} | {used} | {peaks} | {'–' if tokens is None else f'{tokens:.1f}'} |")
    return lines


def terminal_table(records: list[Record]) -> str:
    frame = records_frame(records)
    if frame.empty:
        return "no measurements"
    columns = ["model", "precision", *_mode(frame), "decoding", *accuracy_columns(frame), *perplexity_columns(frame),
               *TERMINAL_COLUMNS]
    return _table(summary_frame(frame), columns, "%", "ppl", tablefmt="simple")
