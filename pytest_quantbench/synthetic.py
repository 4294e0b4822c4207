"""Synthetic-weight models: a real architecture with random weights, for speed and memory without downloads.

Speed and memory depend on shapes, not on weight values (optimum-benchmark's `no_weights` idea). The model source
`synthetic:<preset>` (or `synthetic:<config.json>`, optionally `:key=value,...` to override config fields) is written
once as an ordinary safetensors checkpoint in the cache, so every precision loads it through the same code path as
a real model. A byte-level tokenizer (256 byte tokens) goes with it: no tokenizer download either. Every family
works: decoder-only, encoder-decoder (T5) and image-text (PaliGemma, with a processor: SigLIP image settings and
the byte tokenizer with `<bos>` and `<image>` tokens).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from .families import auto_class, model_family

_QWEN = {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
         "max_position_embeddings": 32768}
_LLAMA3 = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "max_position_embeddings": 131072,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}}



def _decoder(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tied: bool) -> dict:
    """A decoder's shape in config.json's names."""
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
            "tie_word_embeddings": tied}


# Shapes copied from the models' published config.json files.
PRESETS: dict[str, dict] = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192},
    "qwen2.5-0.5b": {**_QWEN, **_decoder(896, 4864, 24, 14, 2, 151936, tied=True)},
    "qwen2.5-7b": {**_QWEN, **_decoder(3584, 18944, 28, 28, 4, 152064, tied=False)},
    "qwen2.5-14b": {**_QWEN, **_decoder(5120, 13824, 48, 40, 8, 152064, tied=False)},  # DeepSeek-R1-Distill-Qwen-14B's
    "qwen2.5-32b": {**_QWEN, **_decoder(5120, 27648, 64, 40, 8, 152064, tied=False)},
    "llama-3.2-1b": {**_LLAMA3, **_decoder(2048, 8192, 16, 32, 8, 128256, tied=True), "head_dim": 64},
    "llama-3.1-70b": {**_LLAMA3, **_decoder(8192, 28672, 80, 64, 8, 128256, tied=False)},
    "phi-2": {"model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 51200, "hidden_act": "gelu_new",
              "partial_rotary_factor": 0.4, "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
              "max_position_embeddings": 2048, "tie_word_embeddings": False},
    # Encoder-decoder (AutoModelForSeq2SeqLM): google/flan-t5-base.
    "flan-t5-base": {"model_type": "t5", "d_model": 768, "d_ff": 2048, "d_kv": 64, "num_layers": 12,
                     "num_decoder_layers": 12, "num_heads": 12, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
                     "dense_act_fn": "gelu_new", "is_gated_act": True, "layer_norm_epsilon": 1e-6, "n_positions": 512,
                     "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                     "tie_word_embeddings": False, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1},
    # Image-text (AutoModelForImageTextToText): google/paligemma-3b-pt-224, a SigLIP-So400m vision tower (224 px,
    # 14 px patches: 256 image tokens) and a Gemma-2B language model.
    "paligemma-3b": {"model_type": "paligemma", "hidden_size": 2048, "projection_dim": 2048, "vocab_size": 257216,
                     "image_token_index": 257152, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
                     "text_config": {"model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384,
                                     "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1,
                                     "head_dim": 256, "vocab_size": 257216, "num_image_tokens": 256,
                                     "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
                                     "rope_theta": 10000.0, "max_position_embeddings": 8192},
                     "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                                       "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                                       "image_size": 224, "patch_size": 14, "num_image_tokens": 256,
                                       "projection_dim": 2048, "projector_hidden_act": "gelu_fast",
                                       "vision_use_head": False}},
}
# Tiny shapes of the same architectures, for fast CPU tests.
PRESETS["tiny-t5"] = {**PRESETS["flan-t5-base"], "d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 2,
                      "num_decoder_layers": 2, "num_heads": 4, "vocab_size": 512}
PRESETS["tiny-paligemma"] = {
    **PRESETS["paligemma-3b"], "hidden_size": 64, "projection_dim": 64, "vocab_size": 2048,
    "text_config": {**PRESETS["paligemma-3b"]["text_config"], "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 32, "vocab_size": 2048,
                    "num_image_tokens": 16},
    "vision_config": {**PRESETS["paligemma-3b"]["vision_config"], "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                      "num_image_tokens": 16, "projection_dim": 64},
}

SHARD_BYTES = 2 << 30


class SyntheticError(ValueError):
    """An unknown preset, an unreadable config file or a bad override."""


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def synthetic_config(source: str) -> tuple[str, dict]:
    """'qwen2.5-7b' / 'cfg.json' / 'qwen2.5-7b:num_hidden_layers=2,vocab_size=1024' -> (label, config dict).
    A dotted key sets a field of a nested config: 'paligemma-3b:text_config.num_hidden_layers=2'."""
    base, _, overrides = source.partition(":")
    if base.endswith(".json"):
        try:
            config = json.loads(Path(base).expanduser().read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SyntheticError(f"synthetic config {base!r} could not be read: {error}") from error
        if "model_type" not in config:
            raise SyntheticError(f"synthetic config {base!r} has no model_type")
        label = Path(base).stem
    elif base in PRESETS:
        config, label = dict(PRESETS[base]), base
    else:
        raise SyntheticError(f"unknown synthetic preset {base!r}; presets: {', '.join(PRESETS)} (or a config.json)")
    for item in filter(None, overrides.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SyntheticError(f"bad override {item!r} in {source!r}: expected key=value")
        *parents, field = key.strip().split(".")
        target = config
        for parent in parents:
            if not isinstance(target.get(parent), dict):
                raise SyntheticError(f"bad override {item!r} in {source!r}: {parent!r} is not a nested config")
            target[parent] = target = dict(target[parent])  # a copy: the preset itself stays as published
        target[field] = _parse_value(value.strip())
    return label, config


def parameter_count(config: dict) -> int:
    """Parameters of the architecture, counted on the meta device (no memory)."""
    return sum(t.numel() for _, t in _stored_tensors(_meta_model(config), config))


def _stored_tensors(model, config_dict: dict):
    """(name, tensor) to write: tied weights once, except an output head the config says is untied (T5 v1.1 and
    Flan-T5: transformers ties T5's head on construction and unties it when the checkpoint holds a distinct one)."""
    head = model.get_output_embeddings()
    untied = config_dict.get("tie_word_embeddings") is False and head is not None and \
        head.weight is model.get_input_embeddings().weight
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen and not (untied and tensor is head.weight and name.endswith("lm_head.weight")):
            continue
        seen.add(id(tensor))
        yield name, tensor


def _family(config_dict: dict) -> str:
    from transformers import AutoConfig

    return model_family(AutoConfig.for_model(**config_dict))


def _meta_model(config_dict: dict):
    """The architecture on the meta device, built by its family's auto class (causal LM, seq2seq, image-text)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        return auto_class(_family(config_dict)).from_config(config)


def byte_tokenizer(image_token: bool = False):
    """A byte-level tokenizer: one token per UTF-8 byte, plus an end-of-text token (id 256); with `image_token`
    also a beginning-of-text token (257) and an image placeholder `<image>` (258), as image-text processors need."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    specials = ["<|endoftext|>", *(["<bos>", "<image>"] if image_token else [])]
    vocab.update({token: len(alphabet) + i for i, token in enumerate(specials)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    extra = {"bos_token": "<bos>", "extra_special_tokens": {"image_token": "<image>"}} if image_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   **extra)


def _byte_token_ids(config_dict: dict, family: str, tokenizer) -> dict:
    """`config_dict` with its special-token ids pointed at the byte tokenizer's tokens (the published ids belong to
    the real tokenizer); the shapes, vocabulary size included, stay as published."""
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if family == "encoder-decoder":  # T5 starts decoding from its pad token
        ids["decoder_start_token_id"] = tokenizer.pad_token_id
    if family == "image-text":
        ids.update(bos_token_id=tokenizer.bos_token_id, image_token_index=tokenizer.image_token_id)
        text = {**config_dict.get("text_config", {}), **{k: v for k, v in ids.items() if k != "image_token_index"}}
        return {**config_dict, **ids, "text_config": text}
    return {**config_dict, **ids}


def _write_processor(config, tokenizer, target: Path) -> None:
    """An image processor (the vision tower's image size, SigLIP's normalization) and the tokenizer, saved as the
    model's processor (PaliGemma's)."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    if config.model_type != "paligemma":
        raise SyntheticError(f"synthetic image-text models cover PaliGemma; {config.model_type!r} has no processor here")
    vision = config.vision_config
    images = SiglipImageProcessor(size={"height": vision.image_size, "width": vision.image_size}, resample=3,
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3, rescale_factor=1 / 255)
    images.image_seq_length = (vision.image_size // vision.patch_size) ** 2
    PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(target)


def _random_tensor(name: str, shape, dtype, device: str, std: float):
    import torch

    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in name.split(".")[-2] or "layernorm" in name or name.endswith("ln.weight"):
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, device=device, dtype=torch.float32) * std).to(dtype).cpu()


def write_checkpoint(config_dict: dict, target: Path, seed: int = 0) -> None:
    """Random weights for `config_dict` as bf16 safetensors shards plus config and byte tokenizer (and for an
    image-text model a processor), in `target`."""
    import torch
    from safetensors.torch import save_file

    family = _family(config_dict)
    tokenizer = byte_tokenizer(image_token=family == "image-text")
    if family != "decoder":
        config_dict = _byte_token_ids(config_dict, family, tokenizer)
    model = _meta_model(config_dict)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random numbers for a 70B shape are slow on a CPU
    torch.manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    weight_map: dict[str, str] = {}
    shard: dict = {}

    def flush() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(target / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard.clear()

    for name, tensor in _stored_tensors(model, config_dict):  # tied weights (lm_head = embed_tokens) once
        dtype = torch.bfloat16 if tensor.dtype.is_floating_point else tensor.dtype
        shard[name] = _random_tensor(name, tuple(tensor.shape), dtype, device, std)
        if sum(t.nbytes for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(target)
    if family == "image-text":
        _write_processor(model.config, tokenizer, target)
    else:
        tokenizer.save_pretrained(target)


def materialize_synthetic(source: str, cache: Path) -> tuple[Path, dict]:
    """The cached checkpoint for `source` (written on first use) and the record's description of it."""
    label, config = synthetic_config(source)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    target = cache / "synthetic" / f"{label}-{key}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            write_checkpoint(config, staging)
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target, {"kind": "synthetic", "preset": label, "config": config,
                    "note": "random weights: speed and memory are real, accuracy is meaningless"}
