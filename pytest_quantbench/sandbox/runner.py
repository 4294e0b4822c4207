"""The parent's side: hand each sample to a harness process and read back its verdict."""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from . import boundary as boundaries
from . import codec

BOUNDARIES = ("bwrap", "guard")
HARNESS = Path(__file__).resolve().with_name("harness.py")
HARNESS_GRACE_S = 10.0  # on top of a sample's timeout, for the harness itself to start and clean up


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock, from the sandbox's start to the verdict
    memory_mb: int = 512  # address space
    file_size_mb: int = 16  # largest file the program (or its output) may write
    open_files: int = 64
    cpu_s: float | None = None  # CPU seconds; None: the wall-clock timeout, rounded up
    disk_mb: int = 64  # the work directory's tmpfs (bwrap)

    def for_harness(self) -> dict:
        return {"timeout_s": self.timeout_s, "cpu_s": max(1, math.ceil(self.cpu_s or self.timeout_s)),
                "memory_mb": self.memory_mb, "file_size_mb": self.file_size_mb, "open_files": self.open_files}


@dataclass(frozen=True)
class Sample:
    """A program to judge: `prompt + completion` runs in the sandbox; `test` (defining `check`) runs outside it,
    with the prompt's helpers, and is called as `check(entry_point)`."""

    prompt: str
    completion: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class SampleResult:
    passed: bool
    status: str  # passed, failed, timeout, or error (the harness or the problem's own tests broke)
    reason: str  # empty when passed
    duration_s: float
    boundary: str  # bwrap or guard
    run_id: str  # in the worker's command line and environment (QB_SAMPLE), to find it on the host
    output: str = field(default="", repr=False)  # the tail of what the program printed


def get_boundary(name: str, limits: Limits) -> boundaries.Boundary:
    """The named boundary; ValueError for an unknown name, RuntimeError (with what to do) when bwrap is missing."""
    if name not in BOUNDARIES:
        raise ValueError(f"unknown sandbox {name!r}; valid: {', '.join(BOUNDARIES)}")
    return boundaries.bwrap(limits.disk_mb) if name == "bwrap" else boundaries.guard()


def run_sample(sample: Sample, limits: Limits = Limits(), boundary: str = "bwrap") -> SampleResult:
    """Judge one sample in its own harness and sandbox."""
    chosen = get_boundary(boundary, limits)
    run_id = secrets.token_hex(8)
    job = {"prompt": sample.prompt, "completion": sample.completion, "test": sample.test,
           "entry_point": sample.entry_point, "run_id": run_id, "limits": limits.for_harness(),
           "boundary": {"name": chosen.name, "command": list(chosen.command), "run_as": chosen.run_as,
                        "workdir": chosen.workdir}}
    start = time.perf_counter()
    harness = subprocess.Popen([boundaries.interpreter(), *boundaries.PYTHON_FLAGS, str(HARNESS)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
                               start_new_session=True)
    try:
        stdout, stderr = harness.communicate(codec.encode(job), timeout=limits.timeout_s + HARNESS_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(harness.pid, signal.SIGKILL)
        stdout, stderr = harness.communicate()
    duration = time.perf_counter() - start
    try:
        verdict = codec.decode(stdout)
        status, reason, output = verdict["status"], verdict["reason"], verdict["output"]
    except (ValueError, KeyError, TypeError):  # CodecError is a ValueError
        why = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {harness.returncode}"]
        status, reason, output = "error", f"the harness gave no verdict: {why[0][:codec.REASON_CHARS]}", ""
    return SampleResult(status == "passed", status, reason, duration, chosen.name, run_id, output)


def run_many(samples: list[Sample], limits: Limits = Limits(), boundary: str = "bwrap",
             workers: int | None = None) -> list[SampleResult]:
    """Judge samples concurrently (each in its own sandbox), results in input order."""
    workers = workers or max(1, min(len(samples), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda sample: run_sample(sample, limits, boundary), samples))


PROBE = Sample("def add(a, b):\n", "    return a + b\n", "def check(candidate):\n    assert candidate(2, 3) == 5\n",
               "add")


def unavailable(boundary: str = "bwrap") -> str | None:
    """Why samples cannot run in `boundary` on this machine (None: they can), from one trivial sample."""
    return _probe(boundary, shutil.which("bwrap"))


@cache
def _probe(boundary: str, bwrap: str | None) -> str | None:
    try:
        result = run_sample(PROBE, Limits(timeout_s=30.0), boundary)
    except RuntimeError as error:
        return str(error)
    if result.passed:
        return None
    detail = (result.output.strip().splitlines()[-1:] or [result.reason])[0][:codec.REASON_CHARS]
    if boundary == "bwrap":
        return (f"bubblewrap is installed but does not run here ({detail}): it needs user namespaces (Debian: "
                "sysctl kernel.unprivileged_userns_clone=1); or pass --qb-sandbox guard for the weaker in-process guard")
    return f"the {boundary} sandbox does not work here ({detail})"
