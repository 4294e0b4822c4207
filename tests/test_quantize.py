"""GPTQ and AWQ (GPTQModel, calibrated, cached on disk) and HQQ (applied at load): units without a model, real
quantization of SmolLM2 on the CPU with a small calibration set, and one inner pytest session on the tiny model."""

from __future__ import annotations

import dataclasses
import gc
import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from pytest_quantbench import quantize
from pytest_quantbench.decoding import parse_decoding
from pytest_quantbench.models import ModelLoadError, load_model, resolve_model
from pytest_quantbench.precisions import parse_precision
from pytest_quantbench.trackers import unquantized_parameter_count

SMOLLM2_CONFIG = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
# Small enough that CI quantizes SmolLM2 in a minute or two; the default (16 x 128) is for real runs.
SMALL_CALIBRATION = (4, 64)


def _needs(*modules):
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (QB_WITH_GPTQ=1 bash scripts/setup.sh)")


def test_group_size_must_divide_layer_widths():
    quantize.check_group_size(SMOLLM2_CONFIG, 64)
    quantize.check_group_size(SMOLLM2_CONFIG, 32)
    with pytest.raises(ModelLoadError, match=r"group size 128 does not divide .*hidden_size 576, "
                                             r"intermediate_size 1536.*use @g64"):
        quantize.check_group_size(SMOLLM2_CONFIG, 128)


def test_group_size_error_before_quantizing(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    monkeypatch.setattr(quantize, "_quantize", lambda *a: pytest.fail("quantized despite a bad group size"))
    with pytest.raises(ModelLoadError, match="group size 128"):
        quantize.gptqmodel_checkpoint("gptq", "gptq@4bit,g128", dict(parse_precision("gptq@4bit,g128").options),
                                      tmp_path, "cpu", quantize.Calibration())


def test_prequantized_checkpoint_is_used_as_is(tmp_path, monkeypatch):
    config = {**SMOLLM2_CONFIG, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(quantize, "_quantize", lambda *a: pytest.fail("re-quantized a GPTQ checkpoint"))
    assert quantize.gptqmodel_checkpoint("gptq", "gptq", {}, tmp_path, "cpu", quantize.Calibration()) == tmp_path
    with pytest.raises(ModelLoadError, match="already quantized with gptq.*--qb-precision gptq"):
        quantize.gptqmodel_checkpoint("awq", "awq", dict(parse_precision("awq").options), tmp_path, "cpu",
                                      quantize.Calibration())


def test_quant_settings_from_the_name():
    assert quantize.quant_settings(dict(parse_precision("gptq").options)) == {
        "bits": 4, "group_size": 64, "desc_act": False, "sym": True}
    assert quantize.quant_settings(dict(parse_precision("gptq@8bit,g32+desc+asym").options)) == {
        "bits": 8, "group_size": 32, "desc_act": True, "sym": False}
    assert parse_precision("hqq@8bit,g32").option("bits") == 8


def test_calibration_windows(smollm2_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    samples = quantize.calibration_samples(tokenizer, quantize.Calibration(samples=5, seq_len=32))
    assert [len(s["input_ids"]) for s in samples] == [32] * 5
    assert samples[0]["input_ids"] != samples[1]["input_ids"]
    with pytest.raises(ModelLoadError, match="too few for 1000 samples"):
        quantize.calibration_samples(tokenizer, quantize.Calibration(samples=1000, seq_len=512))
    train = tmp_path / "wikitext2" / "wikitext-2-raw"
    train.mkdir(parents=True)
    (train / "wiki.train.raw").write_text("a b c\n" * 50)
    assert quantize.Calibration(data_dir=tmp_path).text_file() == train / "wiki.train.raw"
    assert quantize.Calibration(data_dir=None).text_file().name == "calibration.txt"


@pytest.mark.parametrize("name", ["gptq", "awq", "hqq"])
def test_missing_library_is_a_skip_reason(name):
    precision = dataclasses.replace(parse_precision(name), requires=("no_such_module",))
    reason = precision.why_unavailable("cpu")
    assert "no_such_module" in reason and precision.library in reason and "not installed" in reason


@pytest.fixture(scope="module")
def tiny_quantizable_dir(tmp_path_factory, smollm2_dir):
    """A 2-layer random Llama whose every width divides by 64 (AWQ's clip search needs that; the shared tiny model's
    key/value projections are 32 wide)."""
    from conftest import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-quantizable"), smollm2_dir, num_key_value_heads=4)


def test_awq_needs_output_widths_divisible_by_64(tmp_path):
    quantize.check_awq_widths({**SMOLLM2_CONFIG, "num_key_value_heads": 3})  # 3 x 64 = 192
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
    with pytest.raises(ModelLoadError, match="divisible by 64; this model has num_key_value_heads x head_dim 32"):
        quantize.check_awq_widths(tiny)
    (tmp_path / "config.json").write_text(json.dumps(tiny))
    with pytest.raises(ModelLoadError, match="divisible by 64"):
        quantize.gptqmodel_checkpoint("awq", "awq", dict(parse_precision("awq").options), tmp_path, "cpu",
                                      quantize.Calibration())


@pytest.fixture
def small_calibration():
    return quantize.Calibration(*SMALL_CALIBRATION)


def _greedy(handle, prompt="What is the capital of France?", tokens=8):
    return handle.generate([prompt], parse_decoding("greedy"), tokens)[0][0]


def _gptqmodel_scratch() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "gptqmodel_*")))


@pytest.mark.slow
@_needs("gptqmodel", "optimum")
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantizes_once_then_loads_from_the_cache(tiny_quantizable_dir, tmp_path, monkeypatch, small_calibration,
                                                  method):
    """The whole path on the tiny model in a fresh cache: quantize, save atomically, record, reload from the cache."""
    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path / "cache"))
    scratch = _gptqmodel_scratch()
    spec = resolve_model(f"tiny={tiny_quantizable_dir}")
    first = load_model(spec, parse_precision(method), "cpu", calibration=small_calibration)
    info = first.extra
    assert info["checkpoint"] == "quantized now" and info["quantize_s"] > 0
    assert info["kernel"] not in ("", "unknown") and (info["bits"], info["group_size"]) == (4, 64)
    assert info["calibration_samples"] == SMALL_CALIBRATION[0]
    checkpoint = Path(info["checkpoint_dir"])
    assert checkpoint.parent == tmp_path / "cache" / "quantized" and checkpoint.name.startswith(f"{method}-4b-g64-")
    assert json.loads((checkpoint / quantize.INFO_FILE).read_text())["key"]["method"] == method
    first.generate(["Hello"], parse_decoding("greedy"), 4)  # random weights: it only has to run
    plain = load_model(spec, parse_precision("fp32"), "cpu").model  # packed int4 layers still count in full:
    assert unquantized_parameter_count(first.model) == sum(p.numel() for p in plain.parameters())
    del plain
    del first
    gc.collect()

    second = load_model(spec, parse_precision(method), "cpu", calibration=small_calibration)
    assert second.extra["checkpoint"] == "cached" and second.extra["quantize_s"] == info["quantize_s"]
    assert [p.name for p in (tmp_path / "cache" / "quantized").iterdir()] == [checkpoint.name]  # no staging left
    del second
    gc.collect()
    assert _gptqmodel_scratch() <= scratch  # GPTQModel's /tmp scratch folders are gone


@pytest.mark.slow
@_needs("gptqmodel", "optimum")
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_smollm2_answers_after_quantization(smollm2_dir, small_calibration, tmp_path, method):
    """SmolLM2 in 4 bits still knows Paris. The checkpoint goes to the shared cache, so only a machine's first run
    pays for quantization (on 2 CPU cores about 1-2 min for GPTQ, several minutes for AWQ)."""
    spec = resolve_model(f"smollm2-135m={smollm2_dir}")
    handle = load_model(spec, parse_precision(method), "cpu", calibration=small_calibration)
    info = handle.extra
    assert info["checkpoint"] in ("quantized now", "cached") and info["quantize_s"] > 0
    assert "Paris" in _greedy(handle, tokens=12)
    assert handle.footprint_mb < 0.3 * 513  # fp32 is 513 MB; 4-bit layers + bf16 embeddings: about 110 MB
    del handle
    gc.collect()
    start = time.perf_counter()
    again = load_model(spec, parse_precision(method), "cpu", calibration=small_calibration)
    assert again.extra["checkpoint"] == "cached" and time.perf_counter() - start < 120
    del again
    gc.collect()
    # A copy without our quantbench.json is a pre-quantized checkpoint like a hub one: loaded as it is.
    shutil.copytree(info["checkpoint_dir"], tmp_path / "pre", ignore=shutil.ignore_patterns(quantize.INFO_FILE))
    prequantized = load_model(resolve_model(f"pre={tmp_path / 'pre'}"), parse_precision(method), "cpu", calibration=small_calibration)
    assert prequantized.extra["checkpoint"] == "pre-quantized" and "quantize_s" not in prequantized.extra


@pytest.mark.slow
@_needs("hqq")
def test_hqq_replaces_decoder_linears(tiny_model_dir):
    spec = resolve_model(f"tiny={tiny_model_dir}")
    plain = load_model(spec, parse_precision("fp32"), "cpu")
    weights = sum(m.weight.numel() for m in plain.model.model.layers.modules() if type(m).__name__ == "Linear")
    plain_mb = plain.footprint_mb
    plain_count = sum(p.numel() for p in plain.model.parameters())
    del plain
    handle = load_model(spec, parse_precision("hqq@4bit,g32"), "cpu")
    kinds = {type(m).__name__ for m in handle.model.model.layers.modules()}
    assert "HQQLinear" in kinds and "Linear" not in kinds
    assert type(handle.model.lm_head).__name__ == "Linear"  # lm_head stays as it is
    assert handle.extra["kernel"].startswith("HQQLinear") and handle.extra["compute_dtype"] == "fp32"
    # 4-bit weights plus fp32 scales/zeros per 32: 0.75 bytes per weight instead of 4 (embeddings unchanged)
    assert plain_mb - handle.footprint_mb == pytest.approx(weights * (4 - 0.75) / 2**20, rel=0.01)
    assert unquantized_parameter_count(handle.model) == plain_count
    handle.generate(["Hello"], parse_decoding("greedy"), 4)


@pytest.mark.slow
@_needs("gptqmodel", "optimum")
def test_session_records_quantization(pytester, tiny_model_dir, tmp_path, monkeypatch):
    """`--qb-precision gptq` from the command line: the record carries quantize_s and the kernel, which is the
    GPTQModel quantized-linear class whose forward ran while measuring (whichever one GPTQModel picked for this CPU:
    TorchAtenLinear, TorchCpuAvx512Linear, ...)."""
    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path / "cache"))
    pytester.makepyfile("""
        import json

        from gptqmodel.nn_modules.qlinear import BaseQuantLinear

        def test_speed(quantbench):
            ran = set()
            for module in quantbench.model.model.modules():
                if isinstance(module, BaseQuantLinear):
                    module.register_forward_hook(lambda layer, *_: ran.add(type(layer).__name__))
            quantbench.measure(max_new_tokens=4)
            with open("ran.json", "w") as out:
                json.dump(sorted(ran), out)
    """)
    # A subprocess: GPTQModel registers torch operators at import, which an in-process rerun cannot repeat.
    result = pytester.runpytest_subprocess(
        f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=gptq", "--qb-decoding=greedy", "--qb-repeats=1",
        "--qb-calibration-samples=4", "--qb-calibration-seq-len=32", "-p", "no:cacheprovider",
        "--basetemp", str(tmp_path / "inner"))
    result.assert_outcomes(passed=1)
    record = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())["records"][0]
    assert record["metrics"]["quantize_s"] > 0
    ran = json.loads((pytester.path / "ran.json").read_text())
    assert ran and record["model_info"]["quantization"]["kernel"] == ",".join(ran)
    assert record["model_info"]["quantization"]["calibration_samples"] == 4


def test_cuda_kernel_choice_avoids_machete_for_narrow_layers(tmp_path):
    from pytest_quantbench.quantize import cuda_backend, gptqmodel_load_kwargs
    from pytest_quantbench.synthetic import PRESETS

    smollm2, qwen = tmp_path / "smollm2", tmp_path / "qwen"
    for folder, preset in ((smollm2, "smollm2-135m"), (qwen, "qwen2.5-7b")):
        folder.mkdir()
        config = {**PRESETS[preset], "quantization_config": {"bits": 4, "quant_method": "gptq"}}
        (folder / "config.json").write_text(json.dumps(config))
    assert cuda_backend("gptq", smollm2) == "gptq_triton"  # k/v 3 x 64 = 192 wide: not a multiple of 128
    assert cuda_backend("awq", smollm2) == "gemm_triton"
    assert cuda_backend("gptq", qwen) is None  # every width fits: GPTQModel chooses
    kwargs = gptqmodel_load_kwargs("gptq", dict(parse_precision("gptq").options), "cuda", smollm2)
    assert kwargs["quantization_config"].backend == "gptq_triton" and kwargs["quantization_config"].bits == 4
    assert "quantization_config" not in gptqmodel_load_kwargs("gptq", dict(parse_precision("gptq").options), "cpu", smollm2)


def test_kernel_asked_for_by_name_goes_to_gptqmodel(tmp_path):
    from pytest_quantbench.quantize import gptqmodel_load_kwargs

    assert dict(parse_precision("gptq@4bit,g128,marlin").options)["kernel"] == "marlin"
    assert dict(parse_precision("awq@gemv").options) == {"bits": 4, "group_size": 64, "kernel": "gemv"}
    with pytest.raises(ValueError, match="triton, marlin"):  # an AWQ kernel named for GPTQ: the valid ones listed
        parse_precision("gptq@gemv_fast")
    for name, backend in (("gptq@torch", "gptq_torch"), ("awq@torch", "torch_awq"), ("awq@gemm_triton", "gemm_triton")):
        kwargs = gptqmodel_load_kwargs(name.split("@")[0], dict(parse_precision(name).options), "cpu", None)
        assert kwargs["quantization_config"].backend == backend  # on any device, not only where widths force it


def test_offline_kernel_build_failure_names_a_kernel_to_ask_for():
    import urllib.error

    from pytest_quantbench.models import _load_hint

    error = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")  # seen on an offline H100
    assert "gptq@marlin or gptq@triton" in _load_hint(parse_precision("gptq"), error)
    assert "awq@marlin or awq@gemm_triton" in _load_hint(parse_precision("awq@g32"), error)
    assert _load_hint(parse_precision("gptq"), ValueError("bad shape")) == ""
