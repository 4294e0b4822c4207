"""Smoke check of the gemlite precisions on a CUDA GPU: one layer against its dequantized weights, and the decode step
eager and compiled, at batch 1.

    python scripts/gemlite_check.py [--model synthetic:qwen2.5-7b] [--precisions gemlite4,gemlite8] [--new-tokens 32]

Each precision loads through the plugin's own `load_model` (a `synthetic:` model is written once, random weights in
the published shape). The layer check feeds one random input row to `--layer` and compares the gemlite layer's output
with F.linear over the weight read from the checkpoint, quantized and dequantized again in float32 as the precision
quantizes it: the relative error is the kernel's own (~2e-3 in fp16, ~1.5e-2 in bf16), and beside it the error against the
unquantized weight (the quantization's). Decode is timed with `timed_generation`, eager (transformers' generate) and
compiled (static cache, one step under torch.compile with CUDA graphs: compiled.py), the median of `--repeats`
generations after warm-up. Another precision (bf16) may be listed for comparison; it gets no layer check. Exits 2
with a message when CUDA, gemlite or triton is missing, 1 when a layer's error is over `--max-error`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

PROMPT = "Explain in a few sentences why the sky is blue."


def fail(message: str) -> None:
    print(f"gemlite_check: {message}", file=sys.stderr)
    sys.exit(2)


def checkpoint_tensor(directory: Path, name: str):
    """One tensor of a safetensors checkpoint (sharded or not), or None when it has no such tensor."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.is_file() else {}
    file = files.get(name, "model.safetensors")
    if not (directory / file).is_file():
        return None
    with safe_open(str(directory / file), "pt", device="cuda") as shard:
        stored = shard.keys()
        return shard.get_tensor(name) if name in stored else None


def reference_weight(precision, weight, dtype):
    """The weight the precision's kernel should compute with: quantized as the precision does, dequantized in fp32."""
    import torch

    from pytest_quantbench import gemlite_layers

    weight = weight.to(dtype)
    if precision.name.startswith("gemlite8"):  # gemlite's A16W8 quantizer: symmetric per output channel
        scales = (weight.float().abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-6)
        return (weight.float() / scales).clamp(-128, 127).round() * scales
    group = precision.option("group_size")
    if precision.option("hqq"):
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=dtype, device=weight.device)
        linear.weight.data.copy_(weight)
        return HQQLinear(linear, BaseQuantizeConfig(nbits=4, group_size=group), compute_dtype=dtype,
                         device=str(weight.device)).dequantize().float()
    codes, scale, zero = gemlite_layers.quantize_groups(weight, 4, group)
    # the layer keeps scales and zero points in the activation dtype
    return gemlite_layers.dequantize_groups(codes, scale.to(dtype).float(), zero.to(dtype).float())


def layer_errors(handle, directory: Path, layer_name: str) -> tuple[float, float]:
    """(kernel vs dequantized weight, kernel vs unquantized weight) relative errors of one layer on a random row."""
    import torch

    layer = handle.model.get_submodule(layer_name)
    weight = checkpoint_tensor(directory, f"{layer_name}.weight")
    if weight is None:
        fail(f"{layer_name}.weight is not in the checkpoint {directory}; pick another --layer")
    bias = checkpoint_tensor(directory, f"{layer_name}.bias")
    dtype = torch.float16 if handle.extra["activation_dtype"] == "fp16" else torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(1, weight.shape[1], device="cuda", dtype=dtype)
    with torch.no_grad():
        out = layer(x).float()
    bias = bias.to(dtype).float() if bias is not None else None
    expected = torch.nn.functional.linear(x.float(), reference_weight(handle.precision, weight, dtype), bias)
    unquantized = torch.nn.functional.linear(x.float(), weight.to(dtype).float(), bias)

    def relative(a, b) -> float:
        return ((a - b).norm() / b.norm()).item()

    return relative(out, expected), relative(out, unquantized)


def decode_ms(handle, mode: str, new_tokens: int, repeats: int) -> float:
    from pytest_quantbench.decoding import parse_decoding
    from pytest_quantbench.measure import timed_generation

    greedy = parse_decoding("greedy")
    inputs = handle.encode([handle.format_prompt(PROMPT)])
    for _ in range(2):  # the first compiled call compiles and records the CUDA graph
        timed_generation(handle, inputs, greedy, new_tokens, mode)
    return statistics.median(timed_generation(handle, inputs, greedy, new_tokens, mode)[2] * 1000
                             for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:qwen2.5-7b", help="a model source, e.g. synthetic:qwen2.5-0.5b")
    parser.add_argument("--precisions", default="gemlite4,gemlite8", help="comma-separated (bf16 for comparison)")
    parser.add_argument("--layer", default="model.layers.0.mlp.gate_proj", help="the layer the check reads")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="eager,compiled")
    # A layout or packing fault gives errors near 1; rounding gives ~2e-3 in fp16 and ~1.5e-2 in bf16 at batch 1
    parser.add_argument("--max-error", type=float, default=0.03, help="largest kernel error that passes")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        fail("torch is not installed")
    if not torch.cuda.is_available():
        fail(f"gemlite needs a CUDA GPU; torch {torch.__version__} sees none")
    from pytest_quantbench.models import ModelCache, ModelLoadError, materialize, resolve_model
    from pytest_quantbench.precisions import parse_precision

    precisions = [parse_precision(name) for name in args.precisions.split(",")]
    for precision in precisions:
        reason = precision.why_unavailable("cuda")
        if reason:
            fail(f"{reason} (gemlite needs a CUDA GPU and `pip install gemlite`, which brings triton >= 3.6)")
    spec = resolve_model(args.model)
    directory, _ = materialize(spec)
    cache = ModelCache("cuda")
    rows, bad = [], False
    for precision in precisions:
        try:
            handle = cache.get(spec, precision)
        except ModelLoadError as error:
            fail(str(error))
        row = {"precision": precision.name, "load s": f"{handle.load_s:.1f}"}
        if precision.library == "gemlite":
            kernel, quantization = layer_errors(handle, directory, args.layer)
            bad |= kernel > args.max_error
            row.update({"layers": handle.extra["layers_replaced"], "dtype": handle.extra["activation_dtype"],
                        "kernel err": f"{kernel:.2e}", "quant err": f"{quantization:.2e}"})
        for mode in args.modes.split(","):
            row[f"{mode} ms/token"] = f"{decode_ms(handle, mode, args.new_tokens, args.repeats):.2f}"
        compiled = getattr(handle, "compiled", None)
        if compiled is not None:
            row["compile s"] = f"{compiled.compile_s:.0f}"
            row["compiled?"] = "no: " + compiled.fallback if compiled.fallback else "yes"
        rows.append(row)
        print(json.dumps(row), flush=True)
        del handle
        cache.release()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(f"\n{args.model}, batch 1, {args.new_tokens} new tokens, {torch.cuda.get_device_name()}")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(column, "")) for column in columns) + " |")
    if bad:
        print(f"gemlite_check: a layer's kernel error is over {args.max_error}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
