"""Timers, memory trackers and statistics. Each tracker is a `with` block that leaves plain numbers behind."""

from __future__ import annotations

import os
import statistics
import threading
import time

from typing_extensions import Self

MB = 1024 * 1024


def _cuda_ready(device: str) -> bool:
    if device != "cuda":
        return False
    import torch

    return torch.cuda.is_available()


class Timer:
    """Wall-clock seconds of a block; on CUDA the device is synchronized before both clock reads."""

    def __init__(self, device: str = "cpu"):
        self.cuda = _cuda_ready(device)
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __enter__(self) -> Self:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start


def process_rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / MB


class MemoryTracker:
    """Peak memory of a block.

    CPU: process RSS sampled every `interval` seconds (start, end, peak).
    CUDA: the torch allocator's peak allocated/reserved bytes, plus device-level used memory (what nvidia-smi shows,
    from cudaMemGetInfo) at start, end and its sampled peak.
    """

    def __init__(self, device: str = "cpu", interval: float = 0.005):
        self.cuda = _cuda_ready(device)
        self.interval = interval
        self.metrics: dict[str, float] = {}

    def _sample(self) -> float:
        if self.cuda:
            import torch

            free, total = torch.cuda.mem_get_info()
            return (total - free) / MB
        return process_rss_mb()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._sample())

    def __enter__(self) -> Self:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._allocated_start = torch.cuda.memory_allocated() / MB
        self._start = self._peak = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        end = self._sample()
        peak = max(self._peak, end)
        if self.cuda:
            import torch

            self.metrics = {
                "vram_start_mb": self._start,
                "vram_end_mb": end,
                "vram_peak_mb": peak,
                "allocated_start_mb": self._allocated_start,
                "peak_allocated_mb": torch.cuda.max_memory_allocated() / MB,
                "peak_reserved_mb": torch.cuda.max_memory_reserved() / MB,
                "peak_mem_mb": torch.cuda.max_memory_allocated() / MB,
            }
        else:
            self.metrics = {"rss_start_mb": self._start, "rss_end_mb": end, "rss_peak_mb": peak, "peak_mem_mb": peak}


def summarize(values: list[float]) -> dict[str, float]:
    """Median, interquartile range, coefficient of variation (stdev / mean), min and max of `values`."""
    if not values:
        raise ValueError("summarize() needs at least one value")
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    mean = statistics.fmean(ordered)
    cv = statistics.stdev(ordered) / mean if len(ordered) >= 2 and mean else 0.0
    return {"median": statistics.median(ordered), "iqr": q3 - q1, "cv": cv, "min": ordered[0], "max": ordered[-1]}


def model_footprint_mb(model) -> float:
    """Bytes the model's parameters and buffers really occupy (shared storages counted once).

    Read from the tensors' storage rather than `get_memory_footprint()`, which misreports some quantized layouts.
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total / MB


class StepClock:
    """A logits processor that timestamps every decoding step (it is called once per step, after the forward pass,
    for greedy, sampling and beam search alike); on CUDA it synchronizes first, so a stamp means the step finished."""

    def __init__(self, device: str):
        self.cuda = _cuda_ready(device)
        self.stamps: list[float] = []

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def __call__(self, input_ids, scores):
        self.stamps.append(self.now())
        return scores


def measure_generation(handle, prompt: str, decoding, max_new_tokens: int, warmup: int, repeats: int) -> dict:
    """Time one prompt under one decoding: time to first token, end-to-end latency, decode ms/token, tokens/s.

    Each run generates exactly `max_new_tokens` (end-of-sequence suppressed) with a StepClock inside `generate`:
    time to first token is start -> first step (prefill and the first token's logits), decode ms/token the mean
    interval between later steps, so prefill and decode are separated within one run. tokens/s counts every returned
    sequence (20 for `sample`) over the end-to-end latency.
    """
    device = handle.device
    inputs = handle.encode([prompt])

    def run(new_tokens: int) -> tuple[float, float, float]:
        clock = StepClock(device)
        start = clock.now()
        handle.generate_ids(inputs, decoding, new_tokens, exact_length=True, logits_processor=[clock])
        end = clock.now()
        steps = clock.stamps
        decode = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 0.0
        return steps[0] - start, end - start, decode

    for _ in range(warmup):  # allocator, kernels and caches warm after a short run; a full one adds nothing
        run(min(4, max_new_tokens))
    with MemoryTracker(device) as memory:
        ttft, latency, decode = zip(*(run(max_new_tokens) for _ in range(repeats)))
    tokens = max_new_tokens * decoding.num_responses
    stats_ttft, stats_latency, stats_decode = summarize(list(ttft)), summarize(list(latency)), summarize(list(decode))
    return {
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": max_new_tokens,
        "sequences": decoding.num_responses,
        "repeats": repeats,
        "ttft_ms": stats_ttft["median"] * 1000,
        "latency_ms": stats_latency["median"] * 1000,
        "latency_iqr_ms": stats_latency["iqr"] * 1000,
        "ms_per_token": stats_decode["median"] * 1000,
        "ms_per_token_iqr": stats_decode["iqr"] * 1000,
        "ms_per_token_cv": stats_decode["cv"],
        "tokens_per_s": tokens / stats_latency["median"],
        **memory.metrics,
    }
