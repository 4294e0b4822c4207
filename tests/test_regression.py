"""The regression gate and the quantbench command: tolerances, comparisons, CLI exit codes, journal rebuild, merge."""

from __future__ import annotations

import json

import pytest

from pytest_quantbench.cli import main
from pytest_quantbench.regression import Tolerance, compare, parse_tolerances
from pytest_quantbench.results import Record, load_report


def test_parse_tolerances():
    parsed = parse_tolerances("ms_per_token:5%,accuracy:1pt,peak_mem_mb:50")
    assert parsed == {"ms_per_token": Tolerance(0.05, True), "accuracy": Tolerance(1.0, False),
                      "peak_mem_mb": Tolerance(50.0, False)}
    for bad, message in [("ms_per_token", "expected METRIC:AMOUNT"), ("speed:5%", "unknown metric 'speed'"),
                         ("ms_per_token:fast", "not a number"), ("ms_per_token:-5%", "must not be negative")]:
        with pytest.raises(ValueError, match=message):
            parse_tolerances(bad)


def record(ms=10.0, iqr=0.0, tps=100.0, acc=80.0, device_name="H100"):
    return Record("t.py::t[m-nf4-greedy]", "m", "nf4", "greedy", "cuda", device_name=device_name,
                  metrics={"ms_per_token": ms, "ms_per_token_iqr": iqr, "tokens_per_s": tps},
                  accuracy_pct={"simple": acc})


def test_compare_relative_absolute_and_noise():
    tolerances = parse_tolerances("ms_per_token:5%,tokens_per_s:5%,accuracy:1pt")
    same = compare(record(), record(), tolerances)
    assert [c.passed for c in same] == [True, True, True]
    slower = {c.name: c for c in compare(record(), record(ms=10.6, tps=94.0, acc=78.5), tolerances)}
    assert not slower["regression[ms_per_token]"].passed  # +6% > 5%
    assert "ms_per_token 10.60 vs baseline 10.00 (+6.0%): regression (tolerance 5%)" in slower[
        "regression[ms_per_token]"].message
    assert not slower["regression[tokens_per_s]"].passed and not slower["regression[accuracy[simple]]"].passed
    # +6% but each run's spread is 0.4 ms: 0.6 ms is within the noise of both, so it does not count
    noisy = {c.name: c for c in compare(record(iqr=0.4), record(ms=10.6, iqr=0.4), tolerances)}
    assert noisy["regression[ms_per_token]"].passed
    better = {c.name: c for c in compare(record(), record(ms=5.0, tps=200.0, acc=90.0), tolerances)}
    assert all(c.passed for c in better.values()) and "improvement" in better["regression[ms_per_token]"].message


def write_report(path, records, gpu="H100"):
    data = {"schema_version": 1, "environment": {"device": "cuda", "gpu": {"name": gpu}, "versions": {}},
            "models": {}, "records": [r.as_dict() for r in records]}
    path.write_text(json.dumps(data))
    return path


def test_cli_compare_exit_codes(tmp_path, capsys):
    base = write_report(tmp_path / "base.json", [record()])
    same = write_report(tmp_path / "same.json", [record(ms=10.1)])
    slow = write_report(tmp_path / "slow.json", [record(ms=12.0)])
    other_gpu = write_report(tmp_path / "a100.json", [record(ms=12.0, device_name="A100")])
    assert main(["compare", str(base), str(same)]) == 0
    assert main(["compare", str(base), str(slow)]) == 1
    assert "**REGRESSION**" in capsys.readouterr().out
    assert main(["compare", str(base), str(other_gpu)]) == 2
    assert "refusing to compare" in capsys.readouterr().err
    assert main(["compare", str(base), str(other_gpu), "--force"]) == 1
    (tmp_path / "corrupt.json").write_text('{"schema_version": 1, "reco')
    assert main(["compare", str(tmp_path / "corrupt.json"), str(same)]) == 2
    assert "corrupt.json" in capsys.readouterr().err


def test_cli_merge_and_journal_rebuild(tmp_path):
    first = write_report(tmp_path / "a.json", [record()])
    second_record = record(device_name="H200")
    second_record.test = "t.py::t[m-fp16-greedy]"
    second_record.precision = "fp16"
    second = write_report(tmp_path / "b.json", [second_record], gpu="H200")
    assert main(["merge", str(first), str(second), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "quantbench.json").read_text())
    assert [r["device_name"] for r in merged["records"]] == ["H100", "H200"]
    assert len(merged["merged_from"]) == 2 and (tmp_path / "merged" / "quantbench.md").is_file()
    journal = tmp_path / "run" / "quantbench.jsonl"
    journal.parent.mkdir()
    journal.write_text(json.dumps(record().as_dict()) + "\n" + json.dumps(second_record.as_dict())[:40])
    assert main(["report", str(journal), "--from-journal"]) == 0
    rebuilt = json.loads((tmp_path / "run" / "quantbench.json").read_text())
    assert len(rebuilt["records"]) == 1 and "m-nf4-greedy" in rebuilt["records"][0]["test"]
    # A journal from before the environment line: the device its records name, the rest marked unknown
    assert rebuilt["environment"]["git_commit"] is None and "not recorded" in rebuilt["environment"]["command"]
    assert "library versions and commit not recorded" in (tmp_path / "run" / "quantbench.md").read_text()




def test_gate_fails_a_slowed_run_and_passes_an_identical_one(pytester, tiny_model_dir, check_gate):
    # The tiny model decodes in about 1 ms/token, and a busy 2-core machine can multiply that: an absolute 50 ms
    # tolerance ignores such jitter and still catches a 200 ms/token slowdown.
    check_gate(f"--qb-model=tiny={tiny_model_dir}", 50, 0.2, pytester.runpytest)


def test_corrupt_baseline_is_a_usage_error(pytester, tiny_model_dir, slowable_speed_test):
    (pytester.path / "broken.json").write_text("{\"schema_version\": 1, \"recor")
    result = pytester.runpytest(f"--qb-model=tiny={tiny_model_dir}", "--qb-baseline=broken.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*broken.json: not a readable quantbench report*"])


def test_step_summary_gets_the_markdown(pytester, tiny_model_dir, monkeypatch, slowable_speed_test):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.runpytest(f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=fp32", "--qb-decoding=greedy",
                       "--qb-repeats=1", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert "# quantbench report" in summary.read_text() and "## By precision" in summary.read_text()


def test_cli_on_the_committed_cpu_report(tmp_path, capsys):
    from pathlib import Path

    report = Path(__file__).parent.parent / "docs" / "results" / "cpu" / "quantbench.json"
    assert main(["report", str(report), "--out", str(tmp_path)]) == 0
    assert "## Recommendations" in (tmp_path / "quantbench.md").read_text()
    assert main(["compare", str(report), str(report)]) == 0
    assert "0 regressions" in capsys.readouterr().out
    copy = tmp_path / "copy.json"  # the same report under another name: its records once
    copy.write_text(report.read_text())
    assert main(["merge", str(report), str(copy), "--out", str(tmp_path / "m")]) == 0
    assert len(load_report(tmp_path / "m" / "quantbench.json")["records"]) == len(load_report(report)["records"])
