"""The batch-size axis (--qb-batch-size: ids, records, report rows), the kernel column read from the loaded model's
layers, and the kernel-permitted bound of a decode step, on a tiny random-weight Qwen2.5 shape on the CPU."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest

# Imported here, before any in-process inner session: pytester drops from sys.modules what was first imported inside
# one, and the model class would then fail to import again for the tests that load it here.
import transformers.models.qwen2.modeling_qwen2  # noqa: F401

from pytest_quantbench.cli import main
from pytest_quantbench.compiled import tune_kernels
from pytest_quantbench.decoding import parse_decoding
from pytest_quantbench.kernels import Step, decode_step, kernel_counts, linear_kernel, linear_modules
from pytest_quantbench.models import load_model, resolve_model
from pytest_quantbench.precisions import parse_precision
from pytest_quantbench.report import records_frame
from pytest_quantbench.report.markdown import render, summary_frame
from pytest_quantbench.results import Record
from pytest_quantbench.settings import parse_batch_sizes

# 2 layers of 7 linear layers each, plus the LM head: 15; 4 query heads over 2 key/value heads of 16 dimensions.
TINY_QWEN = ("synthetic:qwen2.5-0.5b:num_hidden_layers=2,hidden_size=64,intermediate_size=128,"
             "num_attention_heads=4,num_key_value_heads=2,vocab_size=512")
FAST = ("--qb-repeats=1", "--qb-warmup=0", "--qb-decoding=greedy", "-p", "no:cacheprovider")
SPEED_TEST = """
def test_speed(quantbench):
    quantbench.measure(max_new_tokens=4)
"""


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    import os

    os.environ.setdefault("QB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return resolve_model(TINY_QWEN)


def test_batch_sizes_parse_as_positive_integers():
    assert parse_batch_sizes("1,8,32") == (1, 8, 32)
    assert parse_batch_sizes(" 8, 8 ,2") == (8, 2)
    assert parse_batch_sizes(None) == (1,)
    with pytest.raises(ValueError, match=r"--qb-batch-size must be at least 1, got 0"):
        parse_batch_sizes("1,0")
    with pytest.raises(ValueError, match=r"--qb-batch-size must be an integer, got 'x'"):
        parse_batch_sizes("x")
    with pytest.raises(ValueError, match="--qb-batch-size is empty"):
        parse_batch_sizes(",")


@pytest.mark.parametrize(("options", "ids"), [
    ((), ["tiny-fp32-greedy"]),  # the default leaves today's ids alone
    (("--qb-batch-size=8",), ["tiny-fp32-greedy-bs8"]),
    (("--qb-batch-size=1,2",), ["tiny-fp32-greedy-bs1", "tiny-fp32-greedy-bs2"]),
    (("--qb-batch-size=2", "--qb-mode=eager,compiled"), ["tiny-fp32-greedy-eager-bs2", "tiny-fp32-greedy-compiled-bs2"]),
])
def test_batch_size_joins_the_id_only_when_asked(pytester, options, ids):
    pytester.makepyfile(test_batch_ids=SPEED_TEST)
    result = pytester.runpytest("--collect-only", "-q", f"--qb-model=tiny={TINY_QWEN}", "--qb-precision=fp32",
                                *options, *FAST)
    result.stdout.fnmatch_lines([f"*test_speed[[]{name}[]]" for name in ids] + [f"*{len(ids)} test*collected*"])


def test_batch_size_from_the_ini_file_and_selected_with_k(pytester):
    pytester.makeini(f"[pytest]\nqb_model = tiny={TINY_QWEN}\nqb_precision = fp32,nf4\nqb_batch_size = 1,4\n")
    pytester.makepyfile(test_batch_ini=SPEED_TEST)
    result = pytester.runpytest("--collect-only", "-q", "-k", "bs4", *FAST)
    result.stdout.fnmatch_lines(["*tiny-fp32-greedy-bs4*", "*tiny-nf4-greedy-bs4*", "*2/4 tests collected*"])


def test_tests_of_one_batch_size_run_together(pytester):
    """Within a (model, precision), every test of batch 1 before any of batch 2: a compiled step then compiles once
    per batch size, its static cache made anew only when the batch size changes."""
    pytester.makepyfile(test_batch_order=SPEED_TEST + "\n\ndef test_more(quantbench):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q", f"--qb-model=tiny={TINY_QWEN}", "--qb-precision=fp32,nf4",
                                "--qb-batch-size=1,2", *FAST)
    order = [line.split("::")[1] for line in result.outlines if "::" in line]
    assert order == [f"{test}[tiny-{precision}-greedy-bs{batch}]" for precision in ("fp32", "nf4")
                     for batch in (1, 2) for test in ("test_speed", "test_more")]


def test_batched_session_records_the_batch_kernels_and_bound(pytester, capsys):
    """fp32 and nf4 at batch 1 and 2: one record per id with its batch size; every row of a batch decodes, so total
    decode tokens/s is the per-sequence figure times the batch; the kernel column names what the layers run; the
    bound is positive, its parts add up, and of_bound is the measured step over it."""
    pytester.makepyfile(test_batched_speed=SPEED_TEST)
    result = pytester.runpytest("-v", f"--qb-model=tiny={TINY_QWEN}", "--qb-precision=fp32,nf4",
                                "--qb-batch-size=1,2", *FAST)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*of bound (%)*"])  # the terminal table
    data = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())
    records = {r["test"].split("[")[1][:-1]: r for r in data["records"]}
    assert set(records) == {f"tiny-{p}-greedy-bs{b}" for p in ("fp32", "nf4") for b in (1, 2)}
    for name, record in records.items():
        batch, metrics = int(name[-1]), record["metrics"]
        assert record["batch_size"] == batch and metrics["sequences"] == batch
        assert metrics["decode_tokens_per_s_per_seq"] == pytest.approx(1000 / metrics["ms_per_token"])
        assert metrics["decode_tokens_per_s"] == pytest.approx(metrics["decode_tokens_per_s_per_seq"] * batch)
        assert 0 < metrics["bound_ms_per_token"] < math.inf and metrics["bound_timing"] == "perf_counter"
        assert metrics["of_bound"] == pytest.approx(metrics["ms_per_token"] / metrics["bound_ms_per_token"])
        parts = metrics["bound_linear_ms"] + metrics["bound_attention_ms"] + metrics["bound_embedding_ms"]
        assert metrics["bound_ms_per_token"] == pytest.approx(parts) and metrics["bound_attention_ms"] > 0
        assert metrics["bound_kv_length"] == metrics["prompt_tokens"] + 2  # generate's cache, mean over 4 tokens
        layers = record["model_info"]["bound_layers"]
        assert sum(layer["count"] for layer in layers) == 15
        assert sum(layer["ms"] for layer in layers) == pytest.approx(metrics["bound_linear_ms"])
    assert records["tiny-fp32-greedy-bs2"]["metrics"]["kernel"] == "aten (CPU) ×15"
    nf4 = records["tiny-nf4-greedy-bs1"]
    assert re.fullmatch(r"bitsandbytes gem[mv]_4bit ×14, aten \(CPU\) ×1", nf4["metrics"]["kernel"])  # head stays
    assert {layer["class"] for layer in nf4["model_info"]["bound_layers"]} == {"Linear4bit", "Linear"}

    markdown = (pytester.path / ".quantbench" / "quantbench.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| model"))
    for column in ("batch_size", "kernel", "ms/token", "bound ms/token", "of bound (%)", "decode tokens/s/seq"):
        assert f" {column} " in header
    with open(pytester.path / ".quantbench" / "quantbench.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["precision"], r["batch_size"]) for r in rows) == [("fp32", "1"), ("fp32", "2"), ("nf4", "1"),
                                                                        ("nf4", "2")]
    assert all(r["kernel"] and float(r["bound_ms_per_token"]) > 0 and float(r["of_bound"]) > 0 for r in rows)

    report = str(pytester.path / ".quantbench" / "quantbench.json")
    capsys.readouterr()
    assert main(["compare", report, report, "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert {row["test"].split("[")[1][:-1] for row in compared["comparisons"]} == set(records)
    assert not compared["only_in_baseline"] and not compared["only_in_new"]


def test_report_rows_are_per_batch_size():
    def record(batch: int, ms: float) -> Record:
        return Record(f"t.py::test_speed[m-bf16-greedy-bs{batch}]", "m", "bf16", "greedy", "cuda", batch_size=batch,
                      metrics={"ms_per_token": ms, "kernel": "cuBLAS ×8"})

    records = [record(1, 10.0), record(8, 12.0)]
    frame = records_frame(records)
    assert sorted(zip(frame["batch_size"], frame["ms_per_token"])) == [(1, 10.0), (8, 12.0)]
    assert len(summary_frame(frame)) == 2
    header = next(line for line in render(records, {}, {}).splitlines() if line.startswith("| model"))
    assert " batch_size " in header and " kernel " in header
    alone = render([record(1, 10.0)], {}, {})
    assert " batch_size " not in next(line for line in alone.splitlines() if line.startswith("| model"))
    assert Record.from_dict({k: v for k, v in records[0].as_dict().items() if k != "batch_size"}).batch_size == 1


def test_step_kernels_follow_device_compilation_and_rows():
    """Inductor rewrites a one-row matmul into a reduction of its own only with its coordinate-descent tuning on a
    GPU; with more rows it calls cuBLAS, after its own dequantization kernel for weight-only formats."""
    inductor_one_row = Step(cuda=True, compiled=True, tuned=True, rows=1)
    assert inductor_one_row.matmul() == "Inductor" and inductor_one_row.matmul(dequantized=True) == "Inductor"
    assert Step(cuda=True, compiled=True, tuned=True, rows=8).matmul(dequantized=True) == "Inductor dequant + cuBLAS"
    assert Step(cuda=True, compiled=True, tuned=False, rows=1).matmul() == "cuBLAS"
    assert Step(cuda=True).matmul(dequantized=True) == "torch dequant + cuBLAS"
    assert Step(cuda=False, compiled=True, tuned=True).matmul() == "aten (CPU)"


def test_kernels_are_read_from_the_layers(tiny_synthetic):
    """torchao's int8 weight-only layers are nn.Linear with an Int8Tensor weight: a dequantization then a matmul,
    fused by Inductor in a one-row compiled step on a GPU; the LM head is plain; int4 on the CPU is unpacked int8."""
    int8wo = load_model(tiny_synthetic, parse_precision("int8wo"), "cpu").model
    layers = linear_modules(int8wo)
    assert len(layers) == 15 and layers[-1] is int8wo.get_output_embeddings()
    assert kernel_counts(int8wo, Step(cuda=False)) == {"torch dequant + aten (CPU)": 14, "aten (CPU)": 1}
    assert linear_kernel(layers[0], Step(cuda=True, compiled=True, tuned=True)) == "Inductor"
    assert linear_kernel(layers[0], Step(cuda=True, rows=8)) == "torch dequant + cuBLAS"
    assert linear_kernel(layers[-1], Step(cuda=True, rows=8)) == "cuBLAS"
    # Tuning pays where Inductor fuses a dequantization; plain weights keep cuBLAS (QB_COMPILE_TUNING=auto)
    plain = load_model(tiny_synthetic, parse_precision("fp32"), "cpu").model
    assert tune_kernels(int8wo, "auto") and not tune_kernels(plain, "auto")
    assert tune_kernels(plain, "1") and not tune_kernels(int8wo, "0")
    int4wo = load_model(tiny_synthetic, parse_precision("int4wo"), "cpu").model
    assert type(linear_modules(int4wo)[0].weight).__name__.startswith("Intx")
    assert kernel_counts(int4wo, Step(cuda=False)) == {"torch dequant + aten (CPU)": 14, "aten (CPU)": 1}


def test_compiled_batch_decodes_every_row_and_its_bound_reads_the_static_cache(tiny_synthetic, monkeypatch):
    """A compiled step at batch 2 gives eager's tokens in both rows (fp32); its bound times compiled mode's default
    decode attention (math) over the static cache (one query per row, 256 positions), once per session."""
    from pytest_quantbench import compiled
    from pytest_quantbench.bound import measured_bound
    from pytest_quantbench.measure import measure_generation

    handle = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    greedy = parse_decoding("greedy")
    batches = []
    generate_ids = handle.generate_ids
    monkeypatch.setattr(handle, "generate_ids", lambda inputs, *args, **kwargs: (
        batches.append(inputs["input_ids"].shape[0]) or generate_ids(inputs, *args, **kwargs)))
    measure_generation(handle, "abc", greedy, 4, warmup=0, repeats=1, batch_size=2)
    assert batches and set(batches) == {2}  # eager generate decodes both rows
    monkeypatch.undo()
    metrics = measure_generation(handle, "abc", greedy, 4, warmup=0, repeats=1, mode="compiled", batch_size=2)
    assert metrics["sequences"] == 2 and metrics["compile_attention"] == "math"
    assert handle.compiled.cache_shape == (2, 256)  # the static cache holds both rows
    inputs = handle.encode(["abc"] * 2)
    eager = handle.generate_ids(inputs, greedy, 4, exact_length=True)
    assert compiled.decoder_for(handle).generate(inputs["input_ids"], greedy, 4).tolist() == eager.tolist()

    shapes = []
    math = compiled.math_decode_attention
    monkeypatch.setitem(compiled.DECODE_FUNCTIONS, "math", lambda module, query, key, *args, **kwargs: (
        shapes.append((tuple(query.shape), tuple(key.shape))) or math(module, query, key, *args, **kwargs)))
    step = decode_step(handle, greedy, metrics["sequences"], "compiled")
    assert step == Step(cuda=False, compiled=True, tuned=handle.compiled.tuned, rows=2,
                        fused=tuple(handle.compiled.fused))
    session_bounds: dict = {}
    bound, _ = measured_bound(handle, step, metrics, "compiled", session_bounds)
    assert shapes and set(shapes) == {((2, 4, 1, 16), (2, 2, 256, 16))}
    assert bound["bound_kv_length"] == 256 and bound["bound_ms_per_token"] > 0 and len(session_bounds) == 1
    calls = len(shapes)
    assert bound["bound_mbu"] == pytest.approx(metrics["mbu"] * bound["of_bound"])
    slower = {**metrics, "ms_per_token": 2 * metrics["ms_per_token"], "mbu": metrics["mbu"] / 2}
    again, _ = measured_bound(handle, step, slower, "compiled", session_bounds)
    assert len(shapes) == calls and again["bound_ms_per_token"] == bound["bound_ms_per_token"]
    assert again["of_bound"] == pytest.approx(2 * bound["of_bound"])
    assert again["bound_mbu"] == pytest.approx(bound["bound_mbu"])  # a slower loop: the kernels permit the same


def _step_matmuls(decoder, ids, greedy) -> int:
    """How many matmuls one compiled decode step of `decoder` runs (the profiler's aten mm/addmm calls)."""
    from torch.profiler import profile

    def count(prof) -> int:
        return sum(event.name in ("aten::mm", "aten::addmm") for event in prof.events())

    decoder.generate(ids, greedy, 2)
    with profile() as prefill_only:
        decoder.generate(ids, greedy, 1)
    with profile() as one_step:
        decoder.generate(ids, greedy, 2)
    return count(one_step) - count(prefill_only)


@pytest.mark.parametrize("attention", ["flex", "math", "grouped"])
def test_each_decode_attention_decodes_eager_tokens_and_is_what_the_bound_times(tiny_synthetic, monkeypatch,
                                                                                attention):
    """QB_DECODE_ATTENTION=flex, math or grouped: the compiled step attends with it (recorded), decodes eager's
    greedy tokens for two rows (one left-padded, so the mask matters), and the bound times that same attention."""
    from pytest_quantbench import compiled
    from pytest_quantbench.bound import measured_bound
    from pytest_quantbench.measure import measure_generation

    monkeypatch.setenv("QB_DECODE_ATTENTION", attention)
    handle = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    greedy = parse_decoding("greedy")
    inputs = handle.encode(["abc", "a longer prompt than the first"])
    eager = handle.generate_ids(inputs, greedy, 6, exact_length=True)
    assert compiled.decoder_for(handle).generate(inputs["input_ids"], greedy, 6).tolist() == eager.tolist()
    metrics = measure_generation(handle, "abc", greedy, 4, warmup=0, repeats=1, mode="compiled", batch_size=2)
    assert metrics["compile_attention"] == compiled.ATTENTION_RECORDED[attention]

    calls = []
    function = compiled.DECODE_FUNCTIONS[attention]
    monkeypatch.setitem(compiled.DECODE_FUNCTIONS, attention, lambda module, query, *args, **kwargs: (
        calls.append(tuple(query.shape)) or function(module, query, *args, **kwargs)))
    step = decode_step(handle, greedy, metrics["sequences"], "compiled")
    bound, _ = measured_bound(handle, step, metrics, "compiled", {})
    assert calls and set(calls) == {(2, 4, 1, 16)} and bound["bound_attention_ms"] > 0


def test_a_mistyped_decode_attention_is_refused_before_any_work(monkeypatch):
    from pytest_quantbench.settings import check_modes

    monkeypatch.setenv("QB_DECODE_ATTENTION", "flash")
    with pytest.raises(ValueError, match="QB_DECODE_ATTENTION='flash'.*flex, math, grouped, sdpa"):
        check_modes(["compiled"])
    assert check_modes(["eager"]) == ["eager"]
    monkeypatch.delenv("QB_DECODE_ATTENTION")
    monkeypatch.setenv("QB_CAPTURE_STEP", "graphs")
    with pytest.raises(ValueError, match=r"QB_CAPTURE_STEP='graphs' is not a setting: give 1 \(or on\) or 0"):
        check_modes(["compiled"])


def test_compiled_step_runs_sibling_projections_as_one_matmul(tiny_synthetic, monkeypatch):
    """q/k/v and gate/up run as one matmul each in the compiled step (2 layers: 4 matmuls a layer and the LM head,
    not 15), with eager's tokens; the members' weights become views of the fused weight, so eager logits and the
    weights' memory do not change. The kernel column and the bound count a fused group as one layer. QB_COMPILE_FUSE=0
    compiles the layers apart; quantized layers are never fused."""
    import torch

    from pytest_quantbench import compiled
    from pytest_quantbench.bound import measured_bound
    from pytest_quantbench.measure import measure_generation

    greedy = parse_decoding("greedy")
    handle = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    inputs = handle.encode(["abc def"])
    ids = inputs["input_ids"]
    bytes_before = sum(p.numel() * p.element_size() for p in handle.model.parameters())
    with torch.inference_mode():
        logits_before = handle.model(**inputs).logits
    eager = handle.generate_ids(inputs, greedy, 6, exact_length=True).tolist()
    decoder = compiled.decoder_for(handle)
    assert decoder.generate(ids, greedy, 6).tolist() == eager
    assert [group.names for group in decoder.fused] == [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")] * 2
    assert _step_matmuls(decoder, ids, greedy) == 9
    attention = handle.model.model.layers[0].self_attn
    group = decoder.fused[0]
    assert group.out_features == 64 + 32 + 32 and group.bias is not None  # Qwen2's q/k/v have biases
    assert attention.k_proj.weight.data_ptr() == group.weight[64:].data_ptr()
    with torch.inference_mode():
        assert torch.equal(handle.model(**inputs).logits, logits_before)
    assert handle.generate_ids(inputs, greedy, 6, exact_length=True).tolist() == eager
    assert sum(p.numel() * p.element_size() for p in handle.model.parameters()) == bytes_before

    metrics = measure_generation(handle, "abc", greedy, 4, warmup=0, repeats=1, mode="compiled")
    assert metrics["compile_fused"] == "q_proj+k_proj+v_proj ×2, gate_proj+up_proj ×2"
    step = decode_step(handle, greedy, 1, "compiled")
    assert kernel_counts(handle.model, step) == {"aten (CPU)": 9}
    assert kernel_counts(handle.model, decode_step(handle, greedy, 1, "eager")) == {"aten (CPU)": 15}
    _, layers = measured_bound(handle, step, metrics, "compiled", {})
    assert [(layer["class"], layer["out_features"], layer["count"]) for layer in layers if
            layer["class"] == "FusedLinear"] == [("FusedLinear", 128, 2), ("FusedLinear", 256, 2)]

    monkeypatch.setenv("QB_COMPILE_FUSE", "0")
    apart = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    decoder = compiled.decoder_for(apart)
    assert decoder.generate(ids, greedy, 6).tolist() == eager and not decoder.fused
    assert _step_matmuls(decoder, ids, greedy) == 15
    monkeypatch.delenv("QB_COMPILE_FUSE")
    quantized = load_model(tiny_synthetic, parse_precision("int8wo"), "cpu")
    decoder = compiled.decoder_for(quantized)
    decoder.generate(quantized.encode(["abc"])["input_ids"], greedy, 3)
    assert not decoder.fused


def _round_to_nearest(linear):
    """gemlite4's quantizer on the CPU: the layer with its weight replaced by its 4-bit groups' values."""
    import torch

    from pytest_quantbench.gemlite_layers import dequantize_groups, quantize_groups

    out = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(dequantize_groups(*quantize_groups(linear.weight, 4, 32)))
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return out


def _quantize_apart(model, names):
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, _round_to_nearest(model.get_submodule(name)))


def test_quantized_sibling_projections_are_quantized_as_one_layer(tiny_synthetic):
    """fuse_quantized quantizes each layer's q/k/v and gate/up as one layer (as gemlite does on CUDA) and makes the
    members slices of its output: per-row quantization gives the logits of the layers quantized apart, the eager and
    compiled steps give the same tokens, each step runs 4 matmuls a layer, the memory is that of the separate layers,
    and no output is held after a forward pass."""
    import torch

    from pytest_quantbench import compiled
    from pytest_quantbench.fusion import fuse_quantized
    from pytest_quantbench.gemlite_layers import targets

    greedy = parse_decoding("greedy")
    apart = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    names = targets(apart.model, apart.family)
    assert len(names) == 14
    _quantize_apart(apart.model, names)
    handle = load_model(tiny_synthetic, parse_precision("fp32"), "cpu")
    calls = []
    layers, rest, label = fuse_quantized(handle.model, names, lambda linear: calls.append(linear.weight.shape)
                                         or _round_to_nearest(linear))
    assert calls == [(128, 64), (256, 64)] * 2 and len(layers) == 4  # q 64 + k 32 + v 32 rows; gate 128 + up 128
    assert rest == [name for name in names if name.endswith(("o_proj", "down_proj"))]
    assert label == "q_proj+k_proj+v_proj ×2, gate_proj+up_proj ×2"
    _quantize_apart(handle.model, rest)

    inputs = handle.encode(["abc def"])
    with torch.inference_mode():
        assert torch.allclose(handle.model(**inputs).logits, apart.model(**inputs).logits, atol=1e-5)
    shared = {module.shared for module in handle.model.modules() if hasattr(module, "shared")}
    assert {s.layer for s in shared} == set(layers) and all(s.output is None for s in shared)
    assert sum(p.numel() for p in handle.model.parameters()) == sum(p.numel() for p in apart.model.parameters())
    eager = handle.generate_ids(inputs, greedy, 6, exact_length=True).tolist()
    assert eager == apart.generate_ids(inputs, greedy, 6, exact_length=True).tolist()
    assert kernel_counts(handle.model, decode_step(handle, greedy, 1, "eager")) == {"aten (CPU)": 9}
    decoder = compiled.decoder_for(handle)
    assert decoder.generate(inputs["input_ids"], greedy, 6).tolist() == eager and not decoder.fused
    assert _step_matmuls(decoder, inputs["input_ids"], greedy) == 9


def test_a_cross_attention_is_not_fused():
    """Its key/value projections read the encoder's states, not the query's input."""
    import torch

    from pytest_quantbench.fusion import sibling_groups

    def attention():
        return torch.nn.ModuleDict({name: torch.nn.Linear(8, 8) for name in ("q_proj", "k_proj", "v_proj")})

    layer = torch.nn.ModuleDict({"self_attn": attention(), "encoder_attn": attention()})
    assert [(name, names) for name, names, _ in sibling_groups(layer)] == [("self_attn", ("q_proj", "k_proj", "v_proj"))]
