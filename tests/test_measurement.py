"""Precisions beyond bitsandbytes (torchao, offload), synthetic-weight models, calibrated repeats, MBU, and the
compiled decode mode, on the CPU."""

from __future__ import annotations

import json

import pytest

from pytest_quantbench.decoding import parse_decoding
from pytest_quantbench.measure import decode_bytes_per_step, repeat_until_stable, summarize
from pytest_quantbench.models import ModelLoadError, load_model, load_with_tokenizer, resolve_model
from pytest_quantbench.precisions import parse_precision, parse_size_mb
from pytest_quantbench.synthetic import PRESETS, byte_tokenizer, parameter_count, synthetic_config

TINY_QWEN = ("synthetic:qwen2.5-0.5b:num_hidden_layers=2,hidden_size=64,intermediate_size=128,"
             "num_attention_heads=4,num_key_value_heads=2,vocab_size=512")


def test_precision_grammar_and_reasons():
    assert parse_precision("offload@2GB+disk").options == (("budget_mb", 2048.0), ("disk", True))
    assert dict(parse_precision("gptq@8bit,g32+desc").options) == {"bits": 8, "group_size": 32, "desc": True}
    assert parse_precision("int4wo@g32").option("group_size") == 32
    assert parse_size_mb("512MB") == 512 and parse_size_mb("1.5G") == 1536
    with pytest.raises(ValueError, match="needs an argument: offload@<size>"):
        parse_precision("offload")
    with pytest.raises(ValueError, match=r"has no \+dq \(accepted: \+desc, \+asym\)"):
        parse_precision("gptq+dq")
    with pytest.raises(ValueError, match="bits must be 2, 3, 4 or 8"):
        parse_precision("awq@5bit")
    with pytest.raises(ValueError, match="not a memory size"):
        parse_precision("offload@lots")
    assert "needs a CUDA GPU" in parse_precision("fp8").why_unavailable("cpu")
    assert "needs a CUDA GPU" in parse_precision("fp8dyn").why_unavailable("cpu")


def test_repeats_stop_when_stable_and_flag_noise():
    steady = iter([1.0, 1.001, 0.999, 1.0] + [1.0] * 50)
    assert len(repeat_until_stable(lambda: next(steady), 3, 20, 0.03, 60)) == 3
    noisy = iter([1.0, 2.0] * 50)
    results = repeat_until_stable(lambda: next(noisy), 3, 9, 0.03, 60)
    assert len(results) == 9 and summarize(results)["cv"] > 0.03
    alternating = iter([1.0, 3.0] * 50)
    assert len(repeat_until_stable(lambda: next(alternating), 2, 50, 0.0, 0.0)) == 2  # no time: the minimum only


def test_summarize_hand_computed():
    stats = summarize([1.0, 2.0, 3.0, 4.0])
    assert stats["median"] == 2.5 and stats["iqr"] == pytest.approx(1.5)
    assert stats["cv"] == pytest.approx(1.2909944 / 2.5)


def test_synthetic_presets_have_the_published_sizes():
    assert parameter_count(PRESETS["qwen2.5-7b"]) == pytest.approx(7.62e9, rel=0.01)
    assert parameter_count(PRESETS["qwen2.5-0.5b"]) == pytest.approx(0.494e9, rel=0.01)
    assert parameter_count(PRESETS["llama-3.2-1b"]) == pytest.approx(1.24e9, rel=0.01)
    assert parameter_count(PRESETS["phi-2"]) == pytest.approx(2.78e9, rel=0.01)
    assert parameter_count(PRESETS["qwen2.5-14b"]) == pytest.approx(14.77e9, rel=0.01)
    label, config = synthetic_config("qwen2.5-7b:num_hidden_layers=2,rope_theta=10.5")
    assert label == "qwen2.5-7b" and config["num_hidden_layers"] == 2 and config["rope_theta"] == 10.5
    with pytest.raises(ValueError, match="unknown synthetic preset 'qwen9'"):
        synthetic_config("qwen9")
    tokenizer = byte_tokenizer()
    ids = tokenizer("héllo")["input_ids"]
    assert len(ids) == 6 and tokenizer.decode(ids) == "héllo"


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    import os

    os.environ.setdefault("QB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return resolve_model(TINY_QWEN)


def test_synthetic_model_loads_in_every_cpu_precision(tiny_synthetic):
    spec = tiny_synthetic
    assert spec.kind == "synthetic" and spec.name.startswith("synthetic-qwen2.5-0.5b-")
    sizes = {}
    for name in ("fp32", "bf16", "int8", "nf4", "int8wo", "int4wo"):
        handle = load_model(spec, parse_precision(name), "cpu")
        sizes[name] = handle.footprint_mb
        out = handle.generate_ids(handle.encode(["abc"]), parse_decoding("greedy"), 3, exact_length=True)
        assert out.shape[1] == 3 + 3
    assert handle.source["kind"] == "synthetic" and handle.source["config"]["hidden_size"] == 64
    assert sizes["bf16"] == pytest.approx(sizes["fp32"] / 2, rel=0.01)
    assert sizes["int8wo"] < sizes["fp32"] and sizes["nf4"] < sizes["bf16"]
    import torch._inductor.config as inductor

    # torchao left Inductor's settings alone (it would switch exhaustive kernel tuning on for the whole process)
    assert not inductor.coordinate_descent_check_all_directions and not inductor.force_fuse_int_mm_with_mul


def test_offload_places_what_fits_and_generates(tiny_synthetic):
    handle = load_model(tiny_synthetic, parse_precision("offload@0.2MB"), "cpu")  # the layers are ~180 KB each
    places = handle.model.hf_device_map
    assert places["model.embed_tokens"] == "cpu" and places["model.layers.0"] == "disk"
    out = handle.generate_ids(handle.encode(["abc"]), parse_decoding("greedy"), 3, exact_length=True)
    everything = load_model(tiny_synthetic, parse_precision("offload@1GB"), "cpu")
    expected = everything.generate_ids(everything.encode(["abc"]), parse_decoding("greedy"), 3, exact_length=True)
    assert out.tolist() == expected.tolist()  # the same weights, wherever they live
    assert set(getattr(everything.model, "hf_device_map", {"": "cpu"}).values()) == {"cpu"}


def test_a_synthetic_model_borrows_a_real_tokenizer_that_fits_its_vocabulary(tmp_path, monkeypatch, smollm2_dir):
    from pytest_quantbench import scoring

    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path))
    fp32 = parse_precision("fp32")
    with pytest.raises(ModelLoadError, match="has 49152 tokens, the model's vocabulary only 512"):
        load_with_tokenizer(resolve_model(TINY_QWEN), fp32, "cpu", str(smollm2_dir))
    assert not (tmp_path / "synthetic").exists()  # refused before any weights were written
    fits = resolve_model(TINY_QWEN.replace("vocab_size=512", "vocab_size=49152"))
    handle = load_with_tokenizer(fits, fp32, "cpu", str(smollm2_dir))
    assert handle.tokenizer.encode(" A", add_special_tokens=False) == [330]  # one token, as MMLU's choices need
    [(a, _), (b, _)] = scoring.loglikelihood(handle.model, handle.tokenizer, [("Answer:", " A"), ("Answer:", " B")])
    assert a < 0 and b < 0 and a != b
    handle.tokenizer.save_pretrained(tmp_path / "tokenizer")  # a directory of tokenizer files alone also serves
    assert load_with_tokenizer(fits, fp32, "cpu", str(tmp_path / "tokenizer")).tokenizer.vocab == handle.tokenizer.vocab


def test_bad_synthetic_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelLoadError, match="has no model_type"):
        resolve_model(f"synthetic:{bad}")


def test_decode_bytes_per_step_hand_computed(tiny_synthetic):
    handle = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    # Tied head: the embedding counts once, as the head; buffers (rotary frequencies) are read too.
    params = sum(t.numel() for t in [*handle.model.parameters(), *handle.model.buffers()])
    kv = 2 * 2 * 2 * 16 * 4 * 10 * 3  # k and v, layers, kv heads, head dim, fp32 bytes, context, sequences
    assert decode_bytes_per_step(handle.model, sequences=3, context_tokens=10) == pytest.approx(params * 4 + kv)


def test_synthetic_accuracy_is_skipped_with_a_reason(pytester):
    pytester.makepyfile("""
        def test_accuracy(quantbench):
            quantbench.evaluate("simple", limit=2)
    """)
    result = pytester.runpytest_subprocess(f"--qb-model={TINY_QWEN}", "--qb-precision=fp32", "--qb-decoding=greedy",
                                           "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*has random weights (synthetic model), so accuracy would be meaningless*"])


@pytest.mark.slow
def test_compiled_greedy_tokens_equal_eager_on_smollm2():
    from pytest_quantbench.compiled import decoder_for

    handle = load_model(resolve_model("smollm2-135m"), parse_precision("fp32"), "cpu")
    inputs = handle.encode([handle.format_prompt("What is the capital of France?")])
    greedy = parse_decoding("greedy")
    eager = handle.generate_ids(inputs, greedy, 6, exact_length=True)[0, -6:].tolist()
    compiled = decoder_for(handle).generate(inputs["input_ids"], greedy, 6)[0, -6:].tolist()
    assert compiled == eager
    assert decoder_for(handle).compile_s > 0


def test_compiled_decoder_runs_greedy_and_sampling_with_their_own_steps(tiny_synthetic):
    from pytest_quantbench.compiled import decoder_for

    handle = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    inputs = handle.encode([handle.format_prompt("hello")])
    prompt = inputs["input_ids"].shape[1]
    decoder = decoder_for(handle)
    greedy = decoder.generate(inputs["input_ids"], parse_decoding("greedy"), 5)
    again = decoder.generate(inputs["input_ids"], parse_decoding("greedy"), 5)  # a replay gives the same tokens
    sampled = decoder.generate(inputs["input_ids"], parse_decoding("sample"), 5)
    assert greedy.shape == (1, prompt + 5) and again.tolist() == greedy.tolist()
    assert sampled.shape == (20, prompt + 5)  # 20 responses, each exactly 5 new tokens
    assert set(decoder.steps) == {"greedy", "sample"}
    assert decoder.attention == "math" and handle.model.config._attn_implementation == "sdpa"
    decoder.generate(inputs["input_ids"], parse_decoding("greedy"), 5)
    cache = decoder.cache
    longer = handle.encode([handle.format_prompt("hello, a longer prompt than the first one")])["input_ids"]
    decoder.generate(longer, parse_decoding("greedy"), 5)
    assert decoder.cache is cache  # one cache length for both prompts: the compiled step is not compiled again


def test_grouped_decode_attention_gives_sdpa_logits(tiny_synthetic, monkeypatch):
    """A decode step whose query heads are grouped by their key/value head (no repeat_kv copy) gives the logits of
    transformers' SDPA attention; prefill goes to SDPA itself."""
    import torch
    from transformers import StaticCache

    from pytest_quantbench import compiled

    model = load_model(tiny_synthetic, parse_precision("fp32"), "cpu").model
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    queries = []
    grouped = compiled.grouped_decode_attention
    monkeypatch.setitem(compiled.DECODE_FUNCTIONS, "grouped",
                        lambda module, query, *args, **kwargs: queries.append(query.shape) or grouped(
                            module, query, *args, **kwargs))

    def decode_logits(attention: str):
        monkeypatch.setattr(compiled, "DECODE_ATTENTION", attention)
        cache = StaticCache(config=model.config, max_cache_len=32)
        with torch.inference_mode(), compiled._decode_attention(model):
            first = model(input_ids=ids, cache_position=torch.arange(6), past_key_values=cache).logits[:, -1]
            step = model(input_ids=first.argmax(-1)[:, None], cache_position=torch.tensor([6]), past_key_values=cache)
        return step.logits[:, -1]

    expected = decode_logits("sdpa")
    assert not queries
    assert torch.allclose(decode_logits("grouped"), expected, atol=1e-5)
    assert [tuple(shape) for shape in queries] == [(1, 4, 6, 16)] * 2 + [(1, 4, 1, 16)] * 2  # 2 layers, 4 heads
    assert model.config._attn_implementation == "sdpa"


def test_each_decoder_compiles_its_own_step(tiny_synthetic):
    """The compiled step skips Dynamo's guards on the model's modules (per-weight Python for torchao's quantized
    weights); each decoder's step has its own code object, so a second precision never runs the first one's graph
    (it did: a shared one crashed on int8wo's weights after fp32)."""
    from pytest_quantbench.compiled import decoder_for

    greedy = parse_decoding("greedy")
    for name in ("fp32", "int8wo"):
        handle = load_model(tiny_synthetic, parse_precision(name), "cpu")
        inputs = handle.encode(["abc"])
        eager = handle.generate_ids(inputs, greedy, 4, exact_length=True)[0, -4:].tolist()
        assert decoder_for(handle).generate(inputs["input_ids"], greedy, 4)[0, -4:].tolist() == eager


def test_static_cache_length_is_bucketed():
    from pytest_quantbench.compiled import cache_length

    assert [cache_length(n) for n in (1, 144, 256, 257, 700)] == [256, 256, 256, 512, 768]


def test_compiled_mode_falls_back_visibly(tiny_synthetic):
    """int8 (LLM.int8) is not compiled: the loop runs uncompiled and says so. A model torch.compile cannot trace
    into one graph (here a forward hook reading a tensor's value on the host) falls back at its first compilation,
    with the reason, and still gives the eager tokens. nf4 compiles into one graph."""
    from pytest_quantbench.compiled import decoder_for

    greedy = parse_decoding("greedy")
    for name in ("int8", "fp32", "nf4"):
        handle = load_model(tiny_synthetic, parse_precision(name), "cpu")
        inputs = handle.encode(["abc"])
        if name == "fp32":
            import torch

            torch._dynamo.reset()  # no step compiled by an earlier test (same shapes, no hook) is reused
            handle.model.model.layers[0].register_forward_hook(lambda module, args, out: float(out[0].sum()) and None)
        eager = handle.generate_ids(inputs, greedy, 4, exact_length=True)[0, -4:].tolist()
        decoder = decoder_for(handle)
        assert decoder.generate(inputs["input_ids"], greedy, 4)[0, -4:].tolist() == eager
        if name == "int8":
            assert decoder.fallback.startswith("bitsandbytes kernels are not compiled")
        elif name == "fp32":
            assert decoder.fallback.startswith("torch.compile failed (")
        else:
            assert decoder.fallback is None
        # no CUDA graph on a CPU: an uncompiled step runs in Python
        assert decoder.decode_step == ("inductor" if name == "nf4" else "python")
        assert decoder.capture_fallback is None


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="captures a CUDA graph: needs a CUDA GPU, this machine has none")
def test_an_uncompiled_step_replays_as_one_cuda_graph_with_eager_tokens(tiny_synthetic):
    """On a GPU the uncompiled step (a precision Inductor does not compile: the fallback set as int8's is) runs as
    one captured CUDA graph: eager's greedy tokens for one row, then two (one left-padded: a second capture), each
    twice (the second call replays only), and the record says cuda_graph. A step that reads a value on the host
    cannot be captured: the reason is recorded and the step runs eagerly, with eager's tokens."""
    import torch

    from pytest_quantbench.compiled import decoder_for
    from pytest_quantbench.measure import measure_generation

    greedy = parse_decoding("greedy")
    handle = load_model(tiny_synthetic, parse_precision("bf16"), "cuda")
    decoder = decoder_for(handle)
    decoder.fallback = "kernels not compiled (as int8's): the static-cache decode loop runs uncompiled"
    for prompts in (["abc"], ["abc", "a longer prompt than the first"]):
        inputs = handle.encode(prompts)
        eager = handle.generate_ids(inputs, greedy, 6, exact_length=True).tolist()
        for _ in range(2):
            assert decoder.generate(inputs["input_ids"], greedy, 6).tolist() == eager
    assert decoder.decode_step == "cuda_graph" and decoder.capture_fallback is None
    assert len(decoder.captured) == 1  # one step object, captured again for two rows
    metrics = measure_generation(handle, "abc", greedy, 4, warmup=0, repeats=1, mode="compiled")
    assert metrics["decode_step"] == "cuda_graph" and "capture_fallback" not in metrics

    handle = load_model(tiny_synthetic, parse_precision("bf16"), "cuda")
    handle.model.model.layers[0].register_forward_hook(lambda module, args, out: float(out[0].sum()) and None)
    decoder = decoder_for(handle)
    decoder.fallback = "kernels not compiled (as int8's): the static-cache decode loop runs uncompiled"
    inputs = handle.encode(["abc"])
    eager = handle.generate_ids(inputs, greedy, 6, exact_length=True).tolist()
    assert decoder.generate(inputs["input_ids"], greedy, 6).tolist() == eager
    assert decoder.decode_step == "python" and decoder.capture_fallback.startswith("CUDA graph capture failed (")
    torch.cuda.synchronize()


# --- CPU memory that belongs to the case --------------------------------------------------------------------------


def test_cpu_peak_is_the_heap_in_use_not_what_was_freed_before():
    """peak_mem_mb is the C heap's bytes in use at the peak: a 160 MB tensor made and dropped inside the block counts;
    a 160 MB one dropped just before does not (its pages may still be resident); the raw RSS is kept beside it."""
    import torch

    from pytest_quantbench.memory import heap_in_use_mb
    from pytest_quantbench.trackers import MemoryTracker

    if heap_in_use_mb() is None:
        pytest.skip("glibc's heap counters are not available here (the figure is the sampled RSS peak)")
    size_mb = 160
    before = torch.ones(size_mb * 2**18)  # float32: 4 bytes each
    del before
    with MemoryTracker("cpu", interval=0.001) as memory:
        inside = torch.ones(size_mb * 2**18)
        import time

        time.sleep(0.05)  # a few samples while it is alive
        del inside
    metrics = memory.metrics
    assert metrics["peak_mem_source"] == "heap" and metrics["peak_mem_mb"] == metrics["heap_peak_mb"]
    assert metrics["heap_peak_mb"] - metrics["heap_start_mb"] == pytest.approx(size_mb, abs=8)
    assert metrics["rss_peak_mb"] >= metrics["rss_start_mb"] + size_mb - 8


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_loaded_model_keeps_no_mapping_of_its_checkpoint(tiny_model_dir, precision):
    """Loading maps the weight files (fp32 here, as loaded: tensors can stay views of the file); the loaded model's
    tensors are copied out, so no mapping is left (an nf4 model kept the whole fp32 file resident through its
    embedding) and tied weights stay tied; released, the model is gone."""
    import weakref

    from pytest_quantbench.memory import file_mappings
    from pytest_quantbench.models import ModelCache

    cache = ModelCache("cpu")
    handle = cache.get(resolve_model(f"tiny={tiny_model_dir}"), parse_precision(precision))
    assert any(tiny_model_dir.glob("*.safetensors")) and file_mappings(tiny_model_dir) == []
    model = handle.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    inputs = handle.encode(["abc"])
    out = handle.generate_ids(inputs, parse_decoding("greedy"), 3, exact_length=True)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    gone = weakref.ref(model)
    del handle, model
    cache.release()
    assert gone() is None


MEMORY_TEST = """
def test_memory(quantbench):
    quantbench.measure(max_new_tokens=8)
"""


@pytest.mark.slow
def test_cpu_peak_memory_of_nf4_is_the_same_alone_and_after_fp32(pytester, smollm2_dir):
    """SmolLM2 on the CPU: nf4's peak_mem_mb in a session that ran fp32 first is below fp32's and within 5% of nf4's
    in a session of its own (each session a fresh process). It was the sampled RSS: the fp32 checkpoint's mapping
    and the memory quantization freed stayed resident and counted as nf4's (about 1,150 MB against fp32's 1,020)."""
    pytester.makepyfile(MEMORY_TEST)

    def peaks(precisions: str) -> dict[str, dict]:
        folder = pytester.path / precisions.replace(",", "-")
        result = pytester.runpytest_subprocess(
            f"--qb-model=smollm2-135m={smollm2_dir}", f"--qb-precision={precisions}", "--qb-decoding=greedy",
            "--qb-repeats=1", "--qb-warmup=0", f"--qb-report-dir={folder}", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=len(precisions.split(",")))
        records = json.loads((folder / "quantbench.json").read_text())["records"]
        return {r["precision"]: r["metrics"] for r in records}

    alone = peaks("nf4")["nf4"]
    session = peaks("fp32,nf4")
    after = session["nf4"]
    assert after["peak_mem_mb"] < session["fp32"]["peak_mem_mb"]
    assert after["peak_mem_mb"] == pytest.approx(alone["peak_mem_mb"], rel=0.05)
    # counted from the heap's level before the case's model was loaded; the absolute heap and the RSS kept beside it
    assert after["peak_mem_source"] == "heap-above-load"
    assert after["peak_mem_mb"] == pytest.approx(after["heap_peak_mb"] - after["heap_before_load_mb"])
    assert after["rss_peak_mb"] > after["heap_peak_mb"]


LEAK_TESTS = """
import gc

import pytest


def test_a_task_without_data(quantbench):
    quantbench.evaluate("arc_easy")  # no --qb-data-dir, hub offline: skipped


def test_models_alive(quantbench):
    quantbench.measure(max_new_tokens=2)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o).__name__ == "LlamaForCausalLM"]
    assert len(alive) == 1, f"{len(alive)} models alive while measuring {quantbench.case.id}"
"""


def test_earlier_models_are_freed_when_a_tasks_data_is_missing(pytester, tiny_model_dir, monkeypatch):
    """A task whose data is missing is skipped for every precision from one remembered message; remembering the
    exception kept its traceback's frames, and with them each earlier precision's model, alive for the session (the
    default suite's CPU peak memory grew precision by precision: nf4 1493 MB after fp32, bf16 and int8)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(LEAK_TESTS)
    result = pytester.runpytest_subprocess(f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=fp32,bf16,nf4",
                                "--qb-decoding=greedy", "--qb-repeats=1", "--qb-warmup=0", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=3)


@pytest.mark.parametrize("name", ["nf4", "fp4", "nf4@bf16"])
def test_cpu_4bit_layers_compute_in_the_compute_dtype(tiny_synthetic, name):
    """bitsandbytes' AVX-512 BF16 CPU kernel casts activations to bf16 whatever the compute dtype: it runs for a bf16
    compute dtype only; an fp32 one gives the float32 product of the input and the dequantized weight."""
    import bitsandbytes.functional as bnb_functional
    import torch
    from bitsandbytes.functional import has_avx512bf16

    handle = load_model(tiny_synthetic, parse_precision(name), "cpu")
    layers = [m for m in handle.model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers
    bf16 = name.endswith("@bf16")
    fast = bf16 and has_avx512bf16()
    assert handle.extra["cpu_4bit_kernel"] == ("AVX-512 BF16 (bf16 activations)" if fast else
                                               f"dequantize, then {'bf16' if bf16 else 'fp32'} matmul")
    layer = layers[0]
    x = torch.randn(3, 5, layer.in_features, dtype=torch.bfloat16 if bf16 else torch.float32)
    with torch.inference_mode():  # dequantized first: the AVX-512 kernel repacks the weight at its first call
        weight = bnb_functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        got = layer(x).float()
    want = x.float() @ weight.t() + (0 if layer.bias is None else layer.bias.float())
    error = ((got - want).norm() / want.norm()).item()
    assert error < (2e-2 if bf16 else 1e-6), error


def test_score_cache_keys_tell_the_cpu_4bit_kernel_paths_apart():
    """The same nf4@bf16 model on a CPU with AVX-512 BF16 and on one without gives other numbers: other cache keys."""
    from types import SimpleNamespace

    from pytest_quantbench.cache import cache_key, identity

    def handle(extra):
        return SimpleNamespace(source={"sha256": "ab"}, precision=parse_precision("nf4@bf16"), device="cpu",
                               extra=extra)

    keys = {cache_key(identity(handle(extra)), "loglikelihood", [["a", "b"]])
            for extra in ({}, {"cpu_4bit_kernel": "AVX-512 BF16 (bf16 activations)"},
                          {"cpu_4bit_kernel": "dequantize, then bf16 matmul"})}
    assert len(keys) == 3
