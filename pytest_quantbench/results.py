"""The record of one benchmark test, the environment it ran in, and the JSON report file."""

from __future__ import annotations

import json
import numbers
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

SCHEMA_VERSION = 1
# Recorded in every report; the regression gate names any that differ from the baseline's run (kernel libraries
# among them: a new version is a new kernel).
LIBRARIES = ("torch", "transformers", "accelerate", "bitsandbytes", "torchao", "gptqmodel", "hqq", "gemlite",
             "triton", "pytest", "pytest-quantbench")


@dataclass(frozen=True)
class Metric:
    """What a metric is: its unit, which way is better, how reports show it, what bounds it and how its noise is known.

    `label`: its column in the report's per-case tables (None: not a column). `percent`: a fraction shown as a
    percentage. `threshold`: the Thresholds field that sets its limit, if any. `spread` names the metric of the same
    unit that holds its within-run spread (the IQR over the timed repeats); `noise` is its kind of between-run
    variation, which picks the default in NOISE_DEFAULTS while a baseline has too few runs: "decode" (the decode steps
    alone, compiled in compiled mode), "timing" (a whole generation: the prefill and the Python around the steps stay
    eager in either mode), "memory", "exact" (figures that do not vary between runs of one commit), "paired"
    (compared item by item), or None for a metric the regression gate does not take."""

    unit: str
    higher_is_better: bool
    label: str | None = None
    percent: bool = False
    threshold: str | None = None
    spread: str | None = None
    noise: str | None = "timing"


# The one table of metrics: the report's columns (in this order), the thresholds' directions and units, and the
# regression gate's noise. Adding a metric: an entry here and the tracker that measures it.
METRICS: dict[str, Metric] = {
    "footprint_mb": Metric("MB", False, "footprint (MB)", threshold="max_footprint_mb", noise="exact"),
    "peak_mem_mb": Metric("MB", False, "peak mem (MB)", threshold="max_memory_mb", noise="memory"),
    "ttft_ms": Metric("ms", False, "TTFT (ms)", spread="ttft_iqr_ms"),
    "ms_per_token": Metric("ms", False, "ms/token", threshold="max_ms_per_token", spread="ms_per_token_iqr",
                           noise="decode"),
    # The decode step its kernels alone would take (bound.py), and the measured step over it (1.05: 5% above).
    "bound_ms_per_token": Metric("ms", False, "bound ms/token", noise=None),
    "of_bound": Metric("", False, "of bound (%)", percent=True, noise=None),
    "ms_per_token_cv": Metric("", False, "ms/token CV (%)", percent=True, noise=None),
    "tokens_per_s": Metric("tokens/s", True, "tokens/s", threshold="min_tokens_per_s", spread="tokens_per_s_iqr"),
    # Every sequence of the batch (and every response of `sample`) counts; _per_seq is one sequence's.
    "decode_tokens_per_s": Metric("tokens/s", True, "decode tokens/s", spread="decode_tokens_per_s_iqr",
                                  noise="decode"),
    "decode_tokens_per_s_per_seq": Metric("tokens/s", True, "decode tokens/s/seq",
                                          spread="decode_tokens_per_s_per_seq_iqr", noise="decode"),
    "mbu": Metric("", True, "MBU (%)", percent=True, noise=None),
    "bound_mbu": Metric("", True, "MBU at bound (%)", percent=True, noise=None),
    "latency_ms": Metric("ms", False, "latency (ms)", spread="latency_iqr_ms"),
    "load_s": Metric("s", False, "load (s)"),
    "kl_mean": Metric("nats", False, threshold="max_kl", noise="exact"),
    "top1_agreement_pct": Metric("%", True, threshold="min_top1_agreement", noise="exact"),
    # Per task; compared item by item (paired) in points, so it has no relative noise default.
    "accuracy": Metric("pt", True, noise="paired"),
}
GATED_METRICS = tuple(name for name, metric in METRICS.items() if metric.noise is not None)

# Relative between-run variation assumed for a metric while its baseline holds fewer than MIN_HISTORY runs, by
# (device, mode). Measured on same-commit reruns (docs/results/cpu/regression-gate, docs/results/h200/regression-gate):
# on a quiet 2-core CPU ms/token moved -9% to +3% (a loaded one +43%); eager decoding on the H200 is host-bound and
# moved -14% to +44%; a compiled step replays a CUDA graph and moved -7% to +13%, but a whole generation keeps its
# eager prefill (tokens/s -29% in a pair whose ms/token moved +3%, 301 to 466 tokens/s across sessions).
NOISE_DEFAULTS: dict[tuple[str, str], dict[str, float]] = {
    ("cpu", "eager"): {"decode": 0.50, "timing": 0.50, "memory": 0.05, "exact": 0.0},
    ("cpu", "compiled"): {"decode": 0.50, "timing": 0.50, "memory": 0.05, "exact": 0.0},
    ("cuda", "eager"): {"decode": 0.75, "timing": 0.75, "memory": 0.02, "exact": 0.0},
    ("cuda", "compiled"): {"decode": 0.25, "timing": 0.75, "memory": 0.02, "exact": 0.0},
}
# The regression gate's default tolerances (--qb-fail-on, quantbench compare --fail-on).
DEFAULT_FAIL_ON = "ms_per_token:5%,tokens_per_s:5%,peak_mem_mb:2%,accuracy:1pt"
MIN_HISTORY = 3  # runs of a baseline before their own spread replaces the default
HISTORY_RUNS = 10  # runs a saved baseline keeps per test


@dataclass
class Record:
    """One test case: what ran (model, precision, decoding, device), what it measured, what it was held to."""

    test: str
    model: str
    precision: str
    decoding: str
    device: str
    outcome: str = "passed"  # passed, failed, skipped, or crashed (its xdist worker died)
    reason: str | None = None  # skip reason or failure message
    metrics: dict[str, float] = field(default_factory=dict)  # unit in every key: load_s, ms_per_token, ...
    accuracy_pct: dict[str, float] = field(default_factory=dict)  # task -> accuracy in percent
    task_details: dict[str, dict] = field(default_factory=dict)  # task -> n, categories, examples
    checks: list[dict] = field(default_factory=list)
    model_info: dict = field(default_factory=dict)  # source, file hash, family, precision parameters
    worker: str = "main"
    device_name: str = ""  # the GPU or CPU model: baselines compare only on the same one
    mode: str = "eager"  # eager (generate) or compiled (static cache + torch.compile)
    batch_size: int = 1  # prompts measure() decoded at once (each with its decoding's own sequences)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        """A record from its JSON form; ValueError naming the field that is missing or of the wrong type."""
        problem = record_problem(data)
        if problem:
            raise ValueError(problem)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# The JSON type of each record field, checked when a report, baseline or journal is read: a hand-edited or foreign
# file gets a message naming the field, not a crash (or a comparison silently skipped) far from the cause.
FIELD_TYPES = {"test": str, "model": str, "precision": str, "decoding": str, "device": str, "outcome": str,
               "reason": (str, type(None)), "metrics": dict, "accuracy_pct": dict, "task_details": dict,
               "checks": list, "model_info": dict, "worker": str, "device_name": str, "mode": str, "batch_size": int}
REQUIRED_FIELDS = ("test", "model", "precision", "decoding", "device")
# A metric whose key ends in its unit (load_s, ms_per_token, peak_mem_mb) is a number, or null when not measured;
# other metrics may also be a flag or a name (unstable, bandwidth_source).
UNIT_SUFFIXES = ("_s", "_ms", "_mb", "_pct", "_per_token", "_gbps", "_cv", "_iqr")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy scalars count


def _shown(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def record_problem(data) -> str | None:
    """What keeps `data` from being a record, naming the field; None when it is one."""
    if not isinstance(data, dict):
        return f"expected a record (a JSON object), got {type(data).__name__} {_shown(data)}"
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for key, kind in FIELD_TYPES.items():
        if key in data and not isinstance(data[key], kind):
            expected = {dict: "an object", list: "a list", str: "a string", int: "an integer"}.get(
                kind, "a string or null")
            return f"field {key!r}: expected {expected}, got {_shown(data[key])}"
    for name, value in data.get("metrics", {}).items():
        if name.endswith(UNIT_SUFFIXES) and not (_is_number(value) or value is None):
            return f"metrics[{name!r}]: expected a number, got {_shown(value)}"
        if not isinstance(value, (numbers.Real, str, type(None))):
            return f"metrics[{name!r}]: expected a number, a flag or a name, got {_shown(value)}"
    for task, value in data.get("accuracy_pct", {}).items():
        if not _is_number(value):
            return f"accuracy_pct[{task!r}]: expected a number (percent), got {_shown(value)}"
    for index, check in enumerate(data.get("checks", [])):
        if not isinstance(check, dict):
            return f"checks[{index}]: expected an object, got {_shown(check)}"
    return None


def package_version(package: str) -> str | None:
    """The installed version of `package`, or None."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in LIBRARIES}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001  no NVML library or no driver: the report just leaves it out
        return None


def environment(device: str, command: str | None = None) -> dict:
    """What a reader needs to reproduce the numbers: hardware, library versions, commit and command line."""
    env = {
        "device": device,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": library_versions(),
        "git_commit": _git_commit(),
        "command": command or " ".join(sys.argv),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = {
                "name": props.name,
                "count": torch.cuda.device_count(),
                "memory_mb": props.total_memory / 2**20,
                "capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda,
                "driver": _nvidia_driver(),
            }
    except ImportError:
        pass
    return env


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return _cpu_name()


def device_label(env: dict) -> str:
    gpu = env.get("gpu")
    return gpu["name"] if gpu else f"cpu ({env.get('cpu')}, {env.get('cpu_count')} cores)"


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a report."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def replacing(path: Path):
    """A temporary path beside `path` (same suffix, so a plotting library picks the format from it) that replaces
    `path` when the block succeeds and is removed when it fails: `path` is the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the report readable by its owner only
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno:  # name the file being written, not the temporary one
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


JOURNAL_NAME = "quantbench.jsonl"


def start_journal(path: Path, env: dict) -> None:
    """A new journal whose first line is the environment, so that a report rebuilt from it names the machine,
    libraries and commit that ran, not the machine that rebuilds it. An existing file is never overwritten."""
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(json.dumps({"environment": env}, default=str) + "\n")


def journal_environment(records: list, env: dict | None) -> dict:
    """The environment a journal recorded; for an older journal without one, what its records say (the device),
    marked as not recorded."""
    if env:
        return env
    first = records[0] if records else None
    device = first.device if first else "cpu"
    name = first.device_name if first else None
    return {"device": device, **({"gpu": {"name": name}} if device == "cuda" else {"cpu": name}),
            "versions": {}, "git_commit": None,
            "command": "not recorded (a journal from before the environment line; versions unknown)"}


def append_journal(path: Path, record: dict) -> None:
    """Append one finished record as a JSON line, so a crash or Ctrl-C loses nothing already measured."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def end_journal(path: Path, exitstatus: int, records: int) -> None:
    """The last line of a session that ended (passed, failed or interrupted): a journal without it is a crash's."""
    append_journal(path, {"session_end": {"exitstatus": exitstatus, "records": records}})


def journal_ended(path: Path) -> bool:
    """Whether the session that wrote this journal ended, rather than crashed or was killed."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return False
    return isinstance(last, dict) and set(last) == {"session_end"}


def report_dict(records: list[Record], env: dict, models: dict[str, dict]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "models": models,
        "records": [r.as_dict() for r in records],
    }


def load_report(path: Path) -> dict:
    """Read a report written by `report_dict`; ValueError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable quantbench report ({error})") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION or not isinstance(data.get("records"), list):
        raise ValueError(f"{path}: not a quantbench report of schema version {SCHEMA_VERSION}")
    not_objects = [key for key in ("environment", "models") if not isinstance(data.get(key, {}), dict)]
    if not_objects:
        raise ValueError(f"{path}: {not_objects[0]!r} must be an object, got {_shown(data[not_objects[0]])}")
    for index, record in enumerate(data["records"]):
        problem = record_problem(record)
        if problem:
            test = f" ({record['test']})" if isinstance(record, dict) and isinstance(record.get("test"), str) else ""
            raise ValueError(f"{path}: record {index}{test}: {problem}")
    return data
