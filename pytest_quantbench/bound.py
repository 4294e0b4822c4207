"""The kernel-permitted decode step: the time one decode step would take if it ran nothing but its kernels back to
back, each timed alone, and how far the measured step is from it.

Per group of identical linear layers (kernel, class, in/out features, weight type: kernels.py) every layer of the
group runs once on a (rows, 1, in_features) input; then attention for one query per row over the step's key/value
length, per layer; then the embedding lookup. A layer replayed alone would sit in the GPU's L2 cache, so each round
runs all of the group's layers, as a step reads them. On CUDA a round is captured in a CUDA graph and replayed
between CUDA events (gpt-fast's and Triton's do_bench manner: no launch gaps, no Python); a round whose capture
fails is timed eagerly with events and says so. On the CPU a round is timed with perf_counter.

Not counted: norms, rotary embeddings, residual adds, the activation function, sampling. `of_bound` above 1 is what
the step loses to them, to launches and to the host; below 1 the compiled step fused work the sum counts apart
(e.g. Inductor's int8 dequantization inside its matmul, where the bound times torchao's own dequant then matmul).
`bound_mbu` is the memory-bandwidth utilization a step at its bound would reach: an MBU goal above it needs faster
kernels, not a better decode loop.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from .fusion import decode_linears
from .kernels import Step, linear_kernel, linear_modules, weight_type

CPU_MIN_ROUNDS, CPU_MAX_ROUNDS, CPU_BUDGET_S = 3, 20, 0.1  # per timed part: a few rounds, a tenth of a second
CUDA_REPLAYS, CUDA_REPEATS = 10, 5  # replays between one pair of events; the fastest of these repeats


def time_ms(call, cuda: bool) -> tuple[float, str]:
    """Milliseconds of one `call()` and how they were timed."""
    if not cuda:
        call()  # warm: weights paged in, kernels chosen
        times, start = [], time.perf_counter()
        while len(times) < CPU_MIN_ROUNDS or (len(times) < CPU_MAX_ROUNDS and time.perf_counter() - start < CPU_BUDGET_S):
            began = time.perf_counter()
            call()
            times.append(time.perf_counter() - began)
        return min(times) * 1000, "perf_counter"  # the fastest round: a bound, and robust to a busy host
    import torch

    side = torch.cuda.Stream()  # warm-up before a capture runs on a side stream (torch.cuda.graphs' rule)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        replay, how = graph.replay, "cuda graphs"
    except Exception as error:  # noqa: BLE001  a kernel that syncs or allocates on the host: timed eagerly
        torch.cuda.synchronize()
        replay, how = call, f"eager CUDA events (capture failed: {type(error).__name__})"
    replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(CUDA_REPEATS):
        start.record()
        for _ in range(CUDA_REPLAYS):
            replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / CUDA_REPLAYS)
    return min(times), how


def linear_groups(model, step: Step, skipped=()) -> dict[tuple, list]:
    """(kernel, class, in_features, out_features, weight type) -> the layers of that kind, in model order (a fused
    group of projections is one layer)."""
    groups: dict[tuple, list] = {}
    for module in decode_linears(linear_modules(model, skipped), step.fused):
        key = (linear_kernel(module, step), type(module).__name__, module.in_features, module.out_features,
               weight_type(module))
        groups.setdefault(key, []).append(module)
    return groups


def attention_shape(model) -> tuple[int, int, int, int] | None:
    """(layers, heads, key/value heads, head_dim) of the decoder, from its config (T5: num_decoder_layers, d_kv)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_decoder_layers", None) or getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "num_heads", None)
    if not layers or not heads:
        return None
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or getattr(text, "d_kv", None) or text.hidden_size // heads
    return layers, heads, kv_heads, head_dim


def _attention_call(shape, rows: int, length: int, static: bool, attention: str | None, dtype, device):
    """One query per row over `length` keys, every layer with its own cache: over a static cache with its mask and
    the decode attention the compiled step ran (`attention`, as recorded; compiled here too, where it is Inductor's),
    or with transformers' SDPA over a cache holding exactly the context (eager generate)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from .compiled import decode_function

    layers, heads, kv_heads, head_dim = shape
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    query = torch.randn(rows, heads, 1, head_dim, dtype=dtype, device=device)
    caches = [(torch.randn(rows, kv_heads, length, head_dim, dtype=dtype, device=device),
               torch.randn(rows, kv_heads, length, head_dim, dtype=dtype, device=device)) for _ in range(layers)]
    mask = torch.ones(rows, 1, 1, length, dtype=torch.bool, device=device) if static else None
    scale = head_dim ** -0.5
    ran = decode_function(attention) if static else None
    if ran is None:
        return lambda: [sdpa_attention_forward(module, query, key, value, mask, scaling=scale)
                        for key, value in caches]
    function, compiles = ran

    def attend(key, value):
        return function(module, query, key, value, mask, scaling=scale)[0]

    if compiles:  # Inductor's kernels, as in the step
        attend = torch.compile(attend, dynamic=False, fullgraph=True)
    return lambda: [attend(key, value) for key, value in caches]


def decode_bound(model, step: Step, kv_length: int, static: bool, attention: str | None, skipped=(),
                 cross_length: int = 0) -> tuple[dict, list[dict]]:
    """The bound's metrics for one decode step of `step.rows` sequences at `kv_length` keys (and, for an
    encoder-decoder, cross-attention over `cross_length` encoder tokens), and its time per kind of linear layer."""
    import torch

    embedding = model.get_input_embeddings()
    dtype, device = embedding.weight.dtype, embedding.weight.device
    cuda = step.cuda
    parts, layers, timings = {}, [], set()
    with torch.inference_mode():
        for (kernel, cls, fan_in, fan_out, weight), modules in linear_groups(model, step, skipped).items():
            x = torch.randn(step.rows, 1, fan_in, dtype=dtype, device=device)
            ms, how = time_ms(lambda x=x, modules=modules: [module(x) for module in modules], cuda)
            timings.add(how)
            layers.append({"kernel": kernel, "class": cls, "in_features": fan_in, "out_features": fan_out,
                           "weight": weight, "count": len(modules), "ms": ms})
        parts["bound_linear_ms"] = sum(layer["ms"] for layer in layers)
        shape = attention_shape(model)
        attention_ms = 0.0
        for length in (kv_length, cross_length):
            if shape and length:
                ms, how = time_ms(_attention_call(shape, step.rows, length, static, attention, dtype, device), cuda)
                attention_ms += ms
                timings.add(how)
        parts["bound_attention_ms"] = attention_ms
        ids = torch.zeros(step.rows, 1, dtype=torch.long, device=device)
        parts["bound_embedding_ms"], how = time_ms(lambda: embedding(ids), cuda)
        timings.add(how)
    total = sum(parts.values())
    return {"bound_ms_per_token": total, **parts, "bound_timing": ", ".join(sorted(timings)),
            "bound_kv_length": kv_length}, layers


def measured_bound(handle, step: Step, metrics: dict, mode: str, cache: dict) -> tuple[dict, list[dict]]:
    """The bound of a measurement's decode step, with `of_bound` (measured ms/token over the bound), and its
    breakdown; computed once per (model, precision, step, cache length) in the session (`cache`)."""
    from .compiled import cache_length
    from .families import decode_idle_modules

    model = handle.model
    placed = set((getattr(model, "hf_device_map", None) or {}).values())
    if len(placed) > 1 or any(p.device.type == "meta" for p in model.parameters()):
        where = ", ".join(sorted(map(str, placed))) or "meta"
        return {"bound_note": f"not measured: the weights are spread over devices ({where})"}, []
    new, prompt = metrics["new_tokens"], metrics["prompt_tokens"]
    cross = prompt if handle.family == "encoder-decoder" else 0
    decoder = handle.compiled if mode == "compiled" else None
    if decoder is not None:  # the static cache, whose every position attention reads
        kv_length, static, attention = cache_length(prompt + new), True, decoder.attention
    else:  # generate's cache grows by one a step: its mean over the decode steps
        kv_length, static, attention = (1 if cross else prompt) + new // 2, False, None
    key = (handle.spec.name, handle.precision.name, step, kv_length, static, attention, cross)
    if key not in cache:
        cache[key] = decode_bound(model, step, kv_length, static, attention,
                                  decode_idle_modules(model, handle.family), cross)
    bound, layers = cache[key]
    bound = dict(bound)
    if bound["bound_ms_per_token"] > 0 and metrics.get("ms_per_token"):
        bound["of_bound"] = metrics["ms_per_token"] / bound["bound_ms_per_token"]
        if metrics.get("mbu"):
            bound["bound_mbu"] = metrics["mbu"] * bound["of_bound"]
    return bound, layers
