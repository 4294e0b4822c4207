"""Encoder-decoder (T5) and image-text (PaliGemma) models through the same loading, precisions, decodings,
measurement and report as decoder-only ones, on tiny random-weight checkpoints (synthetic.py's tiny presets, saved
as local directories); and the image suite on a real tiny PaliGemma."""

from __future__ import annotations

import json
import time

import pytest
import torch

from pytest_quantbench.decoding import parse_decoding
from pytest_quantbench.families import is_quantized_layer, model_family
from pytest_quantbench.measure import decode_bytes_per_step, measure_generation
from pytest_quantbench.models import UNFIT_LAYERS, load_model, resolve_model
from pytest_quantbench.precisions import parse_precision
from pytest_quantbench.synthetic import PRESETS, parameter_count, synthetic_config, write_checkpoint
from pytest_quantbench.tasks import get_task
from pytest_quantbench.tasks.images import draw, make_items

CPU_PRECISIONS = ("fp32", "bf16", "int8", "nf4", "fp4")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """'t5' and 'paligemma' -> a model argument NAME=DIR for a tiny random-weight checkpoint of that family."""
    models = {}
    for name, preset in (("t5", "tiny-t5"), ("paligemma", "tiny-paligemma")):
        target = tmp_path_factory.mktemp(preset)
        write_checkpoint(synthetic_config(preset)[1], target)
        models[name] = f"{name}={target}"
    return models


def test_presets_have_the_published_sizes_and_families():
    from transformers import AutoConfig

    assert parameter_count(PRESETS["flan-t5-base"]) == pytest.approx(247.6e6, rel=0.005)  # untied head included
    assert parameter_count(PRESETS["paligemma-3b"]) == pytest.approx(2.92e9, rel=0.01)
    families = {name: model_family(AutoConfig.for_model(**PRESETS[name]))
                for name in ("flan-t5-base", "tiny-t5", "paligemma-3b", "tiny-paligemma", "qwen2.5-0.5b")}
    assert families == {"flan-t5-base": "encoder-decoder", "tiny-t5": "encoder-decoder", "paligemma-3b": "image-text",
                        "tiny-paligemma": "image-text", "qwen2.5-0.5b": "decoder"}
    _, config = synthetic_config("paligemma-3b:text_config.num_hidden_layers=2,vision_config.image_size=448")
    assert config["text_config"]["num_hidden_layers"] == 2 and config["vision_config"]["image_size"] == 448
    assert PRESETS["paligemma-3b"]["text_config"]["num_hidden_layers"] == 18  # the preset itself is untouched
    with pytest.raises(ValueError, match="'vocab_size' is not a nested config"):
        synthetic_config("paligemma-3b:vocab_size.x=1")


def test_vision_flag_on_bitsandbytes_precisions():
    assert parse_precision("nf4+vision").option("vision") and parse_precision("int8+vision").option("vision")
    assert parse_precision("fp4@bf16+dq+vision").double_quant
    with pytest.raises(ValueError, match=r"has no \+vision"):
        parse_precision("bf16+vision")


def _generate(handle, decodings=("greedy",), **images):
    for name in decodings:
        decoding = parse_decoding(name)
        if images:
            responses = handle.generate_with_images(["What is this?", "Count"], images["images"], decoding, 4)
        else:
            responses = handle.generate(["Translate to German: hello", "Count"], decoding, 4)
        assert [len(r) for r in responses] == [decoding.num_responses] * 2
        assert all(isinstance(text, str) for r in responses for text in r)


def test_t5_every_cpu_precision(tiny):
    spec = resolve_model(tiny["t5"])
    sizes = {}
    for name in (*CPU_PRECISIONS, "fp16"):
        handle = load_model(spec, parse_precision(name), "cpu")
        assert handle.family == "encoder-decoder" and type(handle.model).__name__ == "T5ForConditionalGeneration"
        assert handle.format_prompt("Summarize: x") == "Summarize: x"  # seq2seq: no chat template
        _generate(handle, ("greedy", "sample", "beam2") if name == "fp32" else ("greedy",))  # all: the session test
        out = handle.generate_ids(handle.encode(["abc"]), parse_decoding("greedy"), 5, exact_length=True)
        assert out.shape[1] == 1 + 5  # the decoder start token, then exactly the new tokens
        sizes[name] = handle.footprint_mb
        wo = handle.high_precision["wo"]
        # transformers keeps T5's feed-forward output projection `wo` out of fp16 and out of bitsandbytes
        if name in ("fp16", "int8", "nf4", "fp4"):
            assert wo["dtypes"] == ["float32"] and not wo["quantized"], (name, wo)
        if name in ("int8", "nf4", "fp4"):
            assert any(is_quantized_layer(m) for m in handle.model.modules())
    assert sizes["bf16"] == pytest.approx(sizes["fp32"] / 2, rel=0.01)
    assert sizes["bf16"] < sizes["fp16"] < sizes["fp32"]  # fp16 keeps `wo` in fp32
    assert sizes["nf4"] < sizes["int8"] < sizes["fp32"]


def _vision_layers_quantized(handle) -> bool:
    return any(is_quantized_layer(m) for name, m in handle.model.named_modules()
               if "vision_tower" in name or "multi_modal_projector" in name)


def test_paligemma_every_cpu_precision_vision_stays_high_precision(tiny):
    spec = resolve_model(tiny["paligemma"])
    images = [draw(item) for item in make_items()[:2]]
    for name in CPU_PRECISIONS:
        handle = load_model(spec, parse_precision(name), "cpu")
        assert handle.family == "image-text" and handle.accepts_images
        assert handle.format_prompt("How many?") == "answer en How many?"  # PaliGemma's trained task prefix
        _generate(handle, ("greedy", "sample", "beam2") if name == "fp32" else ("greedy",), images=images)
        _generate(handle)  # text only: a plain default image goes with each prompt
        assert not _vision_layers_quantized(handle), name
        if name in ("int8", "nf4", "fp4"):
            language = [m for n, m in handle.model.named_modules() if "language_model" in n]
            assert any(is_quantized_layer(m) for m in language), name
            assert handle.high_precision["vision_tower"]["quantized"] is False
    for name in ("nf4+vision", "int8+vision"):
        handle = load_model(spec, parse_precision(name), "cpu")
        assert _vision_layers_quantized(handle) and handle.high_precision["vision_tower"]["quantized"]
        _generate(handle, images=images)
        if name == "nf4+vision":  # the 32-wide vision layers stay in fp32, on every CPU, and the record says so
            kept = handle.high_precision[UNFIT_LAYERS]
            assert kept["layers"] == TINY_PALIGEMMA_UNFIT and kept["dtypes"] == ["float32"]
            assert not kept["quantized"] and "AVX-512" in kept["why"]
            assert all(type(handle.model.get_submodule(n)) is torch.nn.Linear for n in kept["layers"])
        else:  # int8 takes any shape
            assert UNFIT_LAYERS not in handle.high_precision


# 32 x 32 attention projections, fc1 (32 -> 64) and the projector (32 -> 64): input or output too narrow for the
# AVX-512 kernel; fc2 (64 -> 32) fits and is quantized.
TINY_PALIGEMMA_UNFIT = [f"model.vision_tower.encoder.layers.{i}.{name}" for i in (0, 1)
                        for name in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                                     "self_attn.out_proj", "mlp.fc1")] + ["model.multi_modal_projector.linear"]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_cpu_4bit_rule_is_the_shapes_bitsandbytes_can_repack(quant_type):
    """bitsandbytes repacks a 4-bit weight for its AVX-512 kernel with `_convert_weight_packed_for_cpu` (plain torch
    reshapes, so it runs on any CPU; called here directly, its private name being the only handle on that step):
    it fails for exactly the shapes the rule keeps out of quantization (SigLIP's 4304-wide MLP among them)."""
    import bitsandbytes.functional as bnb_functional

    from pytest_quantbench.precisions import BNB_4BIT_BLOCKSIZE, bnb_cpu_4bit_fits

    shapes = [(32, 32), (64, 32), (32, 64), (64, 64), (96, 32), (128, 48), (128, 64), (576, 192), (1152, 4304),
              (4304, 1152), (1536, 576), (100, 64)]
    verdicts = {}
    for in_features, out_features in shapes:
        weight = torch.randn(out_features, in_features)
        packed, state = bnb_functional.quantize_4bit(weight, blocksize=BNB_4BIT_BLOCKSIZE, quant_type=quant_type)
        try:
            bnb_functional._convert_weight_packed_for_cpu(packed, state)
            verdicts[(in_features, out_features)] = True
        except (RuntimeError, AssertionError):
            verdicts[(in_features, out_features)] = False
    assert verdicts == {shape: bnb_cpu_4bit_fits(*shape) for shape in shapes}
    assert list(verdicts.values()).count(False) == 7


def test_cpu_4bit_unfit_layers_of_a_real_paligemma_shape():
    """PaliGemma-3B's vision MLP (1152 <-> 4304) cannot take the AVX-512 kernel; its language model can. The rule reads
    a meta-device skeleton and leaves out what the skip list already keeps."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    from pytest_quantbench.precisions import bnb_cpu_4bit_unfit

    _, config = synthetic_config("paligemma-3b:text_config.num_hidden_layers=1,vision_config.num_hidden_layers=1")
    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(**config))
    assert bnb_cpu_4bit_unfit(model, ["lm_head"]) == ["model.vision_tower.encoder.layers.0.mlp.fc1",
                                                       "model.vision_tower.encoder.layers.0.mlp.fc2"]
    assert bnb_cpu_4bit_unfit(model, ["lm_head", ".*vision_tower"]) == []


def test_cpu_4bit_keeps_unfit_layers_of_a_decoder_with_its_default_skips(tmp_path, monkeypatch):
    """A decoder whose key/value projections are 16 wide: nf4 on the CPU keeps them (and, as transformers' own default,
    the output head) in fp32, quantizes the rest; on CUDA the rule does not apply."""
    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path))
    tiny = ("synthetic:qwen2.5-0.5b:num_hidden_layers=1,hidden_size=64,intermediate_size=128,num_attention_heads=4,"
            "num_key_value_heads=1,vocab_size=512")
    handle = load_model(resolve_model(tiny), parse_precision("nf4"), "cpu")
    kept = handle.high_precision[UNFIT_LAYERS]
    assert kept["layers"] == ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]
    assert all(type(handle.model.get_submodule(n)) is torch.nn.Linear for n in kept["layers"])
    assert type(handle.model.lm_head) is torch.nn.Linear  # the default skip is kept with the explicit list
    assert is_quantized_layer(handle.model.model.layers[0].self_attn.q_proj)
    assert is_quantized_layer(handle.model.model.layers[0].mlp.down_proj)
    _generate(handle)
    nf4 = parse_precision("nf4")
    assert nf4.keep_layers(nf4, "cuda", {}, lambda: pytest.fail("built a skeleton on CUDA")) == ([], "")


def _slowed(module, seconds: float):
    forward = module.forward

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    module.forward = slow


@pytest.mark.parametrize(("family", "part"), [("t5", "encoder"), ("paligemma", "vision_tower")])
def test_time_to_first_token_includes_encoder_or_vision_tower(tiny, family, part):
    """The first step mark comes after the encoder pass (seq2seq) or the vision tower (image-text prefill), and the
    decode steps after it do not run them again: a 1 s pause in that part lands in TTFT and in no decode step."""
    handle = load_model(resolve_model(tiny[family]), parse_precision("fp32"), "cpu")
    module = handle.model.get_encoder() if part == "encoder" else handle.model.model.vision_tower
    _slowed(module, 1.0)
    metrics = measure_generation(handle, handle.format_prompt("Why is the sky blue?"), parse_decoding("greedy"), 6,
                                 warmup=0, repeats=1)
    assert metrics["ttft_ms"] >= 1000
    assert metrics["ms_per_token"] < 1000  # the part ran once, before the first step mark


def test_decode_bytes_per_step_seq2seq_hand_computed(tiny):
    """Decoder weights without the encoder, the shared input embedding and the cross-attention k/v projections
    (their output is cached), plus the untied head; self-attention KV over the decoder's tokens and cross-attention
    KV over the encoder's."""
    handle = load_model(resolve_model(tiny["t5"]), parse_precision("fp32"), "cpu")
    read = sum(p.numel() for name, p in handle.model.named_parameters()
               if not name.startswith(("encoder.", "shared.")) and not name.endswith(("EncDecAttention.k.weight",
                                                                                       "EncDecAttention.v.weight")))
    assert handle.model.lm_head.weight is not handle.model.shared.weight  # Flan-T5's head is its own
    kv = 2 * 2 * 4 * 16 * 4 * (5 + 20) * 3  # k and v, decoder layers, heads, d_kv, fp32 bytes, tokens, sequences
    from pytest_quantbench.families import decode_idle_modules

    idle = decode_idle_modules(handle.model, "encoder-decoder")
    assert decode_bytes_per_step(handle.model, 3, 5, idle, cross_tokens=20) == pytest.approx(read * 4 + kv)


def test_decode_bytes_per_step_image_text_hand_computed(tiny):
    """The language model (its embedding doubles as the head, so it counts), not the vision tower or projector;
    KV of the text model (1 KV head of 32) over the image and prompt tokens."""
    from pytest_quantbench.families import decode_idle_modules

    handle = load_model(resolve_model(tiny["paligemma"]), parse_precision("fp32"), "cpu")
    tensors = [*handle.model.named_parameters(), *handle.model.named_buffers()]  # buffers: rotary frequencies
    # The input embedding module counts only through its weight, which is the head (its scale buffer is left out).
    read = sum(t.numel() for name, t in tensors if "language_model" in name and not name.endswith("embed_scale"))
    kv = 2 * 2 * 1 * 32 * 4 * 40 * 1
    idle = decode_idle_modules(handle.model, "image-text")
    assert decode_bytes_per_step(handle.model, 1, 40, idle) == pytest.approx(read * 4 + kv)


def test_image_task_runs_on_a_real_tiny_paligemma(tiny):
    handle = load_model(resolve_model(tiny["paligemma"]), parse_precision("nf4"), "cpu")
    result = get_task("images").evaluate(handle, parse_decoding("greedy"), 3, 4)
    assert result.n == 3 and 0.0 <= result.accuracy <= 1.0  # random weights: the pipeline runs, the score is noise


# --- through the plugin ------------------------------------------------------------------------------------------

FAMILY_TESTS = """
import pytest


def test_speed(quantbench):
    metrics = quantbench.measure(max_new_tokens=4)
    assert 0 < metrics["ttft_ms"] <= metrics["latency_ms"]


@pytest.mark.quantbench(decodings=["greedy"])
def test_images(quantbench):
    quantbench.evaluate("images", limit=3)
"""


def test_both_families_through_a_session(pytester, tiny):
    pytester.makepyfile(FAMILY_TESTS)
    result = pytester.runpytest(
        f"--qb-model={tiny['t5']}", f"--qb-model={tiny['paligemma']}", f"--qb-precision={','.join(CPU_PRECISIONS)}",
        "--qb-decoding=greedy,sample,beam2", "--qb-repeats=1", "--qb-warmup=0", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=35, skipped=5)  # images on T5: skipped, it takes no images
    result.stdout.fnmatch_lines(["*images: for image-text models only; t5 is encoder-decoder*"])
    data = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())
    assert data["models"]["t5"]["family"] == "encoder-decoder" and data["models"]["paligemma"]["family"] == "image-text"
    speed = [r for r in data["records"] if r["test"].split("::")[1].startswith("test_speed")]
    assert len(speed) == 30 and all(r["outcome"] == "passed" and r["metrics"]["mbu"] > 0 for r in speed)
    images = [r for r in data["records"] if r["model"] == "paligemma" and "test_images" in r["test"]]
    assert len(images) == 5 and all(r["task_details"]["images"]["n"] == 3 for r in images)
    nf4 = next(r for r in speed if r["model"] == "paligemma" and r["precision"] == "nf4")
    assert nf4["model_info"]["high_precision"]["vision_tower"]["quantized"] is False
    int8 = next(r for r in speed if r["model"] == "t5" and r["precision"] == "int8")
    assert int8["model_info"]["high_precision"]["wo"]["dtypes"] == ["float32"]
    markdown = (pytester.path / ".quantbench" / "quantbench.md").read_text()
    assert "### encoder-decoder models" in markdown and "### image-text models" in markdown
    assert "images acc (%)" in markdown
    csv = (pytester.path / ".quantbench" / "quantbench.csv").read_text().splitlines()
    assert "family" in csv[0].split(",") and sum(",image-text," in line for line in csv) == 15
