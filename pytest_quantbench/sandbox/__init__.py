"""Judge model-written code so that it can reach neither the machine nor its own verdict.

Each sample gets a harness process (trusted, `harness.py`) that starts a worker (`worker.py`) inside the boundary
(`boundary.py`: bubblewrap namespaces as uid 65534, or the weaker in-process guard of `guard.py`), with rlimits on
CPU, memory, file size, open files and processes. The worker loads the program; the harness runs the problem's tests
itself, against a proxy of the entry point whose calls and answers cross a pipe as plain, size-capped values
(`codec.py`). The harness reports to the parent (`runner.py`) on a channel the sandbox never holds.
"""

from .runner import BOUNDARIES, Limits, Sample, SampleResult, get_boundary, run_many, run_sample, unavailable

__all__ = ["BOUNDARIES", "Limits", "Sample", "SampleResult", "get_boundary", "run_many", "run_sample", "unavailable"]
