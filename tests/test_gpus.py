"""GPU assignment under pytest-xdist, checked on the CPU: each worker gets its own block of the visible GPUs."""

from __future__ import annotations

import pytest

from pytest_quantbench.gpus import worker_gpus


def test_worker_gpus_blocks():
    gpus = ["0", "1", "2", "3"]
    assert worker_gpus("gw0", 1, gpus) == ["0"] and worker_gpus("gw3", 1, gpus) == ["3"]
    assert worker_gpus("gw1", 2, gpus) == ["2", "3"]
    assert worker_gpus("gw0", 2, ["4", "6"]) == ["4", "6"]  # an already restricted CUDA_VISIBLE_DEVICES
    with pytest.raises(ValueError, match="worker gw2 needs GPUs 4..5 .2 per worker. but only 4 are visible"):
        worker_gpus("gw2", 2, gpus)


RECORD_GPUS = """
import os

def test_which(worker_id):
    with open(f"gpus-{worker_id}.txt", "w") as handle:
        handle.write(os.environ["CUDA_VISIBLE_DEVICES"])

def test_which_too(worker_id):
    test_which(worker_id)
"""


def test_each_xdist_worker_is_pinned_to_its_gpus(pytester, monkeypatch):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    pytester.makepyfile(RECORD_GPUS)
    result = pytester.runpytest_subprocess("-n", "2", "--qb-device=cuda", "--qb-gpus-per-worker=2", "-p",
                                           "no:cacheprovider")
    result.assert_outcomes(passed=2)
    seen = {path.stem: path.read_text() for path in pytester.path.glob("gpus-gw*.txt")}
    assert seen and set(seen.values()) <= {"0,1", "2,3"}
    assert all(seen[worker] == {"gpus-gw0": "0,1", "gpus-gw1": "2,3"}[worker] for worker in seen)


def test_too_few_gpus_is_a_clear_error(pytester, monkeypatch):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pytester.makepyfile(RECORD_GPUS)
    result = pytester.runpytest_subprocess("-n", "2", "--qb-device=cuda", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*worker gw1 needs GPUs 1..1 (1 per worker) but only 1 are visible (0)*"])
