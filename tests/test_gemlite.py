"""The gemlite precisions on a machine without CUDA: their names, the reason they skip, which layers they would replace
(on real architectures from the synthetic presets, built on the meta device) and the 4-bit group quantizer."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pytest_quantbench.cli import main
from pytest_quantbench.gemlite_layers import check_widths, dequantize_groups, quantize_groups, targets
from pytest_quantbench.models import ModelLoadError
from pytest_quantbench.precisions import parse_precision
from pytest_quantbench.synthetic import synthetic_config

TINY = "num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,num_key_value_heads=2,vocab_size=512"


def _meta_model(source: str, auto_class: str = "AutoModelForCausalLM"):
    import transformers
    from transformers import AutoConfig

    _, config = synthetic_config(source)
    with torch.device("meta"):
        return getattr(transformers, auto_class).from_config(AutoConfig.for_model(**config))


def test_names_options_and_errors():
    assert dict(parse_precision("gemlite4").options) == {"group_size": 128}
    assert dict(parse_precision("gemlite4@g64,bf16+hqq").options) == {"group_size": 64, "compute_dtype": "bf16",
                                                                      "hqq": True}
    assert dict(parse_precision("gemlite8@bf16").options) == {"compute_dtype": "bf16"}
    assert parse_precision("gemlite4").compiles and parse_precision("gemlite8").compiles
    with pytest.raises(ValueError, match="unknown option 'g64'; expected an activation dtype"):
        parse_precision("gemlite8@g64")
    with pytest.raises(ValueError, match="unknown option 'fp32'"):
        parse_precision("gemlite4@fp32")
    with pytest.raises(ValueError, match=r"has no \+hqq"):
        parse_precision("gemlite8+hqq")


@pytest.mark.parametrize("name", ["gemlite4", "gemlite8@bf16", "gemlite4+hqq"])
def test_reason_on_a_cpu_names_cuda_and_the_package(name):
    reason = parse_precision(name).why_unavailable("cpu")
    assert reason.startswith(f"{name} needs a CUDA GPU")
    if importlib.util.find_spec("gemlite") is None:
        assert reason.endswith(("the python package(s) gemlite, triton (gemlite): not installed",
                                "the python package(s) gemlite (gemlite): not installed"))


def test_list_precisions_shows_them_with_the_reason(capsys):
    assert main(["list", "precisions", "--device", "cpu"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
    assert "no: gemlite4 needs a CUDA GPU" in rows["gemlite4[@g<group>,fp16|bf16][+hqq]"]
    assert "no: gemlite8 needs a CUDA GPU" in rows["gemlite8[@fp16|@bf16]"]


def test_a_cpu_session_skips_them_before_loading(pytester):
    """The model directory is broken: a load would fail the tests, so a skip shows that none was tried."""
    broken = pytester.mkdir("broken")
    (broken / "config.json").write_text("{not json")
    pytester.makepyfile("def test_speed(quantbench):\n    quantbench.measure(max_new_tokens=4)\n")
    result = pytester.runpytest(f"--qb-model=broken={broken}", "--qb-precision=gemlite4,gemlite8@bf16",
                                "--qb-decoding=greedy", "--qb-mode=eager,compiled", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*SKIPPED*gemlite4 needs a CUDA GPU*", "*SKIPPED*gemlite8@bf16 needs a CUDA GPU*"])


def test_decoder_layers_replaced_but_the_head():
    model = _meta_model(f"qwen2.5-7b:{TINY}")  # an untied head
    per_block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"]
    assert targets(model, "decoder") == [f"model.layers.{i}.{name}" for i in range(2) for name in per_block]
    tied = _meta_model(f"qwen2.5-0.5b:{TINY}")
    assert "lm_head" not in targets(tied, "decoder") and len(targets(tied, "decoder")) == 14


def test_image_text_keeps_vision_tower_and_projector():
    model = _meta_model("tiny-paligemma", "AutoModelForImageTextToText")
    names = targets(model, "image-text")
    assert names and all(name.startswith("model.language_model.layers.") for name in names)
    assert any("vision_tower" in name for name, m in model.named_modules() if type(m) is torch.nn.Linear)


def test_t5_keeps_its_fp32_feed_forward_output():
    model = _meta_model("tiny-t5", "AutoModelForSeq2SeqLM")
    names = targets(model, "encoder-decoder")
    assert "encoder.block.0.layer.1.DenseReluDense.wi_0" in names and "decoder.block.1.layer.0.SelfAttention.q" in names
    assert not [name for name in names if name.endswith(".wo") or name == "lm_head"]


def test_widths_must_divide_by_the_group():
    model = _meta_model(f"qwen2.5-0.5b:{TINY}")
    names = targets(model, "decoder")
    check_widths(model, names, 64)
    check_widths(model, names, 32)
    with pytest.raises(ModelLoadError, match=r"group size \(128\); model.layers.0.self_attn.q_proj has 64; use @g64"):
        check_widths(model, names, 128)
    narrow = _meta_model("qwen2.5-0.5b:num_hidden_layers=1,hidden_size=48,intermediate_size=96,num_attention_heads=4,"
                         "num_key_value_heads=2,vocab_size=512")
    with pytest.raises(ModelLoadError, match=r"divisible by 32 .* has 48$"):
        check_widths(narrow, targets(narrow, "decoder"), 32)


def test_group_quantization_by_hand():
    weight = torch.tensor([[0.0, 1.0, 2.0, 3.0, -1.0, 1.0, 1.0, 1.0]])
    codes, scale, zero = quantize_groups(weight, 2, 4)  # two groups of 4, codes 0..3
    assert torch.allclose(scale, torch.tensor([[1.0, 2 / 3]])) and torch.allclose(zero, torch.tensor([[0.0, 1.5]]))
    assert codes.tolist() == [[0, 1, 2, 3, 0, 3, 3, 3]]
    assert torch.allclose(dequantize_groups(codes, scale, zero), torch.tensor([[0.0, 1, 2, 3, -1, 1, 1, 1]]))


def test_group_quantization_error_is_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(8, 256)
    codes, scale, zero = quantize_groups(weight, 4, 64)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and tuple(scale.shape) == (8, 4)
    error = (dequantize_groups(codes, scale, zero) - weight).abs().reshape(8, 4, 64)
    assert (error <= scale[..., None] / 2 + 1e-6).all()


CUDA_GEMLITE = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("gemlite") is None,
                                  reason="gemlite's kernels need a CUDA GPU and the gemlite package")


@CUDA_GEMLITE
@pytest.mark.parametrize("name", ["gemlite4", "gemlite8"])
def test_fused_projections_decode_as_the_layers_quantized_apart(name, tmp_path, monkeypatch):
    """On CUDA: q/k/v and gate/up become one gemlite layer each (4 a block, not 7), whose logits are those of the
    layers quantized apart (QB_COMPILE_FUSE=0), and the compiled step decodes eager's tokens."""
    from pytest_quantbench import compiled
    from pytest_quantbench.decoding import parse_decoding
    from pytest_quantbench.models import load_model, resolve_model

    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path))
    source = resolve_model("synthetic:qwen2.5-7b:num_hidden_layers=2,hidden_size=512,intermediate_size=1024,"
                           "num_attention_heads=8,num_key_value_heads=2,vocab_size=512")
    fused = load_model(source, parse_precision(name), "cuda")
    assert fused.extra["fused"] == "q_proj+k_proj+v_proj ×2, gate_proj+up_proj ×2"
    assert (fused.extra["layers_replaced"], fused.extra["gemlite_layers"]) == (14, 8)
    monkeypatch.setenv("QB_COMPILE_FUSE", "0")
    apart = load_model(source, parse_precision(name), "cuda")
    assert (apart.extra["fused"], apart.extra["gemlite_layers"]) == ("", 14)
    inputs = fused.encode(["abc def ghi"])
    with torch.inference_mode():
        logits, apart_logits = fused.model(**inputs).logits.float(), apart.model(**inputs).logits.float()
    assert (logits - apart_logits).abs().max() <= 1e-2 * apart_logits.abs().max()
    monkeypatch.delenv("QB_COMPILE_FUSE")
    greedy = parse_decoding("greedy")
    eager = fused.generate_ids(inputs, greedy, 8, exact_length=True).tolist()
    assert compiled.decoder_for(fused).generate(inputs["input_ids"], greedy, 8).tolist() == eager
