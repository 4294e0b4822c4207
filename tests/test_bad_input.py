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


@pytest.mark.parametrize(("args", "message"), [
    (["--qb-max-new-tokens=0"], ("--qb-max-new-tokens must be at least 2 (decode ms/token is timed over the "
                                 "tokens after the first), got 0")),
    (["--qb-max-new-tokens=-3"], "--qb-max-new-tokens must be at least 2"),
    (["--qb-max-new-tokens=many"], "--qb-max-new-tokens must be an integer, got 'many'"),
    (["--qb-limit=-1"], "--qb-limit must be at least 0 (0 means all items), got -1"),
    (["--qb-repeats=0"], "--qb-repeats must be at least 1, got 0"),
    (["--qb-ppl-context=0"], "--qb-ppl-context must be at least 1, got 0"),
    (["--qb-ppl-context=64", "--qb-ppl-stride=128"], "--qb-ppl-stride 128 is longer than --qb-ppl-context 64"),
    (["--qb-max-memory-mb=-1"], "--qb-max-memory-mb must be a finite number >= 0, got '-1'"),
    (["--qb-max-ms-per-token=nan"], "--qb-max-ms-per-token must be a finite number >= 0, got 'nan'"),
    (["--qb-min-tokens-per-s=inf"], "--qb-min-tokens-per-s must be a finite number >= 0, got 'inf'"),
    (["--qb-max-accuracy-drop=150"], "--qb-max-accuracy-drop is in percentage points (0-100), got '150'"),
    (["--qb-target-cv=-0.1"], "--qb-target-cv must be a finite number >= 0, got '-0.1'"),
    (["--qb-model="], ("--qb-model is empty: give a hub id (org/name), a local model directory, a .gguf file or "
                       "an alias (smollm2-135m)")),
    (["--qb-model=smollm2-135m", "--qb-model= "], "--qb-model is empty"),
    (["--qb-model=./no-such-dir"], "model directory './no-such-dir' does not exist"),
    (["--qb-model=org/name/extra"], "model directory 'org/name/extra' does not exist (and it is no hub id"),
    (["--qb-model=no-such.gguf"], "GGUF file 'no-such.gguf' does not exist"),
    (["--qb-model=a=smollm2-135m", "--qb-model=a=org/model"], "two models share the test-id name(s) ['a']"),
    (["--qb-data-dir=no-such-data"], "--qb-data-dir 'no-such-data' is not a directory"),
])
def test_bad_option_is_a_usage_error(pytester, args, message):
    pytester.makepyfile(SPEED_TEST)
    assert_usage_error(pytester.runpytest(*args), message)


@pytest.mark.parametrize(("ini", "message"), [
    ("qb_max_memory_mb = -1", "--qb-max-memory-mb must be a finite number >= 0, got '-1'"),
    ("qb_max_new_tokens = 0", "--qb-max-new-tokens must be at least 2"),
    ("qb_model =", "--qb-model is empty"),
])
def test_bad_ini_value_is_a_usage_error(pytester, ini, message):
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(SPEED_TEST)
    assert_usage_error(pytester.runpytest(), message)


def test_smallest_accepted_values_collect(pytester, tiny):
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest("--collect-only", "-q", tiny, "--qb-max-new-tokens=2", "--qb-limit=0",
                                "--qb-max-memory-mb=0", *ONE_CASE)
    result.stdout.fnmatch_lines(["*1 test collected*"])


def test_model_directory_without_config_and_non_gguf_file_are_usage_errors(pytester):
    pytester.makepyfile(SPEED_TEST)
    pytester.mkdir("empty-model")
    assert_usage_error(pytester.runpytest("--qb-model=./empty-model"),
                       "model directory './empty-model' has no config.json")
    (pytester.path / "weights.bin").write_bytes(b"\0" * 16)
    assert_usage_error(pytester.runpytest("--qb-model=weights.bin"),
                       "model source 'weights.bin' is a file but not a .gguf")


@pytest.mark.parametrize(("marker", "message"), [
    ("baseline='nf5'", "unknown precision 'nf5'; valid: fp32, fp16, bf16"),
    ("baseline=['fp32']", "baseline= takes one precision name, got ['fp32']"),
    ("precisions=['fp33']", "unknown precision 'fp33'"),
    ("decodings=['beam9']", "unknown decoding 'beam9'"),
    ("decodings=[3]", "decodings= takes a name or a list of names, got [3]"),
    ("modes=['jit']", "unknown mode(s) jit"),
    ("max_memory_mb=-1", "max_memory_mb must be a finite number >= 0, got -1"),
    ("max_ms_per_token=float('nan')", "max_ms_per_token must be a finite number >= 0, got nan"),
    ("min_top1_agreement=101", "min_top1_agreement is in percentage points (0-100), got 101"),
    ("drop_test='sometimes'", "unknown drop test 'sometimes'"),
    ("precision='fp32'", "unknown keyword(s) precision; valid: models, precisions, decodings, modes, baseline"),
])
def test_bad_marker_is_a_collection_error_before_any_model_loads(pytester, marker, message):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.quantbench({marker})
        def test_speed(quantbench):
            quantbench.measure(max_new_tokens=4)
    """)
    result = pytester.runpytest(*ONE_CASE)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert f"test_bad_marker_is_a_collection_error_before_any_model_loads.py::test_speed: quantbench marker: " \
           f"{message}" in result.stdout.str()
    assert_no_traceback(result.outlines + result.errlines)
    assert not (pytester.path / ".quantbench").exists()  # nothing ran: no journal, no report


def test_marker_takes_one_name_as_a_list_of_one(pytester, tiny):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quantbench(precisions="fp32", decodings="greedy")
        def test_speed(quantbench):
            pass
    """)
    result = pytester.runpytest("--collect-only", "-q", tiny, "--qb-precision=fp32,bf16", "--qb-decoding=greedy,beam2")
    result.stdout.fnmatch_lines(["*test_speed?tiny-fp32-greedy?*", "*1 test collected*"])

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
