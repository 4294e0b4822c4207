"""Nothing finished is lost: an out-of-memory load, a Ctrl-C mid-session, a killed xdist worker (shown as crashed)."""

from __future__ import annotations

import json

import pytest

from pytest_quantbench.cli import main

SPEED_TEST = """
def test_speed(quantbench):
    quantbench.measure(max_new_tokens=4)
"""
FAST = ("--qb-repeats=1", "--qb-warmup=0", "-p", "no:cacheprovider")


def journal_records(pytester):
    """The journal's records, between its first line (the environment of the run) and the session's end line."""
    lines = [json.loads(line) for line in (pytester.path / ".quantbench" / "quantbench.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"environment"}
    return [line for line in lines[1:] if set(line) != {"session_end"}]


def test_out_of_memory_fails_only_its_case(pytester, tiny_model_dir):
    pytester.makeconftest("""
        import torch
        import transformers

        real = transformers.AutoModelForCausalLM.from_pretrained

        def from_pretrained(*args, **kwargs):  # the bf16 load runs out of memory, as a too-large model would
            if kwargs.get("dtype") is torch.bfloat16:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(*args, **kwargs)

        transformers.AutoModelForCausalLM.from_pretrained = from_pretrained
    """)
    pytester.makepyfile(SPEED_TEST)
    # In a subprocess: the patched loader must not leak into other in-process sessions.
    result = pytester.runpytest_subprocess(f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=bf16,fp32",
                                           "--qb-decoding=greedy,beam2", *FAST)
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*out of memory loading tiny in bf16 on cpu: CUDA out of memory*"])
    records = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())["records"]
    assert sorted((r["precision"], r["outcome"]) for r in records) == [
        ("bf16", "failed"), ("bf16", "failed"), ("fp32", "passed"), ("fp32", "passed")]


def test_keyboard_interrupt_keeps_finished_records(pytester, tiny_model_dir):
    pytester.makepyfile("""
        def test_speed(quantbench):
            if quantbench.case.precision.name == "bf16":
                raise KeyboardInterrupt
            quantbench.measure(max_new_tokens=4)
    """)
    result = pytester.runpytest_subprocess(f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=fp32,bf16",
                                           "--qb-decoding=greedy", *FAST)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    finished = journal_records(pytester)
    assert [(r["precision"], r["outcome"]) for r in finished] == [("fp32", "passed")]
    assert finished[0]["metrics"]["tokens_per_s"] > 0
    journal = pytester.path / ".quantbench" / "quantbench.jsonl"
    assert main(["report", str(journal), "--from-journal", "--out", str(pytester.path / "rebuilt")]) == 0
    rebuilt = json.loads((pytester.path / "rebuilt" / "quantbench.json").read_text())
    assert [r["precision"] for r in rebuilt["records"]] == ["fp32"]
    # The run's own environment (its command line), not that of whoever rebuilds the report
    assert "--qb-precision=fp32,bf16" in rebuilt["environment"]["command"]
    assert "Rebuilt from the run's journal" in (pytester.path / "rebuilt" / "quantbench.md").read_text()


def test_killed_xdist_worker_shows_as_crashed_and_loses_nothing_finished(pytester, tiny_model_dir):
    """The bf16-greedy test kills its worker on its first run; xdist runs it again on a new worker. The report keeps
    both the crash (with the worker and xdist's reason) and the rerun, and every fp32 result."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    path = pytester.makepyfile("""
        import os, pathlib, signal

        def test_speed(quantbench):
            first_run = pathlib.Path("killed-once")
            if quantbench.case.id == "tiny-bf16-greedy" and not first_run.exists():
                first_run.write_text("")
                os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-test, as under the OOM killer
            quantbench.measure(max_new_tokens=4)
    """)
    result = pytester.runpytest_subprocess("-n", "2", f"--qb-model=tiny={tiny_model_dir}",
                                           "--qb-precision=fp32,bf16", "--qb-decoding=greedy,beam2", *FAST)
    result.assert_outcomes(passed=4, failed=1)  # xdist's own report of the crash is a failure
    crashed_test = f"{path.name}::test_speed[tiny-bf16-greedy]"
    crash_line = ("crashed: worker 'gw*' crashed while running '*test_speed?tiny-bf16-greedy?' (node down: *); "
                  "its rerun on gw* passed")
    result.stdout.fnmatch_lines([crash_line])
    report = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())
    for records in (journal_records(pytester), report["records"]):
        outcomes = sorted((r["precision"], r["decoding"], r["outcome"]) for r in records)
        assert outcomes == [("bf16", "beam2", "passed"), ("bf16", "greedy", "crashed"), ("bf16", "greedy", "passed"),
                            ("fp32", "beam2", "passed"), ("fp32", "greedy", "passed")]
        crash = next(r for r in records if r["outcome"] == "crashed")
        assert crash["test"] == crashed_test and crash["worker"].startswith("gw")
        assert f"worker '{crash['worker']}' crashed" in crash["reason"]
    markdown = (pytester.path / ".quantbench" / "quantbench.md").read_text()
    assert f"| `{crashed_test.split('::', 1)[1]}` | crashed | worker '" in markdown
    assert markdown.splitlines()[2].startswith("**FAILED**: 1 crashed, 4 passed")
