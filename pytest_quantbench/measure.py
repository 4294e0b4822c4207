"""Timed generation: repeats until the timing is stable, the statistics of the repeats, and the roofline (bytes
each decode step must read, the bandwidth it reached)."""

from __future__ import annotations

import gc
import statistics
import time

from .fusion import fused_label
from .trackers import MB, MemoryTracker, StepClock, Timer, cuda_ready, storage_bytes


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


def timed_generation(handle, inputs, decoding, new_tokens: int, mode: str = "eager") -> tuple[float, float, float]:
    """One generation of exactly `new_tokens`: (time to first token, end-to-end latency, decode s/token).

    Marks: start, one per step, end. Time to first token is start -> first step (prefill and the first token's
    logits); decode s/token is the mean interval between later steps.
    """
    clock = StepClock(handle.device)
    clock.mark()
    if mode == "compiled":
        from .compiled import decoder_for

        decoder_for(handle).generate(inputs["input_ids"], decoding, new_tokens, marks=clock.mark)
    else:
        handle.generate_ids(inputs, decoding, new_tokens, exact_length=True, logits_processor=[clock])
    clock.mark()
    times = clock.seconds()
    steps = times[1:-1]
    decode = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 0.0
    return steps[0], times[-1], decode


def repeat_until_stable(run, min_repeats: int, max_repeats: int, target_cv: float, max_time_s: float,
                        key=lambda result: result) -> list:
    """Call `run()` at least `min_repeats` times, then until the coefficient of variation of `key(result)` is at most
    `target_cv`, `max_repeats` results are in, or `max_time_s` has passed (pytest-benchmark's calibration idea)."""
    results: list = []
    start = time.perf_counter()
    while len(results) < max(min_repeats, max_repeats):
        results.append(run())
        if len(results) < min_repeats:
            continue
        values = [key(r) for r in results]
        if summarize(values)["cv"] <= target_cv or time.perf_counter() - start >= max_time_s:
            break
        if len(results) >= max_repeats:
            break
    return results


def measure_generation(handle, prompt: str, decoding, max_new_tokens: int, warmup: int, repeats: int,
                       max_repeats: int | None = None, target_cv: float = 0.0, max_time_s: float = 0.0,
                       on_results=None, mode: str = "eager", batch_size: int = 1) -> dict:
    """Time one prompt under one decoding: time to first token, end-to-end latency, decode ms/token, tokens/s,
    memory, and memory-bandwidth utilization.

    Each run generates exactly `max_new_tokens` (end-of-sequence suppressed) for `batch_size` copies of the prompt
    at once. Runs repeat from `repeats` up to `max_repeats` until decode ms/token (the time of one decode step,
    which gives every sequence a token) varies less than `target_cv` (or `max_time_s` is spent); `unstable` says
    when it never did. tokens/s counts every returned sequence (the batch times 20 for `sample`) over the
    end-to-end latency; decode_tokens_per_s over the decode steps alone, decode_tokens_per_s_per_seq one
    sequence's. `on_results(run, rounds)` is called after, with the timed run and how many times it ran (the
    pytest-benchmark bridge times that many more).
    """
    device = handle.device
    inputs = handle.encode([prompt] * batch_size)  # one prompt repeated: no padding, every row decodes alike

    def run():
        return timed_generation(handle, inputs, decoding, max_new_tokens, mode)

    # Full-length warm-up runs: GPU clocks and the allocator settle, kernels are chosen; compiled mode compiles on
    # the first call and records its CUDA graphs on the next ones.
    for _ in range(max(warmup, 3 if mode == "compiled" else 0)):
        run()
    # Timed runs with the garbage collector paused (its pauses land in random steps) and no memory sampling
    # (a polling thread contends for the GIL with a host-bound decode loop); memory gets its own run after.
    collecting = gc.isenabled()
    gc.disable()
    try:
        results = repeat_until_stable(run, repeats, max_repeats or repeats, target_cv, max_time_s,
                                      key=lambda r: r[2])
    finally:
        if collecting:
            gc.enable()
    with MemoryTracker(device, floor_mb=getattr(handle, "heap_before_load_mb", None)) as memory:
        run()
    ttft, latency, decode = (list(values) for values in zip(*results))
    stats_ttft, stats_latency, stats_decode = summarize(ttft), summarize(latency), summarize(decode)
    sequences = batch_size * decoding.num_responses
    # Throughput comes from the same timed runs as latency, so it carries their spread the same way.
    throughput = summarize([max_new_tokens * sequences / seconds for seconds in latency])
    decode_throughput = summarize([sequences / seconds for seconds in decode if seconds > 0] or [0.0])
    metrics = {
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": max_new_tokens,
        "sequences": sequences,
        "repeats": len(results),
        "ttft_ms": stats_ttft["median"] * 1000,
        "ttft_iqr_ms": stats_ttft["iqr"] * 1000,
        "latency_ms": stats_latency["median"] * 1000,
        "latency_iqr_ms": stats_latency["iqr"] * 1000,
        "latency_cv": stats_latency["cv"],
        "ms_per_token": stats_decode["median"] * 1000,
        "ms_per_token_iqr": stats_decode["iqr"] * 1000,
        "ms_per_token_cv": stats_decode["cv"],
        "unstable": bool(target_cv and stats_decode["cv"] > target_cv),
        "tokens_per_s": max_new_tokens * sequences / stats_latency["median"],
        "tokens_per_s_iqr": throughput["iqr"],
        "decode_tokens_per_s": sequences / stats_decode["median"] if stats_decode["median"] else 0.0,
        "decode_tokens_per_s_iqr": decode_throughput["iqr"],
        "decode_tokens_per_s_per_seq": 1 / stats_decode["median"] if stats_decode["median"] else 0.0,
        "decode_tokens_per_s_per_seq_iqr": decode_throughput["iqr"] / sequences,
        **memory.metrics,
    }
    metrics.update(bandwidth_metrics(handle, decoding, metrics))
    if mode == "compiled":
        metrics["compile_s"] = handle.compiled.compile_s
        metrics["compile_tuning"] = handle.compiled.tuned
        metrics["compile_attention"] = handle.compiled.attention
        metrics["compile_fused"] = fused_label(handle.compiled.fused)
        metrics["decode_step"] = handle.compiled.decode_step
        if handle.compiled.fallback:
            metrics["compile_fallback"] = handle.compiled.fallback
        if handle.compiled.capture_fallback:
            metrics["capture_fallback"] = handle.compiled.capture_fallback
    if on_results is not None:
        on_results(run, len(results))
    return metrics


# Peak memory bandwidth from vendor data sheets, GB/s, for context next to the measured figure.
DOCUMENTED_BANDWIDTH_GBPS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
                             "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100 80GB PCIe": 1935, "L4": 300,
                             "L40S": 864, "A10G": 600, "RTX 4090": 1008}
_bandwidth_cache: dict[str, float] = {}


def copy_bandwidth_gbps(device: str) -> float:
    """Achievable memory bandwidth, measured: bytes read + written by repeated large copies, per second (GB/s)."""
    if device in _bandwidth_cache:
        return _bandwidth_cache[device]
    import torch

    cuda = cuda_ready(device)
    size = (1 << 30) if cuda else (1 << 28)
    source = torch.empty(size, dtype=torch.uint8, device="cuda" if cuda else "cpu")
    target = torch.empty_like(source)
    target.copy_(source)  # warm: pages touched, kernels loaded
    rounds = 20 if cuda else 5
    with Timer(device) as timer:
        for _ in range(rounds):
            target.copy_(source)
    del source, target
    _bandwidth_cache[device] = 2 * size * rounds / timer.seconds / 1e9
    return _bandwidth_cache[device]


def documented_bandwidth_gbps(device_name: str) -> float | None:
    return next((gbps for key, gbps in DOCUMENTED_BANDWIDTH_GBPS.items() if key.lower() in device_name.lower()), None)


def decode_bytes_per_step(model, sequences: int, context_tokens: int, idle_modules=(),
                          cross_tokens: int = 0) -> float | None:
    """Bytes one decoding step must read: every weight once (the input embedding only by the rows it looks up, so it
    is left out unless it doubles as the output head; `idle_modules`, e.g. an encoder or a vision tower, not at all)
    plus the KV cache of `sequences` sequences at `context_tokens`, and for an encoder-decoder the cross-attention
    KV cache over its `cross_tokens` encoder tokens.

    The text model's config names the decoder's shape: `num_hidden_layers` or T5's `num_decoder_layers`,
    `num_attention_heads` (T5: `num_heads`), `num_key_value_heads`, `head_dim` (T5: `d_kv`)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_decoder_layers", None) or getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    if config is None or not layers or not heads:
        return None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skipped = {}
    for module in idle_modules:
        skipped.update(storage_bytes(module))
    if embedding is not None:
        skipped.update(storage_bytes(embedding))
    if output is not None:  # the head is read every step, whatever else shares its storage
        for key in storage_bytes(output):
            skipped.pop(key, None)
    weights = sum(nbytes for key, nbytes in storage_bytes(model).items() if key not in skipped)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_element = embedding.weight.element_size() if embedding is not None else 2
    kv = 2 * layers * kv_heads * head_dim * kv_element * (context_tokens + cross_tokens) * sequences
    return weights + kv


def bandwidth_metrics(handle, decoding, metrics: dict) -> dict:
    """Memory-bandwidth utilization (MBU) of decoding and the roofline decode tokens/s the bandwidth allows."""
    from .families import decode_idle_modules

    sequences = metrics["sequences"] * decoding.generate_kwargs.get("num_beams", 1)
    mean_new = metrics["new_tokens"] / 2  # mean context over the decode steps
    if handle.family == "encoder-decoder":  # self-attention over the decoder's tokens, cross-attention over the prompt
        context, cross = 1 + mean_new, metrics["prompt_tokens"]
    else:
        context, cross = metrics["prompt_tokens"] + mean_new, 0
    step_bytes = decode_bytes_per_step(handle.model, sequences, int(context),
                                       decode_idle_modules(handle.model, handle.family), cross)
    step_s = metrics["ms_per_token"] / 1000
    if step_bytes is None or step_s <= 0:
        return {}
    bandwidth = copy_bandwidth_gbps(handle.device)
    documented = None
    if cuda_ready(handle.device):
        import torch

        documented = documented_bandwidth_gbps(torch.cuda.get_device_name())
    roofline_steps_per_s = bandwidth * 1e9 / step_bytes
    return {
        "bytes_per_step_mb": step_bytes / MB,
        "bandwidth_gbps": bandwidth,
        "bandwidth_source": "measured copy",
        "bandwidth_documented_gbps": documented,
        "mbu": step_bytes / step_s / (bandwidth * 1e9),
        "roofline_tokens_per_s": roofline_steps_per_s * metrics["sequences"],
    }
