"""Bad input gets a usage error, a collection error or a failure whose message names the problem, before any
evaluation, and never a Python traceback: options and ini keys, markers, model sources, data files, baselines and
the `quantbench` command."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from pytest_quantbench.cli import main
from pytest_quantbench.results import Record, load_report

SPEED_TEST = """
def test_speed(quantbench):
    quantbench.measure(max_new_tokens=4)
"""
ONE_CASE = ("--qb-precision=fp32", "--qb-decoding=greedy", "--qb-repeats=1", "--qb-warmup=0", "-p", "no:cacheprovider")
RECORD = {"test": "t.py::test_speed[m-fp32-greedy]", "model": "m", "precision": "fp32", "decoding": "greedy",
          "device": "cpu", "metrics": {"ms_per_token": 12.5, "tokens_per_s": 80.0, "unstable": False,
                                       "bandwidth_source": "measured copy"}, "accuracy_pct": {"mmlu": 50.0}}


def assert_no_traceback(lines: list[str]) -> None:
    """No Python or pytest traceback, no INTERNALERROR, no pluggy frames."""
    text = "\n".join(lines)
    for sign in ("Traceback", "INTERNALERROR", "pluggy/_", "_pytest/", "During handling of the above exception"):
        assert sign not in text, text
    frames = [line for line in lines if line.startswith("E   ") or re.match(r"\S+\.py:\d+: in \w", line)]
    assert not frames, text


def assert_usage_error(result, message: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: {message}" in result.stderr.str()
    assert_no_traceback(result.outlines + result.errlines)


@pytest.fixture
def tiny(tiny_model_dir):
    return f"--qb-model=tiny={tiny_model_dir}"




def write_report(path, records, **extra):
    path.write_text(json.dumps({"schema_version": 1, "environment": {}, "models": {}, "records": records, **extra}))
    return path


TEST_ID = RECORD["test"]
# (records, where the bad one is, what is wrong with it)
BAD_REPORTS = [
    (["a", "b"], "record 0", 'expected a record (a JSON object), got str "a"'),
    ([{**RECORD, "metrics": {"ms_per_token": "12.5"}}], f"record 0 ({TEST_ID})",
     "metrics['ms_per_token']: expected a number, got \"12.5\""),
    ([{**RECORD, "metrics": {"tokens_per_s": True}}], f"record 0 ({TEST_ID})",
     "metrics['tokens_per_s']: expected a number, got true"),
    ([{**RECORD, "metrics": "fast"}], f"record 0 ({TEST_ID})", "field 'metrics': expected an object, got \"fast\""),
    ([RECORD, {**RECORD, "accuracy_pct": {"mmlu": "50"}}], f"record 1 ({TEST_ID})",
     "accuracy_pct['mmlu']: expected a number (percent), got \"50\""),
    ([{k: v for k, v in RECORD.items() if k != "test"}], "record 0", "missing field(s) test"),
    ([{**RECORD, "checks": ["ok"]}], f"record 0 ({TEST_ID})", "checks[0]: expected an object, got \"ok\""),
]


@pytest.mark.parametrize(("records", "where", "problem"), BAD_REPORTS)
def test_malformed_report_names_file_record_and_field(tmp_path, records, where, problem):
    path = write_report(tmp_path / "base.json", records)
    with pytest.raises(ValueError) as error:
        load_report(path)
    assert str(error.value) == f"{path}: {where}: {problem}"
    with pytest.raises(ValueError) as error:
        Record.from_dict(records[int(where.split()[1])])
    assert str(error.value) == problem


@pytest.mark.parametrize(("records", "where", "problem"), BAD_REPORTS[:2])
def test_malformed_baseline_is_a_usage_error(pytester, records, where, problem):
    write_report(pytester.path / "base.json", records)
    pytester.makepyfile(SPEED_TEST)
    assert_usage_error(pytester.runpytest("--qb-baseline=base.json"), f"base.json: {where}: {problem}")


@pytest.mark.parametrize(("records", "where", "problem"), BAD_REPORTS)
@pytest.mark.parametrize("command", ["compare", "merge", "report"])
def test_cli_reports_malformed_records_without_a_traceback(tmp_path, capsys, command, records, where, problem):
    good, bad = write_report(tmp_path / "good.json", [RECORD]), write_report(tmp_path / "bad.json", records)
    argv = {"compare": ["compare", str(good), str(bad)], "report": ["report", str(bad)],
            "merge": ["merge", str(good), str(bad), "--out", str(tmp_path)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"quantbench {command}: {bad}: {where}: {problem}\n"


def test_merge_refuses_a_report_given_twice(tmp_path, capsys):
    report = write_report(tmp_path / "a.json", [RECORD])
    (tmp_path / "link.json").symlink_to(report)
    for twice in ([str(report), str(report)], [str(report), str(tmp_path / "link.json")]):
        assert main(["merge", *twice, "--out", str(tmp_path / "out")]) == 2
        assert "the same report given more than once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merge_drops_identical_records_and_keeps_other_runs_of_a_test(tmp_path, capsys):
    first = write_report(tmp_path / "a.json", [RECORD])
    copy = tmp_path / "copy.json"
    shutil.copy(first, copy)
    rerun = write_report(tmp_path / "b.json", [{**RECORD, "metrics": {**RECORD["metrics"], "ms_per_token": 13.0}}])
    assert main(["merge", str(first), str(copy), str(rerun), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "dropped 1 records identical to one already merged" in out
    assert "1 tests appear in more than one report with different results: all kept" in out
    merged = load_report(tmp_path / "out" / "quantbench.json")["records"]
    assert sorted(r["metrics"]["ms_per_token"] for r in merged) == [12.5, 13.0]
