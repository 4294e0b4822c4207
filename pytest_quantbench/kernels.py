"""Which kernel each linear layer of a loaded model runs, read from its module class and weight tensor type (not
from the precision's name), and the model's linear layers grouped by kind and shape (what bound.py times).

A decode step's matmul has one row per sequence. Compiled with Inductor's coordinate-descent tuning on a GPU, a
one-row matmul is rewritten into a reduction Inductor generates itself, fused with a weight-only dequantization
(torch/_inductor/decomposition.py, `mm`); with more rows Inductor calls cuBLAS, after a kernel of its own for the
dequantization. Kernels of a library's own (tinygemm, bitsandbytes, GPTQModel, HQQ, gemlite) run as they are either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .fusion import decode_linears

CPU_MATMUL = "aten (CPU)"


@dataclass(frozen=True)
class Step:
    """What decides the kernels of one decode step: the device, whether Inductor compiled the step (with its
    coordinate-descent tuning), how many rows (sequences) each matmul has, and which projections it runs as one
    matmul (fusion.py)."""

    cuda: bool
    compiled: bool = False
    tuned: bool = False
    rows: int = 1
    fused: tuple = ()

    @property
    def inductor_matmul(self) -> bool:
        return self.cuda and self.compiled and self.tuned and self.rows == 1

    def matmul(self, dequantized: bool = False) -> str:
        """The kernel of a matmul over plain (or first dequantized) weights."""
        if self.inductor_matmul:
            return "Inductor"
        plain = "cuBLAS" if self.cuda else CPU_MATMUL
        if not dequantized:
            return plain
        return f"{'Inductor' if self.compiled else 'torch'} dequant + {plain}"


def decode_step(handle, decoding, sequences: int, mode: str) -> Step:
    """The decode step a measurement ran: its device, whether Inductor compiled it, its rows (sequences, times the
    beams of beam search)."""
    from .trackers import cuda_ready

    decoder = handle.compiled if mode == "compiled" else None
    compiled = decoder is not None and not decoder.fallback
    return Step(cuda=cuda_ready(handle.device), compiled=compiled, tuned=compiled and decoder.tuned,
                rows=sequences * decoding.generate_kwargs.get("num_beams", 1),
                fused=tuple(decoder.fused) if compiled else ())


def linear_modules(model, skipped=()) -> list:
    """The model's linear layers in order: modules with integer `in_features` and `out_features` (nn.Linear and
    its bitsandbytes subclasses, GPTQModel's and HQQ's quantized layers), none inside another one or in `skipped`
    (modules a decode step does not run, e.g. an encoder)."""
    skip = {id(module) for root in skipped for module in root.modules()}
    found, inside = [], set()
    for module in model.modules():
        if id(module) in skip or id(module) in inside:
            continue
        if all(isinstance(getattr(module, name, None), int) for name in ("in_features", "out_features")):
            found.append(module)
            inside.update(id(child) for child in module.modules())
    return found


def weight_type(module) -> str:
    weight = getattr(module, "weight", None)
    return type(weight).__name__ if weight is not None else "-"


def linear_kernel(module, step: Step) -> str:
    """The kernel one linear layer runs in a decode step like `step`."""
    name, weight = type(module).__name__, weight_type(module)
    library = type(module).__module__.split(".")[0]
    if library == "bitsandbytes":
        if "8bit" in name:
            return "bitsandbytes int8 matmul"
        return f"bitsandbytes {_bnb_4bit_op(module, step)}"
    if library == "gemlite":
        return f"gemlite {getattr(module, 'W_nbits', '?')}-bit"
    if name == "HQQLinear":
        return f"HQQ {str(getattr(module.backend, 'name', module.backend)).lower()}"
    if library == "gptqmodel" or "qlinear" in type(module).__module__:
        return f"GPTQModel {name.removesuffix('QuantLinear').removesuffix('Linear') or name}"
    if weight.startswith("Int4TilePacked") or weight == "TensorCoreTiledAQTTensorImpl":
        return "torchao tinygemm"
    if weight.startswith("Float8") and getattr(module.weight, "act_quant_kwargs", None) is not None:
        return "torchao fp8 _scaled_mm"
    if weight in ("Tensor", "Parameter"):
        return step.matmul()
    if weight.startswith(("Int8", "Intx", "Float8", "Int4", "AffineQuantized")):  # weight-only: dequant, matmul
        return step.matmul(dequantized=True)
    return f"{name} ({weight})"


def inductor_dequantizes(model) -> bool:
    """Whether some linear layer's weight-only dequantization is left to Inductor to fuse (torchao int8/fp8)."""
    step = Step(cuda=True, compiled=True)
    return any(linear_kernel(module, step).startswith("Inductor dequant") for module in linear_modules(model))


def _bnb_4bit_op(module, step: Step) -> str:
    """bitsandbytes' 4-bit kernel: its CPU layout runs gemv_4bit; recent versions run gemm_4bit on any rows,
    older ones gemv_4bit for one row and a dequantization before a matmul for more."""
    import torch

    if getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False):
        return "gemv_4bit"
    if hasattr(torch.ops.bitsandbytes, "gemm_4bit"):
        return "gemm_4bit"
    return "gemv_4bit" if step.rows == 1 else f"dequant + {step.matmul()}"


def kernel_counts(model, step: Step, skipped=()) -> dict[str, int]:
    """How many matmuls of a decode step run each kernel (a fused group counts once), most first."""
    layers = decode_linears(linear_modules(model, skipped), step.fused)
    return dict(Counter(linear_kernel(m, step) for m in layers).most_common())


def kernel_label(counts: dict[str, int]) -> str:
    """'torchao tinygemm ×196, cuBLAS ×1' (the LM head is seldom quantized)."""
    return ", ".join(f"{kernel} ×{count}" for kernel, count in counts.items()) or "–"
