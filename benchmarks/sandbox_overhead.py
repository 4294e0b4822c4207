"""Per-sample overhead of the sandbox: from the harness's start to the verdict, for a trivial program.

    PYTHONPATH=. python benchmarks/sandbox_overhead.py [--repeats 30]

Prints the median and interquartile range of: the bare interpreter start (the floor every process pays), the
boundary's start (bwrap and the interpreter inside it, no harness), and a whole sample (harness + boundary + worker
+ one call of the tests) under bwrap and under the guard, one sample at a time. Also the one-off cost of building the
boundary (its `ldd` listing and, as root, the view of hard links) in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from pytest_quantbench.sandbox import Limits, Sample, get_boundary, run_sample, unavailable
from pytest_quantbench.sandbox import boundary as boundaries

TRIVIAL = Sample("def add(a, b):\n    \"\"\"a + b\"\"\"\n", "    return a + b\n",
                 "def check(candidate):\n    assert candidate(2, 3) == 5\n", "add")


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def summary(name: str, times: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(times, n=4)
    return f"{name:<34} median {median * 1000:7.1f} ms   IQR {q1 * 1000:6.1f}-{q3 * 1000:6.1f} ms   (n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    python = [boundaries.interpreter(), *boundaries.PYTHON_FLAGS]
    print(summary("interpreter start (python -S)", timed(lambda: subprocess.run([*python, "-c", "pass"], check=True),
                                                         args.repeats)))
    start = time.perf_counter()
    try:
        chosen = get_boundary("bwrap", Limits())  # the first call in a process lists libraries (and makes the view)
        print(f"{'boundary built once (ldd, view)':<34} {(time.perf_counter() - start) * 1000:7.1f} ms")
    except RuntimeError:
        pass
    why = unavailable("bwrap")
    if why:
        print(f"bwrap: {why}")
    else:
        inside = [*chosen.command[:-1], "-c", "pass"]
        kwargs = {"user": chosen.run_as, "group": chosen.run_as, "extra_groups": []} if chosen.run_as else {}
        print(summary("bwrap + interpreter start", timed(lambda: subprocess.run(inside, cwd="/", check=True, **kwargs),
                                                         args.repeats)))
    for name in ("bwrap", "guard"):
        if name == "bwrap" and why:
            continue
        results = []
        times = timed(lambda: results.append(run_sample(TRIVIAL, Limits(), name)), args.repeats)  # noqa: B023
        assert all(r.passed for r in results), [r.reason for r in results if not r.passed]
        print(summary(f"whole sample, {name}", times))
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
