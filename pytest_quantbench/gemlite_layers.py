"""gemlite: weight-only low-bit linear layers decoded by gemlite's Triton kernels, on CUDA only.

After the model loads in the activation dtype (fp16, gemlite's main one, or bf16 with @bf16), every nn.Linear but
the output head, the family's high-precision modules and transformers' `_keep_in_fp32_modules` becomes a
`GemLiteLinearTriton`, made by gemlite.helper:
  gemlite4      4-bit groups (default 128 along the input), asymmetric: round-to-nearest between each group's minimum
                and maximum (no calibration), packed by `A16W4_HQQ_INT.from_weights`; with +hqq the weights are
                quantized by HQQ's half-quadratic optimizer first and converted by `from_hqqlinear`, which is what
                HQQ's own gemlite backend (`prepare_for_inference(backend="gemlite")`) calls
  gemlite8      8-bit, symmetric per output channel: gemlite's own quantizer, `A16W8_INT8.from_linear`
gemlite picks the kernel from the batch (rows of the input): GEMV at 1 to 4 rows (4-bit; 1 to 2 at 8-bit), split-K
GEMM below 64, GEMM beyond. Its forward is a registered custom op, so torch.compile takes it into one graph.
A layer's q/k/v projections are quantized as one gemlite layer, and its gate/up projections as another
(fusion.fuse_quantized): at one row a small matmul cannot read its weight at the bandwidth a large one does. Both
quantizers work per output row, so the codes are those of the layers quantized apart; with +hqq, HQQ's optimizer
runs over the fused weight. QB_COMPILE_FUSE=0 quantizes every layer apart.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Callable
from typing import Any

from .errors import ModelLoadError
from .fusion import compile_fuse, fuse_quantized

DTYPES = ("fp16", "bf16")
# gemlite's Triton autotuning over its short list of configurations per kernel, timed under CUDA graphs (as the
# compiled step replays them). Its "max" lists are far longer: the 4-bit batch-1 kernel's took over 200 s for the 7B
# shapes on an H200. The choices are saved in the cache directory per GPU and gemlite version, so that later loads
# (and the reruns a regression gate compares) run the same kernel configurations.
AUTOTUNE = {"GEMV_REVSPLITK": "fast", "GEMV_SPLITK": "fast", "GEMV": "fast", "GEMM_SPLITK": "fast", "GEMM": "fast"}
GROUP_SIZE = 128
MIN_WIDTH = 32  # gemlite takes input widths that are multiples of 32 (and of the group size)


def parse_arg(bits: int) -> Callable[[str], dict]:
    """A parser of '@g64,bf16' (4-bit) or '@bf16' -> group size and activation dtype."""

    def parse(arg: str) -> dict:
        out: dict = {}
        for token in arg.split(","):
            if token in DTYPES:
                out["compute_dtype"] = token
            elif bits == 4 and (match := re.fullmatch(r"g(\d+)", token)):
                out["group_size"] = int(match[1])
            else:
                group = "g<group size> and/or " if bits == 4 else ""
                raise ValueError(f"unknown option {token!r}; expected {group}an activation dtype ({', '.join(DTYPES)})")
        return out

    return parse


def activation_dtype(precision) -> str:
    return precision.compute_dtype or "fp16"


def torch_activation_dtype(name: str):
    """fp16 or bf16 as a torch dtype (here rather than from precisions.py, which imports this module)."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}[name]


def targets(model, family: str) -> list[str]:
    """Names of the nn.Linear layers gemlite replaces: all but the output head, the family's high-precision modules
    (a vision tower, its projector) and transformers' `_keep_in_fp32_modules` (T5's `wo`, which T5 reads the dtype of)."""
    import torch

    from .families import FAMILIES

    head = model.get_output_embeddings()
    kept = {*FAMILIES[family].keep_high_precision, *(getattr(model, "_keep_in_fp32_modules", None) or ())}
    return [name for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and module is not head and not kept & set(name.split("."))]


def check_widths(model, names: list[str], group: int) -> None:
    """ModelLoadError naming the first layer gemlite cannot take: its input width must divide by 32 and the group."""
    for name in names:
        width = model.get_submodule(name).in_features
        if width % MIN_WIDTH or width % group:
            fitting = [g for g in (128, 64, 32) if all(model.get_submodule(n).in_features % g == 0 for n in names)]
            hint = f"; use @g{fitting[0]}" if fitting else ""
            raise ModelLoadError(f"gemlite needs every input width divisible by {MIN_WIDTH} and the group size "
                                 f"({group}); {name} has {width}{hint}")


def quantize_groups(weight, bits: int, group: int):
    """Round-to-nearest asymmetric quantization of an (out, in) weight in groups of `group` inputs: (codes as uint8,
    scales, zero points), each (out, in / group) for the last two; W ~ (codes - zero) * scale."""
    import torch

    w = weight.float().reshape(weight.shape[0], -1, group)
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    top = 2**bits - 1
    scale = ((high - low) / top).clamp(min=1e-8)  # a constant group still gets a usable scale
    zero = -low / scale
    codes = (w / scale + zero).round().clamp(0, top).to(torch.uint8)
    return codes.reshape(weight.shape), scale.squeeze(-1), zero.squeeze(-1)


def dequantize_groups(codes, scale, zero):
    """The weight `quantize_groups` stands for, in float32."""
    out, inputs = codes.shape
    w = codes.float().reshape(out, scale.shape[1], -1)
    return ((w - zero[..., None]) * scale[..., None]).reshape(out, inputs)


def _layer(linear, bits: int, group: int, dtype, use_hqq: bool):
    from gemlite.helper import A16W4_HQQ_INT, A16W8_INT8

    device = str(linear.weight.device)
    if bits == 8:
        return A16W8_INT8(device=device, dtype=dtype).from_linear(linear)
    if use_hqq:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        hqq_layer = HQQLinear(linear, BaseQuantizeConfig(nbits=4, group_size=group), compute_dtype=dtype, device=device)
        return A16W4_HQQ_INT(device=device, dtype=dtype).from_hqqlinear(hqq_layer)
    codes, scale, zero = quantize_groups(linear.weight.data, 4, group)
    bias = linear.bias.data if linear.bias is not None else None
    return A16W4_HQQ_INT(device=device, dtype=dtype).from_weights(codes, scale.to(dtype), zero.to(dtype), bias=bias)


def tuned_configs_path():
    """Where the autotuned kernel configurations of this GPU and gemlite version are kept."""
    from importlib.metadata import version

    import torch

    from .cache import cache_root

    gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    return cache_root() / "gemlite" / f"{gpu}-gemlite-{version('gemlite')}.json"


def replace_linears(model, bits: int, group: int, dtype_name: str, use_hqq: bool = False) -> dict:
    """Swap the layers `targets` names for gemlite ones in place; what ran, for the record's `quantization`."""
    from importlib.metadata import version

    import gemlite
    import torch

    from .families import model_family

    dtype = torch_activation_dtype(dtype_name)
    names = targets(model, model_family(model.config))
    check_widths(model, names, group if bits == 4 else MIN_WIDTH)
    gemlite.set_autotune(dict(AUTOTUNE), use_cuda_graph=True)
    configs = tuned_configs_path()
    loaded = configs.exists() and gemlite.load_config(str(configs), print_error=False)
    start = time.perf_counter()
    layers, apart, fused = [], names, ""
    if compile_fuse():
        layers, apart, fused = fuse_quantized(model, names, lambda linear: _layer(linear, bits, group, dtype, use_hqq))
    for name in apart:
        parent, _, child = name.rpartition(".")
        layer = _layer(model.get_submodule(name), bits, group, dtype, use_hqq)
        setattr(model.get_submodule(parent), child, layer)
        layers.append(layer)
    torch.cuda.synchronize()
    quantize_s = time.perf_counter() - start
    start = time.perf_counter()
    # gemlite autotunes each kernel at its first call for a shape, timing several Triton configurations (seconds per
    # shape). Done here at batch 1, the decode step's GEMV, it counts as load time rather than in the first measured
    # generation or the compile time; a compiled step's first (uncaptured) run would tune it too, as would a prefill
    # or another batch size, at their first call.
    with torch.no_grad():
        for layer in layers:
            layer(torch.zeros(1, layer.in_features, dtype=dtype, device=layer.W_q.device))
    torch.cuda.synchronize()
    try:
        configs.parent.mkdir(parents=True, exist_ok=True)
        gemlite.cache_config(str(configs))
        saved = f"saved to {configs}"
    except OSError as error:  # a read-only cache: the next load tunes again
        saved = f"not saved ({error.strerror})"
    processor = "A16W8_INT8" if bits == 8 else "A16W4_HQQ_INT"
    quantizer = ("gemlite (symmetric, per channel)" if bits == 8 else
                 "hqq (half-quadratic, asymmetric)" if use_hqq else "round-to-nearest (min-max, asymmetric)")
    return {"kernel": f"GemLiteLinearTriton ({processor})", "quantizer": quantizer, "bits": bits,
            "group_size": group if bits == 4 else "per-channel", "layers_replaced": len(names),
            "gemlite_layers": len(layers), "fused": fused,
            "activation_dtype": dtype_name, "gemlite": version("gemlite"), "quantize_s": round(quantize_s, 2),
            "autotune_s": round(time.perf_counter() - start, 2),
            "autotune": ", ".join(f"{kernel} {mode}" for kernel, mode in AUTOTUNE.items()) + " (CUDA graphs)",
            "tuned_configs": f"loaded from {configs}" if loaded else saved}


def _check(precision, device: str) -> str | None:
    """Reasons beyond a missing package or device: +hqq without hqq, a Triton older than gemlite needs."""
    if precision.option("hqq") and importlib.util.find_spec("hqq") is None:
        return f"{precision.name} needs the python package hqq (pip install hqq) for +hqq: not installed"
    import triton

    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 6):
        return f"{precision.name}: gemlite 0.6 needs triton >= 3.6; this is {triton.__version__}"
    return None


def fields(bits: int) -> dict[str, Any]:
    """The registry fields of gemlite4 / gemlite8 (precisions.py registers them)."""

    def build(precision, device: str) -> dict:
        return {"dtype": torch_activation_dtype(activation_dtype(precision))}

    def after_load(precision, model, device: str) -> tuple[Any, dict]:
        return model, replace_linears(model, bits, precision.option("group_size", GROUP_SIZE), activation_dtype(precision),
                                      bool(precision.option("hqq")))

    what = (f"4-bit weight-only, asymmetric groups of {GROUP_SIZE} (round-to-nearest; +hqq: HQQ-optimized)" if bits == 4
            else "8-bit weight-only, symmetric per-channel")
    return {"library": "gemlite", "description": f"{what}, gemlite's Triton GEMV/GEMM kernels; fp16 (or @bf16) activations",
            "build": build, "after_load": after_load, "requires": ("gemlite", "triton"), "needs_cuda": True,
            "check": _check, "parse_arg": parse_arg(bits),
            "arg_help": "[@g<group>,fp16|bf16]" if bits == 4 else "[@fp16|@bf16]",
            "flags": ("hqq",) if bits == 4 else (), "options": (("group_size", GROUP_SIZE),) if bits == 4 else ()}
