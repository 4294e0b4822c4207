"""Fidelity against the baseline precision: how far a quantized model's next-token distributions moved.

On a fixed prompt set (data/fidelity_prompts.jsonl) both precisions are teacher-forced on the same token ids, so
position i of one lines up with position i of the other. Per position:

- KL(baseline || candidate) over the baseline's top-k tokens plus one bucket for the rest of the mass: exact when the
  rest is empty (k >= vocabulary), otherwise a lower bound of the full KL (merging tokens never increases KL);
- top-1 agreement: both put their highest probability on the same token.

The baseline is summarized once (top-k token ids and log-probs, the log of the remaining mass) and kept in the
session and on disk, keyed by everything that changes it, so a quantized model is compared without loading the
baseline again. Token ids come from the model's tokenizer and nothing is decoded, so random-weight (synthetic)
models work too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Protocol

import numpy as np

from ..results import package_version

PROMPT_SET = "fidelity_prompts.jsonl"
PROMPT_SET_VERSION = "1"  # bump when the prompts change: cached baseline summaries are keyed by it
TOP_K = 256


class LogitsModel(Protocol):
    def token_ids(self, text: str) -> list[int]: ...

    def logprobs(self, ids: list[int]):
        """Log-softmax of the next-token logits at every position of `ids`: a [len(ids), vocab] tensor or array."""


class HandleLogits:
    """LogitsModel over a loaded ModelHandle: one unpadded forward pass per prompt."""

    def __init__(self, handle):
        self.handle = handle

    def token_ids(self, text: str) -> list[int]:
        return list(self.handle.tokenizer(text, add_special_tokens=False)["input_ids"])

    def logprobs(self, ids: list[int]):
        import torch

        model = self.handle.model
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0]
        return torch.log_softmax(logits.double(), dim=-1).cpu()


def load_prompts() -> list[str]:
    path = files("pytest_quantbench") / "data" / PROMPT_SET
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Summary:
    """The baseline's next-token distributions on the prompt set, reduced to what the comparison needs."""

    tokens: list[list[int]]  # the token ids per prompt, which the candidate is fed too
    top_ids: np.ndarray  # [positions, k] int64, most probable first
    top_logprobs: np.ndarray  # [positions, k] float64
    tail_logprob: np.ndarray  # [positions] float64: log of the probability outside the top k (-inf when none)

    def rows(self, start: int, stop: int) -> Summary:
        """The positions start..stop (tokens left out: only the comparison's arrays are sliced)."""
        return Summary([], self.top_ids[start:stop], self.top_logprobs[start:stop], self.tail_logprob[start:stop])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # xdist workers may write the same key at once
        np.savez(tmp, lengths=np.array([len(t) for t in self.tokens]), flat=np.array([t for tokens in self.tokens for t in tokens]),
                 top_ids=self.top_ids, top_logprobs=self.top_logprobs, tail_logprob=self.tail_logprob)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Summary:
        data = np.load(path)
        flat, tokens, start = data["flat"].tolist(), [], 0
        for length in data["lengths"].tolist():
            tokens.append(flat[start : start + length])
            start += length
        return cls(tokens, data["top_ids"], data["top_logprobs"], data["tail_logprob"])


def _as_numpy(rows) -> np.ndarray:
    return rows.numpy() if hasattr(rows, "numpy") else np.asarray(rows, dtype=np.float64)


def _top_k(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, largest first (ties: lower index first)."""
    k = min(k, logprobs.shape[1])
    if k == 1:
        top = logprobs.argmax(axis=1)[:, None]  # the first maximum, as the sort below would pick
        return top, np.take_along_axis(logprobs, top, axis=1)
    chosen = np.argpartition(-logprobs, k - 1, axis=1)[:, :k] if k < logprobs.shape[1] else \
        np.tile(np.arange(k), (logprobs.shape[0], 1))
    values = np.take_along_axis(logprobs, chosen, axis=1)
    order = np.lexsort((chosen, -values), axis=1)  # by value descending, then index
    chosen = np.take_along_axis(chosen, order, axis=1)
    return chosen, np.take_along_axis(logprobs, chosen, axis=1)


def _log_mass_outside(logprobs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log(sum of probabilities of the tokens not in `ids`), per row, computed without subtracting from 1."""
    masked = logprobs.copy()
    np.put_along_axis(masked, ids, -np.inf, axis=1)
    peak = masked.max(axis=1, keepdims=True)
    finite = np.isfinite(peak)
    safe_peak = np.where(finite, peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.where(finite[:, 0], np.log(np.exp(masked - safe_peak).sum(axis=1)) + safe_peak[:, 0], -np.inf)


def summarize(model: LogitsModel, prompts: list[str], k: int = TOP_K) -> Summary:
    """Teacher-force the prompts and keep the top-k distribution per position."""
    tokens, ids, values, tails = [], [], [], []
    for prompt in prompts:
        sequence = model.token_ids(prompt)
        if not sequence:
            continue
        logprobs = _as_numpy(model.logprobs(sequence))
        top_ids, top_values = _top_k(logprobs, k)
        tokens.append(sequence)
        ids.append(top_ids)
        values.append(top_values)
        tails.append(_log_mass_outside(logprobs, top_ids))
    return Summary(tokens, np.concatenate(ids), np.concatenate(values), np.concatenate(tails))


def kl_per_position(summary: Summary, candidate: np.ndarray) -> np.ndarray:
    """KL(baseline || candidate) per position over the baseline's top k plus the remaining-mass bucket (nats)."""
    cand_top = np.take_along_axis(candidate, summary.top_ids, axis=1)
    cand_tail = _log_mass_outside(candidate, summary.top_ids)
    p_top = np.exp(summary.top_logprobs)
    kl = (p_top * (summary.top_logprobs - cand_top)).sum(axis=1)
    p_tail = np.exp(summary.tail_logprob)
    with np.errstate(invalid="ignore"):
        tail_term = np.where(p_tail > 0, p_tail * (summary.tail_logprob - cand_tail), 0.0)
    return np.maximum(kl + tail_term, 0.0)  # rounding can dip a hair below zero; KL cannot


def compare(summary: Summary, model: LogitsModel) -> dict:
    """KL (mean and 99th percentile over positions, nats) and top-1 agreement (%) of `model` against `summary`."""
    kl_parts, top1_parts, start = [], [], 0
    for sequence in summary.tokens:  # one prompt at a time: a [positions, vocabulary] block stays small
        rows = _as_numpy(model.logprobs(sequence))
        if rows.shape[0] != len(sequence):
            raise ValueError(f"candidate gave {rows.shape[0]} positions for a prompt of {len(sequence)} tokens")
        kl_parts.append(kl_per_position(summary.rows(start, start + len(sequence)), rows))
        top1_parts.append(_top_k(rows, 1)[0][:, 0])
        start += len(sequence)
    kl = np.concatenate(kl_parts)
    agreement = float((np.concatenate(top1_parts) == summary.top_ids[:, 0]).mean() * 100)
    return {"kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)), "top1_agreement_pct": agreement,
            "fidelity_positions": int(kl.size)}


def length_ratio(baseline_metrics: dict, candidate_metrics: dict) -> float | None:
    """Mean generated tokens of the candidate over the baseline's (1.0: same length; >1 rambles, <1 stops early)."""
    base, cand = baseline_metrics.get("mean_new_tokens"), candidate_metrics.get("mean_new_tokens")
    if not base or cand is None or math.isnan(base) or math.isnan(cand):
        return None
    return cand / base


def summary_key(source: dict, model_name: str, precision: str, precision_params: dict, device: str,
                k: int = TOP_K, prompts: list[str] | None = None) -> tuple[str, bool]:
    """(cache key, whether it may be cached on disk): disk only when the source names its weights' content.
    `prompts` None means the built-in prompt set (keyed by its version), else the prompts themselves."""
    identified = any(source.get(key) for key in ("sha256", "sha256_16", "revision")) or source.get("kind") == "synthetic"
    prompt_set = PROMPT_SET_VERSION if prompts is None else hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
    described = {"model": model_name, "source": source, "precision": precision, "params": precision_params,
                 "device": device, "k": k, "prompts": prompt_set,
                 "versions": {lib: package_version(lib) for lib in ("torch", "transformers", "bitsandbytes")}}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return digest, identified


class SummaryCache:
    """Baseline summaries by key: in memory for the session, and on disk under `directory` when allowed."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self.memory: dict[str, Summary] = {}

    def get(self, key: str, persistent: bool, compute) -> Summary:
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"{key}.npz" if (persistent and self.directory) else None
        if path is not None and path.is_file():
            try:
                self.memory[key] = Summary.load(path)
                return self.memory[key]
            except (OSError, ValueError, KeyError):
                pass  # a damaged file: compute it again
        summary = compute()
        self.memory[key] = summary
        if path is not None:
            try:
                summary.save(path)
            except OSError:
                pass  # a read-only cache only costs a recomputation next session
        return summary
