"""Compiled decode mode: a static KV cache and one decode step captured by torch.compile (CUDA graphs on a GPU), in
the manner of gpt-fast's generate.py: prefill once, then decode one token at a time with no per-step Python beyond
a function call. Eager `generate` spends most of a small model's step in Python and kernel launches; this shows
what a precision's kernels can really do.

Greedy and sampling run here. Beam search reorders the cache every step and is left to eager mode (skip reason).
Precisions whose kernels do not compile into one graph (bitsandbytes int8, GPTQModel, offload, HQQ), and any
whose compilation fails, run the same static-cache loop uncompiled; the record says so (`compile_fallback`). On a
GPU that uncompiled step is captured as one CUDA graph without Inductor (CapturedStep), so such kernels (GPTQModel's
Marlin) also decode without Python per layer; `decode_step` in the record says which of inductor, cuda_graph or
python ran the step, and `capture_fallback` why a capture was given up.
Sibling projections reading one input (q/k/v, gate/up) run as one matmul in the compiled step (fusion.py;
`compile_fused` in the record). With SDPA attention, a decode step's attention is written out (matmul, masked softmax,
matmul) with each key/value head's query heads as its query rows, for Inductor to fuse (`math_decode_attention`;
`compile_attention` in the record); QB_DECODE_ATTENTION picks grouped SDPA or flex_attention instead.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .fusion import ON_OFF, compile_fuse, env_switch, fuse_projections

MODES = ("eager", "compiled")
# Inductor's coordinate-descent tuning of its Triton kernels (QB_COMPILE_TUNING: auto, 1 or 0; the record says which
# ran). It pays where Inductor generates a layer's matmul, fusing a weight-only dequantization into it (torchao's
# int8/fp8 weights). It also rewrites every one-row matmul into a reduction of Inductor's own, which on plain weights
# is slower than cuBLAS (H200, bf16, batch 1: docs/results/h200/decode-auto-tuning): so "auto" tunes only the former.
TUNING_SETTINGS = {"auto": None, **ON_OFF}
# The attention of a compiled decode step, when the model uses SDPA (QB_DECODE_ATTENTION; the record's
# `compile_attention` says which ran): "flex" is torch's flex_attention, whose decoding kernel splits the key length
# over the GPU (flex_decode_attention); "math" is matmul, masked softmax, matmul, left to Inductor to fuse;
# "grouped" is SDPA with each key/value head's query heads as its query rows (grouped_decode_attention); "sdpa" is
# transformers' own. "math" is the fastest at rows 1, 8 and 32 (H100, Qwen2.5-7B shape, 256 cached positions: 0.19
# against grouped SDPA's 0.33 ms a step at batch 1; the whole bf16 step 2.7% faster), with eager's fp32 tokens.
DECODE_ATTENTION = "math"
DECODE_ATTENTIONS = {"flex": "quantbench_flex_decode", "math": "quantbench_math_decode",
                     "grouped": "quantbench_grouped_sdpa", "sdpa": "sdpa"}
ATTENTION_RECORDED = {"flex": "flex", "math": "math", "grouped": "grouped_sdpa"}


def capture_step() -> bool:
    """QB_CAPTURE_STEP (default on): whether an uncompiled decode step is captured as a CUDA graph on a GPU
    (CapturedStep); 0 runs it in Python, to measure what the capture buys side by side or to rule it out."""
    return env_switch("QB_CAPTURE_STEP")


def compile_tuning() -> str:
    """QB_COMPILE_TUNING, checked: ValueError naming the accepted values for any other."""
    setting = os.environ.get("QB_COMPILE_TUNING", "auto").strip().lower() or "auto"
    if setting not in TUNING_SETTINGS:
        raise ValueError(f"QB_COMPILE_TUNING={setting!r} is not a setting: give auto, 1 (or on) or 0 (or off)")
    return setting


def tune_kernels(model, setting: str | None = None) -> bool:
    """Whether the decode step of `model` compiles with coordinate-descent tuning under `setting`
    (default: QB_COMPILE_TUNING)."""
    from .kernels import inductor_dequantizes

    tuned = TUNING_SETTINGS[setting or compile_tuning()]
    return inductor_dequantizes(model) if tuned is None else tuned


def why_not_compiled(decoding, family: str = "decoder") -> str | None:
    """A reason this decoding (or model family) cannot run in compiled mode, or None."""
    if decoding.generate_kwargs.get("num_beams", 1) > 1:
        return (f"{decoding.name} in compiled mode: beam search reorders the KV cache every step, which the compiled "
                "decode loop does not do; measure it in eager mode")
    if family != "decoder":
        return f"compiled mode covers decoder-only models; this one is {family}"
    return None


@dataclass
class CompiledDecoder:
    """Per loaded model: the compiled step and a static cache kept between calls (so CUDA graphs replay)."""

    model: Any
    steps: dict = field(default_factory=dict)  # decoding name -> its compiled step
    cache: Any = None
    cache_shape: tuple = ()
    compile_s: float | None = None
    calls: int = 0
    fallback: str | None = None
    tuned: bool = False  # compiled with Inductor's coordinate-descent tuning
    attention: str | None = None  # the attention implementation the decode step ran
    fused: list = field(default_factory=list)  # the projections the compiled step runs as one matmul (fusion.py)
    captured: list = field(default_factory=list)  # the CUDA-graph-captured uncompiled steps made (CapturedStep)

    @property
    def decode_step(self) -> str:
        """What ran the decode step: inductor (torch.compile), cuda_graph (the uncompiled step captured) or python."""
        if not self.fallback:
            return "inductor"
        return "cuda_graph" if any(step.graph is not None for step in self.captured) else "python"

    @property
    def capture_fallback(self) -> str | None:
        """Why a CUDA graph capture of the uncompiled step was given up, if one was."""
        return next((step.failed for step in self.captured if step.failed), None)

    def _cache_for(self, batch: int, length: int):
        from transformers import StaticCache

        length = cache_length(length)
        if self.cache is None or self.cache_shape != (batch, length):
            self.cache = StaticCache(config=self.model.config, max_cache_len=length)  # filled lazily by the prefill
            self.cache_shape = (batch, length)
        else:
            self.cache.reset()
        return self.cache

    def _compile(self, decoding, ends: list[int]):
        """The decode step for this decoding: one token's forward pass, and for greedy decoding the argmax too (so a
        step is one CUDA graph replay); sampling draws outside the graph, from the returned logits."""
        import torch

        # A new batch size compiles the step again: past Dynamo's default 8 entries it would run uncompiled, silently.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.tuned = tune_kernels(self.model)
        greedy = not decoding.generate_kwargs.get("do_sample")
        if self.fallback and ends:  # a list indexed into the logits is copied to the GPU in the step: not capturable
            ends = torch.tensor(ends, dtype=torch.long, device=_device(self.model))
        if not self.fallback and not self.fused and compile_fuse():
            self.fused = fuse_projections(self.model)
        fused = self.fused

        def decode_one_token(input_ids, cache_position, cache):
            logits = self.model(input_ids=input_ids, cache_position=cache_position, past_key_values=cache,
                                use_cache=True).logits[:, -1]
            for group in fused:
                group.clear()
            return _pick(logits, decoding, ends) if greedy else logits

        if self.fallback:  # kernels Inductor cannot compile: the same static-cache step, uncompiled
            if _device(self.model).type != "cuda" or not capture_step():
                return decode_one_token, greedy
            step = CapturedStep(decode_one_token, greedy)
            self.captured.append(step)
            return step, greedy
        # Per compile, not process-wide: models compiled in one session each keep their own tuning
        options = {"coordinate_descent_tuning": self.tuned}
        if _device(self.model).type == "cuda":
            options["triton.cudagraphs"] = True  # "reduce-overhead"
        # Dynamo guards every weight of the model on each call; for tensor subclasses (torchao's quantized weights)
        # that is Python per weight, milliseconds a step. This step belongs to one model (its own code object, so
        # Dynamo's cache is its alone): the guards on the model's modules are not needed.
        skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        if skip_module_guards:
            options["guard_filter_fn"] = skip_module_guards
        step = torch.compile(_own_code(decode_one_token), options=options, fullgraph=True, dynamic=False)
        return step, greedy

    def generate(self, input_ids, decoding, max_new_tokens: int, marks=None):
        """Token ids (prompt + exactly `max_new_tokens`: end-of-sequence is suppressed, as eager measurement runs
        do with min_new_tokens) for one prompt batch; `marks()` is called after each step.

        When the first compilation fails (a kernel torch.compile cannot trace or capture), the decoder falls back to
        the uncompiled loop, records why in `fallback`, and generates again from the start."""
        try:
            return self._generate(input_ids, decoding, max_new_tokens, marks)
        except Exception as error:
            if self.calls or self.fallback or not _is_compile_error(error):
                raise
            why = f"{type(error).__name__}: {_first_line(error)}"
            self.fallback = f"torch.compile failed ({why}): decode loop uncompiled"
            self.steps.clear()
            self.cache = None
            return self._generate(input_ids, decoding, max_new_tokens, marks)

    def _generate(self, input_ids, decoding, max_new_tokens: int, marks=None):
        import torch

        ends = self.model.generation_config.eos_token_id
        ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)

        if decoding.name not in self.steps:
            self.steps[decoding.name] = self._compile(decoding, ends)
        step, picks = self.steps[decoding.name]
        sequences = decoding.num_responses
        ids = input_ids.repeat_interleave(sequences, dim=0)
        prompt = ids.shape[1]
        start = time.perf_counter()
        with torch.inference_mode(), _decode_attention(self.model) as attention:  # the cache's are inference tensors
            self.attention = attention
            cache = self._cache_for(ids.shape[0], prompt + max_new_tokens)
            logits = self.model(input_ids=ids, cache_position=torch.arange(prompt, device=ids.device),
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            token = _pick(logits, decoding, ends)
            if marks:
                marks()
            out = [token]
            position = torch.tensor([prompt], device=ids.device)
            for _ in range(max_new_tokens - 1):
                output = step(token[:, None], position, cache)
                token = output.clone() if picks else _pick(output, decoding, ends)  # the next replay reuses output
                position += 1
                if marks:
                    marks()
                out.append(token)
        if self.calls == 0:  # the first call compiles (and records CUDA graphs); later calls replay
            if ids.device.type == "cuda":
                torch.cuda.synchronize()
            self.compile_s = time.perf_counter() - start
        self.calls += 1
        return torch.cat([ids, torch.stack(out, dim=1)], dim=1)


class CapturedStep:
    """The uncompiled decode step captured as one CUDA graph (torch.cuda.CUDAGraph), for kernels Inductor cannot
    compile: each later step copies its token and position into the graph's input tensors and replays it, with no
    Python per layer. A new batch size or cache captures again. Before a graph is used, its first replay is checked
    against the eager step on the same input; a capture that raises (a kernel that syncs with the host) or replays
    differently is given up with the reason (`failed`), and the step runs eagerly from then on."""

    def __init__(self, function, picks: bool):
        self.function, self.picks = function, picks
        self.graph = None
        self.failed: str | None = None
        self.key = None  # (input shape, the cache) the graph was captured for

    def __call__(self, input_ids, cache_position, cache):
        if self.failed:
            return self.function(input_ids, cache_position, cache)
        if self.key is None or self.key[0] != tuple(input_ids.shape) or self.key[1] is not cache:
            return self._capture(input_ids, cache_position, cache)
        self.ids.copy_(input_ids)
        self.position.copy_(cache_position)
        self.graph.replay()
        return self.out

    def _capture(self, input_ids, cache_position, cache):
        """Warm up on a side stream (as torch.cuda.graphs asks), capture, replay once and compare. Each of these runs
        the same step on the same input, so writing the cache position again leaves the cache as one step would."""
        import torch

        self.graph = None
        self.ids, self.position = input_ids.clone(), cache_position.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                expected = self.function(self.ids, self.position, cache)
        torch.cuda.current_stream().wait_stream(side)
        expected = expected.clone()
        try:
            graph = torch.cuda.CUDAGraph()
            # thread_local: the memory sampler's thread may touch CUDA while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.out = self.function(self.ids, self.position, cache)
            graph.replay()
        except Exception as error:  # noqa: BLE001 - any capture failure means: run this step eagerly
            torch.cuda.synchronize()
            self.failed = f"CUDA graph capture failed ({type(error).__name__}: {_first_line(error)}): step eager"
            return expected
        same = (torch.equal(self.out, expected) if self.picks else
                torch.allclose(self.out.float(), expected.float(), rtol=1e-3, atol=1e-3))
        if not same:
            self.failed = "the CUDA graph's replay differed from the eager step on the same input: step eager"
            return expected
        self.graph, self.key = graph, (tuple(input_ids.shape), cache)
        return self.out


def _own_code(function):
    """`function` with a copy of its code object: Dynamo keys its cache of compiled code by code object, and the step
    function of every decoder is made from the same one."""
    import types

    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)


def cache_length(tokens: int, bucket: int = 256) -> int:
    """The static cache's length for `tokens`: rounded up to a multiple of `bucket`, so that prompts of different
    lengths share one compiled step (its shapes include the cache's; a new shape would compile again). Attention
    reads the whole cache each step: at 256 positions that is a few MB, small beside the weights."""
    return max(bucket, -(-tokens // bucket) * bucket)


def grouped_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA for one query token that reads each key/value head once: a group's query heads become that head's query
    rows. Transformers' SDPA path copies the shared key/value heads to every query head first (`repeat_kv`) when a
    mask is present, which it always is with a static cache; it packs the heads this way only outside torch.compile.
    Other shapes (prefill, no head groups) go to transformers' SDPA unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, length, dim = query.shape
    if length != 1 or groups == 1 or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None  # (batch, 1, 1, keys)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(batch, heads // groups, groups, dim), key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, 1, heads, dim), None


def _one_query(query, kwargs: dict) -> bool:
    """A decode step's attention that the decode kernels here cover: one query token, no softcap or position bias."""
    return query.shape[2] == 1 and kwargs.get("softcap") is None and kwargs.get("position_bias") is None


def flex_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """torch's flex_attention for one query token, under torch.compile: Inductor's decoding kernel splits the cache's
    key length over the GPU's multiprocessors, where SDPA's kernels give each (row, head) one block that walks all
    the keys. The static cache's mask is read in the score function. Outside torch.compile (flex_attention would
    run unfused) and for other shapes: grouped_decode_attention."""
    import torch

    if not torch.compiler.is_compiling() or not _one_query(query, kwargs):
        return grouped_decode_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if attention_mask is not None:
        keep = attention_mask[:, 0, 0, : key.shape[-2]]  # (batch, keys)

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(keep[b, kv_idx], score, -float("inf"))

    out = flex_attention(query, key, value, score_mod=score_mod, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2), None


def math_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for one query token written out (matmul, masked softmax in float32, matmul), each key/value head's
    query heads as its query rows, for Inductor to fuse; other shapes: grouped_decode_attention."""
    groups = getattr(module, "num_key_value_groups", 1)
    if not _one_query(query, kwargs):
        return grouped_decode_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    batch, heads, _, dim = query.shape
    scale = dim ** -0.5 if scaling is None else scaling
    scores = (query.reshape(batch, heads // groups, groups, dim) @ key.transpose(-1, -2)).float() * scale
    if attention_mask is not None:  # boolean: _register pairs this attention with SDPA's mask function
        scores = scores.masked_fill(~attention_mask[:, :, :, : key.shape[-2]], float("-inf"))
    out = scores.softmax(-1).to(value.dtype) @ value
    return out.reshape(batch, 1, heads, dim), None


DECODE_FUNCTIONS = {"flex": flex_decode_attention, "math": math_decode_attention,
                    "grouped": grouped_decode_attention}


def decode_function(recorded: str | None):
    """The decode attention function a step ran, from the record's `compile_attention`, and whether Inductor compiles
    it (all but grouped SDPA); None for transformers' own attention."""
    for setting, name in ATTENTION_RECORDED.items():
        if name == recorded:
            return DECODE_FUNCTIONS[setting], setting != "grouped"
    return None


def decode_attention() -> str:
    """QB_DECODE_ATTENTION (default DECODE_ATTENTION), checked: ValueError naming the accepted values."""
    setting = os.environ.get("QB_DECODE_ATTENTION", "").strip().lower() or DECODE_ATTENTION
    if setting not in DECODE_ATTENTIONS:
        raise ValueError(f"QB_DECODE_ATTENTION={setting!r} is not a decode attention: give one of "
                         f"{', '.join(DECODE_ATTENTIONS)}")
    return setting


def _register(setting: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    name = DECODE_ATTENTIONS[setting]
    AttentionInterface.register(name, DECODE_FUNCTIONS[setting])
    AttentionMaskInterface.register(name, sdpa_mask)  # the same boolean masks as SDPA
    return name


@contextmanager
def _decode_attention(model):
    """The decode attention for the length of a compiled generation, where the model uses SDPA (a model loaded with
    eager or flash attention keeps it); eager mode never sees it. Yields the record's name for what ran."""
    config = model.config
    setting = decode_attention()
    if setting == "sdpa" or getattr(config, "_attn_implementation", None) != "sdpa":
        yield getattr(config, "_attn_implementation", None)
        return
    config._attn_implementation = _register(setting)
    try:
        yield ATTENTION_RECORDED[setting]
    finally:
        config._attn_implementation = "sdpa"


def _is_compile_error(error: Exception) -> bool:
    """An error of torch.compile itself (Dynamo tracing, Inductor lowering, CUDA graph capture), not of the model."""
    module = type(error).__module__
    text = str(error).lower()
    return module.startswith(("torch._dynamo", "torch._inductor")) or "capturing" in text or "graph capture" in text


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _pick(logits, decoding, suppressed=()):
    """Greedy argmax, or nucleus sampling with the decoding's temperature and top-p; `suppressed` tokens never (a
    list of ids, constants to torch.compile, or a long tensor on the logits' device, for a captured step)."""
    import torch

    if isinstance(suppressed, torch.Tensor):
        logits = logits.index_fill(-1, suppressed, float("-inf"))
    elif suppressed:
        logits = logits.clone()
        logits[:, list(suppressed)] = float("-inf")
    kwargs = decoding.generate_kwargs
    if not kwargs.get("do_sample"):
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / kwargs.get("temperature", 1.0), dim=-1)
    top_p = kwargs.get("top_p", 1.0)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


def _device(model):
    return model.get_input_embeddings().weight.device


def decoder_for(handle) -> CompiledDecoder:
    """The handle's compiled decoder, made on first use."""
    decoder = getattr(handle, "compiled", None)
    if decoder is None:
        decoder = CompiledDecoder(handle.model)
        if not handle.precision.compiles:
            decoder.fallback = (f"{handle.precision.library} kernels are not compiled (graph breaks or no CUDA graph "
                                "capture): the static-cache decode loop runs uncompiled")
        handle.compiled = decoder
    return decoder
