"""Where quantbench keeps what it computed once (converted GGUFs, quantized checkpoints, synthetic models, scores,
fidelity summaries), file hashes, and the on-disk cache of log-likelihood results.

The score cache: the baseline's scores are the expensive part of a session that re-evaluates the baseline precision
for every threshold.
The key holds everything that changes a number: the model's identity (file sha256 or hub revision), the precision
and its parameters, the device (and for bitsandbytes' 4-bit layers on a CPU, which kernel path they ran), the
versions of torch, transformers, bitsandbytes and this package, this cache's format, and the exact request texts (so a change of prompt format, few-shot examples or task version that changes a
prompt is a different key). A model without a known identity (a hub id with no resolved revision, a directory of
several weight files) is never cached: lm-eval's request cache is not keyed by model, and two models sharing one
cache entry would be a silent error. One JSON file per key under `<cache root>/scores/`; `QB_SCORE_CACHE=0`
turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from .results import package_version, write_atomic


def cache_root() -> Path:
    return Path(os.environ.get("QB_CACHE_DIR") or Path.home() / ".cache" / "pytest_quantbench")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


FORMAT = 2  # bump when scoring.py changes a number
LIBRARIES = ("torch", "transformers", "bitsandbytes", "pytest-quantbench")


def identity(handle) -> dict | None:
    """What identifies the numbers a loaded model gives, or None when the weights cannot be identified."""
    source = dict(getattr(handle, "source", None) or {})
    if not (source.get("sha256") or source.get("sha256_16") or source.get("revision")):
        return None
    source.pop("note", None)
    precision = handle.precision
    params = precision.params(handle.device) if hasattr(precision, "params") else {}
    kernel = (getattr(handle, "extra", None) or {}).get("cpu_4bit_kernel")  # bf16 activations or not, per CPU
    return {"format": FORMAT, "source": source, "precision": precision.name, "params": params,
            "device": handle.device, "versions": {name: package_version(name) for name in LIBRARIES},
            **({"cpu_4bit_kernel": kernel} if kernel else {})}


def cache_key(ident: dict, kind: str, payload) -> str:
    text = json.dumps({"identity": ident, "kind": kind, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached(handle, kind: str, payload, compute: Callable[[], list]) -> list:
    """`compute()`'s result for this (model, precision, request kind, payload), from disk when it was computed
    before with the same key."""
    ident = identity(handle)
    if ident is None or os.environ.get("QB_SCORE_CACHE") == "0":
        return compute()
    path = cache_root() / "scores" / f"{cache_key(ident, kind, payload)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))["result"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is recomputed and rewritten
    result = compute()
    write_atomic(path, json.dumps({"identity": ident, "kind": kind, "result": [list(r) for r in result]}))
    return result
