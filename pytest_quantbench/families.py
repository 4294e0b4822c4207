"""Model families: how each loads, how a prompt (and an image) becomes its inputs, which generated tokens are new,
and which modules stay in higher precision while the rest is quantized.

The family is read from the model's config (`models.model_family`), never named by the user:

  decoder          AutoModelForCausalLM + tokenizer; prompts in the chat template when the tokenizer has one
  encoder-decoder  AutoModelForSeq2SeqLM + tokenizer (T5, Flan-T5); plain prompts, the tokenizer's special tokens
                   (T5's closing </s>); the output holds decoder tokens only, after one decoder start token
  image-text       AutoModelForImageTextToText + AutoProcessor (PaliGemma); an image and a prompt per input; the
                   vision tower and the multi-modal projector stay in higher precision unless the precision says
                   `+vision`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    auto_class: str  # the transformers class that loads it
    chat_template: bool  # prompts go through the tokenizer's chat template when it has one
    special_tokens: bool  # encode() lets the tokenizer add its special tokens
    keep_high_precision: tuple[str, ...] = ()  # module names bitsandbytes leaves unquantized by default
    processor: bool = False  # loads an AutoProcessor (image processor + tokenizer)


FAMILIES = {
    "decoder": Family("decoder", "AutoModelForCausalLM", chat_template=True, special_tokens=False),
    "encoder-decoder": Family("encoder-decoder", "AutoModelForSeq2SeqLM", chat_template=False, special_tokens=True),
    "image-text": Family("image-text", "AutoModelForImageTextToText", chat_template=True, special_tokens=False,
                         keep_high_precision=("vision_tower", "multi_modal_projector"), processor=True),
}

# Task prefixes some image-text models were trained with and answer badly without (PaliGemma: "answer en <question>").
PROMPT_PREFIX = {"paligemma": "answer en "}

# Cross-attention key/value projections: run once on the encoder output, then cached, so not read per decode step.
CROSS_KV_PROJECTIONS = ("EncDecAttention.k", "EncDecAttention.v", "encoder_attn.k_proj", "encoder_attn.v_proj")

DEFAULT_IMAGE_SIZE = 224


def model_family(config) -> str:
    """decoder, encoder-decoder or image-text, read from the model config."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if getattr(config, "vision_config", None) is not None:
        return "image-text"
    return "decoder"


def auto_class(family: str):
    import transformers

    return getattr(transformers, FAMILIES[family].auto_class)


def load_tokenizer(family: str, path: Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(tokenizer, processor or None) for a checkpoint; left padding, a pad token."""
    from transformers import AutoProcessor, AutoTokenizer

    trust = {"trust_remote_code": True} if trust_remote_code else {}
    processor = AutoProcessor.from_pretrained(path, **trust) if FAMILIES[family].processor else None
    tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(path, **trust)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, processor


def adjust_load_kwargs(family: str, precision, kwargs: dict) -> dict:
    """Keep the family's high-precision modules out of bitsandbytes quantization, unless `+vision` asks otherwise.

    An explicit skip list replaces transformers' default one (the output head), so the head is named here too.
    transformers 5 matches a name from the start of a module's path, or as a regex: `.*vision_tower` finds
    `model.vision_tower`; the plain names serve versions that match substrings.
    """
    keep = FAMILIES[family].keep_high_precision
    config = kwargs.get("quantization_config")
    if keep and not precision.option("vision") and hasattr(config, "llm_int8_skip_modules"):
        config.llm_int8_skip_modules = ["lm_head", *keep, *(f".*{name}" for name in keep)]
    return kwargs


def format_prompt(handle, text: str) -> str:
    """A user message as the model expects it: the chat template where the family uses one and the tokenizer (or
    processor) has one, a trained task prefix for some image-text models, else the text itself."""
    family = FAMILIES[handle.family]
    owner = handle.processor if handle.processor is not None else handle.tokenizer
    if family.chat_template and getattr(owner, "chat_template", None):
        content = text if family.name == "decoder" else [{"type": "image"}, {"type": "text", "text": text}]
        return owner.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return PROMPT_PREFIX.get(getattr(handle.model.config, "model_type", ""), "") + text if family.processor else text


def default_image(size: int = DEFAULT_IMAGE_SIZE):
    """The image that goes with a text-only prompt to an image-text model (timing, text tasks): plain grey."""
    from PIL import Image

    return Image.new("RGB", (size, size), (128, 128, 128))


def encode(handle, texts: list[str], images: list | None = None):
    """Model inputs for a batch of (formatted) prompts, with one image per prompt for image-text models (a plain
    default image where none is given); the caller moves them to the model's device."""
    family = FAMILIES[handle.family]
    if not family.processor:
        if images:
            raise ValueError(f"{handle.spec.name} is a {handle.family} model: it takes no images")
        return handle.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=family.special_tokens)
    images = list(images) if images else [default_image() for _ in texts]
    token = getattr(handle.processor, "image_token", None)
    if token and not getattr(handle.processor, "chat_template", None):  # the image's place, at the start (PaliGemma)
        texts = [text if token in text else token + text for text in texts]
    batch = handle.processor(text=texts, images=images, return_tensors="pt", padding=True)
    batch.pop("labels", None)  # PaliGemma's processor adds training labels; with them generate() would compute a loss
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(_vision_dtype(handle.model))
    return batch


def _vision_dtype(model):
    """The dtype image pixels go in as: the vision tower's first floating-point parameter's."""
    for name, parameter in model.named_parameters():
        if "vision" in name and parameter.dtype.is_floating_point:
            return parameter.dtype
    return model.dtype


def new_tokens(handle, output, inputs):
    """The generated tokens of `generate`'s output: a decoder-only output repeats the prompt; an encoder-decoder
    output starts with one decoder start token."""
    if handle.family == "encoder-decoder":
        return output[:, 1:]
    return output[:, inputs["input_ids"].shape[1] :]


def decode_idle_modules(model, family: str) -> list:
    """Modules whose weights a decoding step does not read: the encoder and the cross-attention key/value
    projections (their output is cached) of an encoder-decoder; the vision tower and projector of an image-text
    model (they run in the prefill only)."""
    if family == "encoder-decoder":
        cross = [m for name, m in model.named_modules() if name.endswith(CROSS_KV_PROJECTIONS)]
        return [model.get_encoder(), *cross]
    return [module for _, module in _outermost(model, FAMILIES[family].keep_high_precision)]


def _outermost(model, names) -> list[tuple[str, Any]]:
    """(name, module) of the modules called one of `names`, leaving out those inside another match."""
    found = [(name, m) for name, m in model.named_modules() if name.split(".")[-1] in names]
    return [(name, m) for name, m in found if not any(name.startswith(other + ".") for other, _ in found)]


def high_precision_modules(model, family: str) -> dict:
    """What stays out of the quantized format, per module name pattern: the dtype, size (MB) and whether any of its
    layers is quantized. Covers the family's kept modules and transformers' `_keep_in_fp32_modules` (T5's `wo`,
    kept in fp32 against fp16 overflow, and left out of bitsandbytes quantization)."""
    from .trackers import model_footprint_mb

    patterns = [*FAMILIES[family].keep_high_precision, *sorted(getattr(model, "_keep_in_fp32_modules", None) or ())]
    out: dict[str, dict] = {}
    for pattern in patterns:
        modules = [module for _, module in _outermost(model, (pattern,))]
        if not modules:
            continue
        parameters = [p for m in modules for p in m.parameters()]
        out[pattern] = {
            "modules": len(modules),
            "mb": round(sum(model_footprint_mb(m) for m in modules), 3),
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in parameters}),
            "quantized": any(is_quantized_layer(sub) for m in modules for sub in m.modules()),
        }
    return out


def is_quantized_layer(module) -> bool:
    """A bitsandbytes (or other library's) quantized linear layer rather than a torch one."""
    return type(module).__module__.split(".")[0] in ("bitsandbytes", "torchao", "gptqmodel", "hqq", "gemlite")
