"""Precision registry: a name -> how to load a model in it, and whether it can run here.

Adding a precision is one `register(Precision(...))` call (or an entry point in the group
`pytest_quantbench.precisions` pointing at a Precision). Names take optional suffixes where the entry allows them:
`@<dtype>` sets the compute dtype (nf4@fp16), `+dq` turns on double quantization (nf4+dq, nf4@fp16+dq).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Precision:
    name: str
    library: str
    description: str
    build: Callable[[Precision, str], dict]  # (precision, device) -> from_pretrained kwargs
    requires: tuple[str, ...] = ()  # importable modules the precision needs
    needs_cuda: bool = False
    accepts_compute_dtype: bool = False
    accepts_double_quant: bool = False
    compute_dtype: str | None = None  # set by the @dtype suffix; None means the device's default
    double_quant: bool = False

    def why_unavailable(self, device: str) -> str | None:
        """A reason this precision cannot run on `device`, or None when it can."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"{self.name} needs the python package(s) {', '.join(missing)} ({self.library}): not installed"
        if self.needs_cuda and device != "cuda":
            return f"{self.name} needs a CUDA GPU; device is {device}"
        return None

    def load_kwargs(self, device: str) -> dict:
        return self.build(self, device)

    def params(self, device: str) -> dict:
        """What the report records about this precision beyond its name."""
        out = {"library": self.library}
        if self.accepts_compute_dtype:
            out["compute_dtype"] = self.resolved_compute_dtype(device)
        if self.accepts_double_quant:
            out["double_quant"] = self.double_quant
        return out

    def resolved_compute_dtype(self, device: str) -> str:
        return self.compute_dtype or ("bf16" if device == "cuda" else "fp32")


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _plain(dtype: str) -> Callable[[Precision, str], dict]:
    return lambda precision, device: {"dtype": torch_dtype(dtype)}


def _bnb_int8(precision: Precision, device: str) -> dict:
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "dtype": torch_dtype("fp16" if device == "cuda" else "fp32")}


def _bnb_4bit(quant_type: str) -> Callable[[Precision, str], dict]:
    def build(precision: Precision, device: str) -> dict:
        from transformers import BitsAndBytesConfig

        compute = precision.resolved_compute_dtype(device)
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_compute_dtype=torch_dtype(compute),
            bnb_4bit_use_double_quant=precision.double_quant,
        )
        # Non-quantized modules (embeddings, norms, lm_head) stay in the compute dtype.
        return {"quantization_config": config, "dtype": torch_dtype(compute)}

    return build


REGISTRY: dict[str, Precision] = {}


def register(precision: Precision) -> Precision:
    REGISTRY[precision.name] = precision
    return precision


for _dtype, _text in (("fp32", "32-bit float"), ("fp16", "16-bit float"), ("bf16", "bfloat16")):
    register(Precision(_dtype, "torch", _text, _plain(_dtype)))
register(Precision("int8", "bitsandbytes", "LLM.int8(): 8-bit weights with fp16 outlier decomposition",
                   _bnb_int8, requires=("bitsandbytes",)))
for _quant in ("nf4", "fp4"):
    register(Precision(_quant, "bitsandbytes", f"4-bit {_quant.upper()} weights (QLoRA-style), dequantized per matmul",
                       _bnb_4bit(_quant), requires=("bitsandbytes",),
                       accepts_compute_dtype=True, accepts_double_quant=True))

_entry_points_loaded = False


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group="pytest_quantbench.precisions"):
        register(entry.load())


NAME_PATTERN = re.compile(r"^(?P<base>[a-z0-9_.-]+?)(?:@(?P<compute>[a-z0-9]+))?(?P<dq>\+dq)?$")


def parse_precision(name: str) -> Precision:
    """'nf4@fp16+dq' -> the nf4 entry with compute dtype fp16 and double quantization. ValueError if unknown."""
    _load_entry_points()
    match = NAME_PATTERN.match(name.strip().lower())
    entry = REGISTRY.get(match["base"]) if match else None
    if entry is None:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(valid_names())}")
    changes: dict = {"name": name.strip().lower()}
    if match["compute"]:
        if not entry.accepts_compute_dtype:
            raise ValueError(f"precision {entry.name!r} takes no compute dtype (@{match['compute']})")
        if match["compute"] not in DTYPES:
            raise ValueError(f"unknown compute dtype {match['compute']!r} in {name!r}; valid: {', '.join(DTYPES)}")
        changes["compute_dtype"] = match["compute"]
    if match["dq"]:
        if not entry.accepts_double_quant:
            raise ValueError(f"precision {entry.name!r} has no double quantization (+dq)")
        changes["double_quant"] = True
    return dataclasses.replace(entry, **changes)


def valid_names() -> list[str]:
    _load_entry_points()
    names = []
    for entry in REGISTRY.values():
        suffix = ("[@fp32|@fp16|@bf16]" if entry.accepts_compute_dtype else "") + ("[+dq]" if entry.accepts_double_quant else "")
        names.append(entry.name + suffix)
    return names


__all__ = ["REGISTRY", "Precision", "parse_precision", "register", "torch_dtype", "valid_names"]
