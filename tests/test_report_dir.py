"""No result lost in the report directory: every session keeps its own journal, one session writes at a time, and a
read-only, full or blocked directory is a clear error, never an INTERNALERROR."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from pytest_quantbench.cli import main, read_journal
from pytest_quantbench.report_dir import ReportDir
from pytest_quantbench.results import write_atomic

FOUR_TESTS = """
import os, pathlib, signal

def test_a(quantbench):
    pathlib.Path("ran").write_text("")

def test_b(quantbench):
    pass

def test_c(quantbench):
    pass

def test_d(quantbench):
    if os.environ.get("QB_TEST_DIE"):  # the whole session dies here, as under the OOM killer
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("QB_TEST_FILL"):  # the disk fills up mid-session
        fill(os.environ["QB_TEST_FILL"])

def fill(directory):
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(4096))
        except OSError:
            pass
"""
FAST = ("--qb-precision=fp32", "--qb-decoding=greedy", "-p", "no:cacheprovider")


@pytest.fixture
def tiny(tiny_model_dir):
    return f"--qb-model=tiny={tiny_model_dir}"


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs of the given size (root only): a disk that really fills up or really is read-only."""
    mounted = []

    def mount(size: str = "256k"):
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        if os.geteuid() != 0 or subprocess.run(command, capture_output=True, check=False).returncode:
            pytest.skip("mounting a tmpfs needs root and a system that allows it")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory) -> None:
    with open(directory / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(4096))
        except OSError:
            pass


def session_journals(report_dir) -> list:
    return sorted((report_dir / "sessions").glob("*/quantbench.jsonl"))


def recorded_tests(journal) -> list[str]:
    return [r.test.split("::")[-1] for r in read_journal(journal)[0]]


def test_second_session_keeps_a_crashed_sessions_results(pytester, tiny, monkeypatch):
    pytester.makepyfile(FOUR_TESTS)
    report_dir = pytester.path / ".quantbench"
    monkeypatch.setenv("QB_TEST_DIE", "1")
    crashed = pytester.runpytest_subprocess(tiny, *FAST)
    assert crashed.ret == -9  # killed: no report, only the journal of its three finished tests
    monkeypatch.delenv("QB_TEST_DIE")
    [first] = session_journals(report_dir)
    assert recorded_tests(first) == [f"test_{t}[tiny-fp32-greedy]" for t in "abc"]

    second = pytester.runpytest(tiny, *FAST)
    second.assert_outcomes(passed=4)
    shown = first.relative_to(pytester.path)
    second.stdout.fnmatch_lines(["journal: .quantbench/sessions/*/quantbench.jsonl",
                                 (f"quantbench: the previous session in .quantbench did not finish: its 3 finished "
                                  f"results are in {shown}; `quantbench report {shown} --from-journal` rebuilds its "
                                  "report")])
    [new] = set(session_journals(report_dir)) - {first}
    assert len(recorded_tests(first)) == 3 and len(recorded_tests(new)) == 4
    assert (report_dir / "quantbench.jsonl").resolve() == new
    assert main(["report", str(first), "--from-journal"]) == 0
    rebuilt = json.loads((first.parent / "quantbench.json").read_text())
    assert [r["test"].split("::")[-1] for r in rebuilt["records"]] == recorded_tests(first)
    assert len(json.loads((report_dir / "quantbench.json").read_text())["records"]) == 4  # the second session's

    third = pytester.runpytest(tiny, *FAST)  # after a session that finished: nothing to warn about
    third.assert_outcomes(passed=4)
    third.stdout.no_fnmatch_line("*did not finish*")
    assert len(session_journals(report_dir)) == 3


def test_journal_of_an_older_version_is_moved_not_overwritten(pytester, tiny):
    pytester.makepyfile(FOUR_TESTS)
    old = pytester.path / ".quantbench" / "quantbench.jsonl"
    old.parent.mkdir()
    record = {"test": "old.py::test_x[tiny-fp32-greedy]", "model": "tiny", "precision": "fp32", "decoding": "greedy",
              "device": "cpu"}
    old.write_text(json.dumps({"environment": {"device": "cpu", "command": "pytest old"}}) + "\n" + json.dumps(record)
                   + "\n")
    result = pytester.runpytest(tiny, *FAST)
    result.assert_outcomes(passed=4)
    [kept] = list((pytester.path / ".quantbench" / "sessions").glob("*-earlier/quantbench.jsonl"))
    result.stdout.fnmatch_lines([("quantbench: kept the earlier journal .quantbench/quantbench.jsonl (1 finished "
                                 f"result) as {kept.relative_to(pytester.path)}; *")])
    assert recorded_tests(kept) == ["test_x[tiny-fp32-greedy]"]
    assert old.is_symlink() and len(recorded_tests(old)) == 4


def test_concurrent_session_is_a_usage_error_before_any_test_runs(pytester, tiny):
    pytester.makepyfile(FOUR_TESTS)
    holder = ReportDir(pytester.path / ".quantbench")
    holder.claim("pytest benchmarks --elsewhere")
    try:
        blocked = pytester.runpytest(tiny, *FAST)
    finally:
        holder.release()
    assert blocked.ret == pytest.ExitCode.USAGE_ERROR
    blocked.stderr.fnmatch_lines([(f"ERROR: another quantbench session is writing .quantbench (pid {os.getpid()} on "
                                  "* since *: pytest benchmarks --elsewhere): let it finish, or give this session its "
                                  "own --qb-report-dir")])
    assert not (pytester.path / "ran").exists() and session_journals(pytester.path / ".quantbench") == []
    pytester.runpytest(tiny, *FAST).assert_outcomes(passed=4)  # once it is released


def test_session_without_quantbench_tests_leaves_the_report_dir_alone(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert not (pytester.path / ".quantbench").exists()


def unwritable_dirs(tmp_path, tmpfs, kind):
    if kind == "under a file":
        (tmp_path / "a-file").write_text("")
        return tmp_path / "a-file" / "reports", "Not a directory"
    disk = tmpfs()
    if kind == "full":
        fill(disk)
        return disk / "reports", "No space left on device"
    (disk / "reports").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    return disk / "reports", "Read-only file system"


@pytest.mark.parametrize("kind", ["under a file", "read-only", "full"])
def test_unwritable_report_dir_is_a_usage_error_before_any_test_runs(pytester, tiny, tmp_path, tmpfs, kind):
    pytester.makepyfile(FOUR_TESTS)
    report_dir, reason = unwritable_dirs(tmp_path, tmpfs, kind)
    result = pytester.runpytest(tiny, f"--qb-report-dir={report_dir}", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([(f"ERROR: the report directory {report_dir} cannot be written ({reason}): choose "
                                 "another with --qb-report-dir")])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / "ran").exists()


def test_disk_full_mid_session_keeps_the_journal_and_fails_the_run(pytester, tiny, tmpfs, tmp_path, monkeypatch):
    pytester.makepyfile(FOUR_TESTS)
    disk = tmpfs("256k")
    monkeypatch.setenv("QB_TEST_FILL", str(disk))
    result = pytester.runpytest(tiny, f"--qb-report-dir={disk / 'reports'}", *FAST)
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the tests passed, their results could not all be saved
    output = result.stdout.str()
    assert "INTERNALERROR" not in output + result.stderr.str()
    result.stdout.fnmatch_lines(["quantbench error: could not write the report (No space left on device*): the "
                                 "journal * keeps this session's results*"
                                 if "could not write the journal" not in output else
                                 "quantbench error: could not write the journal * (No space left on device)*"])
    [journal] = session_journals(disk / "reports")
    assert recorded_tests(journal)[:3] == [f"test_{t}[tiny-fp32-greedy]" for t in "abc"]  # journaled before the fill
    assert main(["report", str(journal), "--from-journal", "--out", str(tmp_path / "rebuilt")]) == 0
    assert not list((disk / "reports").glob(".quantbench*"))  # no temporary file left behind


def test_journal_write_failure_stops_journaling_and_keeps_what_was_written(tmpfs, capsys):
    disk = tmpfs("256k")
    report_dir = ReportDir(disk / "reports")
    report_dir.claim("pytest benchmarks")
    record = {"test": "t.py::test_a[m-fp32-greedy]", "model": "m", "precision": "fp32", "decoding": "greedy",
              "device": "cpu"}
    report_dir.write(record, lambda: {"device": "cpu"})
    fill(disk)
    report_dir.write({**record, "test": "t.py::test_b[m-fp32-greedy]", "reason": "x" * 20_000}, dict)
    report_dir.write({**record, "test": "t.py::test_c[m-fp32-greedy]"}, dict)  # not appended after a failure
    report_dir.finish(0, 3)
    report_dir.release()
    assert report_dir.journal_failed and report_dir.errors == [
        (f"could not write the journal {report_dir.journal} (No space left on device): results from "
        "t.py::test_b[m-fp32-greedy] on are not journaled")]
    assert recorded_tests(report_dir.journal) == ["test_a[m-fp32-greedy]"]  # the cut-off line is dropped
    assert "dropped a truncated last line" in capsys.readouterr().err


def test_blocked_report_file_is_an_error_line_not_internalerror(pytester, tiny):
    pytester.makepyfile(FOUR_TESTS)
    (pytester.path / ".quantbench" / "quantbench.md").mkdir(parents=True)  # a directory where the Markdown goes
    result = pytester.runpytest(tiny, *FAST)
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([("quantbench error: could not write the report (Is a directory*quantbench.md): the "
                                 "journal .quantbench/sessions/*/quantbench.jsonl keeps this session's results; *")])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())["records"]  # written first
    assert not list((pytester.path / ".quantbench").glob(".quantbench.md.*"))


def test_failed_writes_leave_the_old_report_whole(tmpfs):
    disk = tmpfs("256k")
    page, plot = disk / "quantbench.html", disk / "plots" / "heatmap.png"
    write_atomic(page, "<html>the earlier report</html>")
    plot.parent.mkdir()
    plot.write_bytes(b"earlier png")
    fill(disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(page, "<html>" + "x" * 100_000 + "</html>")
    assert page.read_text() == "<html>the earlier report</html>"
    matplotlib = pytest.importorskip("matplotlib", reason="plots need the matplotlib extra")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pytest_quantbench.report.plots import _save

    fig, ax = plt.subplots()
    ax.plot(range(1000))
    with pytest.raises(OSError):
        _save(fig, plot)
    assert plot.read_bytes() == b"earlier png"
    assert sorted(p.name for p in disk.rglob("*")) == ["filler", "heatmap.png", "plots", "quantbench.html"]


def test_report_files_are_readable_by_others(tmp_path):
    write_atomic(tmp_path / "quantbench.json", "{}")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "quantbench.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize(("content", "message"), [
    ("", "the journal holds no test records: nothing to report"),
    ('{"environment": {"device": "cpu"}}\n', "the journal holds no test records: nothing to report"),
    ('[1, 2]\n{"environment": {}}\n', ":1: not a quantbench record (a JSON list, not an object)"),
    ('{"environment": {}}\n["a list last"]\n', ":2: not a quantbench record (a JSON list, not an object)"),
])
def test_bad_journal_is_a_clear_error(tmp_path, capsys, content, message):
    journal = tmp_path / "quantbench.jsonl"
    journal.write_text(content)
    assert main(["report", str(journal), "--from-journal"]) == 2
    err = capsys.readouterr().err
    assert err == f"quantbench report: {journal}{message if message.startswith(':') else ': ' + message}\n"
    assert not (tmp_path / "quantbench.json").exists()
