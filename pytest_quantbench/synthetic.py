"""Synthetic-weight models: a real architecture with random weights, for speed and memory without downloads.

Speed and memory depend on shapes, not on weight values (optimum-benchmark's `no_weights` idea). The model source
`synthetic:<preset>` (or `synthetic:<config.json>`, optionally `:key=value,...` to override config fields) is written
once as an ordinary safetensors checkpoint in the cache, so every precision loads it through the same code path as
a real model. A byte-level tokenizer (256 byte tokens) goes with it: no tokenizer download either.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

_QWEN = {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
         "max_position_embeddings": 32768}
_LLAMA3 = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "max_position_embeddings": 131072,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}}

# Shapes copied from the models' published config.json files.
PRESETS: dict[str, dict] = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192},
    "qwen2.5-0.5b": {**_QWEN, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True},
    "qwen2.5-7b": {**_QWEN, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "tie_word_embeddings": False},
    # DeepSeek-R1-Distill-Qwen-14B has this shape.
    "qwen2.5-14b": {**_QWEN, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
                    "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064,
                    "tie_word_embeddings": False},
    "qwen2.5-32b": {**_QWEN, "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
                    "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064,
                    "tie_word_embeddings": False},
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "tie_word_embeddings": True},
    "llama-3.1-70b": {**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
                      "tie_word_embeddings": False},
    "phi-2": {"model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 51200, "hidden_act": "gelu_new",
              "partial_rotary_factor": 0.4, "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
              "max_position_embeddings": 2048, "tie_word_embeddings": False},
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
    """'qwen2.5-7b' / 'cfg.json' / 'qwen2.5-7b:num_hidden_layers=2,vocab_size=1024' -> (label, config dict)."""
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
        config[key.strip()] = _parse_value(value.strip())
    return label, config


def parameter_count(config: dict) -> int:
    """Parameters of the architecture, counted on the meta device (no memory)."""
    tensors = {id(t): t for t in _meta_model(config).state_dict(keep_vars=True).values()}  # tied ones once
    return sum(t.numel() for t in tensors.values())


def _meta_model(config_dict: dict):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def byte_tokenizer():
    """A byte-level tokenizer: one token per UTF-8 byte, plus an end-of-text token (id 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _random_tensor(name: str, shape, dtype, device: str, std: float):
    import torch

    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in name.split(".")[-2] or "layernorm" in name or name.endswith("ln.weight"):
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, device=device, dtype=torch.float32) * std).to(dtype).cpu()


def write_checkpoint(config_dict: dict, target: Path, seed: int = 0) -> None:
    """Random weights for `config_dict` as bf16 safetensors shards plus config and byte tokenizer, in `target`."""
    import torch
    from safetensors.torch import save_file

    model = _meta_model(config_dict)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random numbers for a 70B shape are slow on a CPU
    torch.manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    weight_map: dict[str, str] = {}
    shard: dict = {}
    seen: set[int] = set()

    def flush() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(target / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard.clear()

    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:  # tied weights (lm_head = embed_tokens) are stored once
            continue
        seen.add(id(tensor))
        dtype = torch.bfloat16 if tensor.dtype.is_floating_point else tensor.dtype
        shard[name] = _random_tensor(name, tuple(tensor.shape), dtype, device, std)
        if sum(t.nbytes for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(target)
    byte_tokenizer().save_pretrained(target)


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
