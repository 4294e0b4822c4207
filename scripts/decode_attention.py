"""Decode attention kernels side by side: one query token per row over a static key/value cache, every layer of a
model shape with its own cache, timed as the kernel-permitted bound times a part (bound.time_ms: CUDA graphs).

    python scripts/decode_attention.py --shape 28,28,4,128 --rows 1,8,32 --length 256,1024 --out attention.json

Each way is checked against float32 attention on the same inputs before it is timed. The ways:
  grouped-sdpa     the compiled step's attention today (compiled.grouped_decode_attention), eager
  grouped-sdpa-c   the same under torch.compile
  sdpa-<backend>   F.scaled_dot_product_attention with the key/value heads repeated, one SDPA backend forced
  math-c           compiled.math_decode_attention under torch.compile (Inductor fuses what it can)
  flex-c           compiled.flex_decode_attention under torch.compile (flex_attention's split-key decoding kernel)
"""

from __future__ import annotations

import argparse
import json
import platform
from functools import partial
from types import SimpleNamespace


def ways(groups: int):
    import torch
    import torch.nn.functional as F

    from pytest_quantbench.compiled import flex_decode_attention, grouped_decode_attention, math_decode_attention

    module = SimpleNamespace(num_key_value_groups=groups, is_causal=True, training=False)

    def grouped(query, key, value, mask, scale):
        return grouped_decode_attention(module, query, key, value, mask, scaling=scale)[0]

    def repeated(backend):
        from torch.nn.attention import sdpa_kernel

        def attend(query, key, value, mask, scale):
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(query, key.repeat_interleave(groups, 1),
                                                     value.repeat_interleave(groups, 1), attn_mask=mask, scale=scale)
            return out.transpose(1, 2)
        return attend

    def plugin(function):
        return lambda query, key, value, mask, scale: function(module, query, key, value, mask, scaling=scale)[0]

    from torch.nn.attention import SDPBackend

    table = {"grouped-sdpa": grouped, "grouped-sdpa-c": torch.compile(grouped, dynamic=False)}
    for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("math", SDPBackend.MATH)):
        table[f"sdpa-{name}"] = repeated(backend)
    table["math-c"] = torch.compile(plugin(math_decode_attention), dynamic=False)
    table["flex-c"] = torch.compile(plugin(flex_decode_attention), dynamic=False)
    return table


def each_layer(attend, query, caches, mask, scale):
    """One decode step's attention: every layer's cache once."""
    return [attend(query, key, value, mask, scale) for key, value in caches]


def reference(query, key, value, mask, scale, groups):
    """float32 attention, key/value heads repeated: (batch, 1, heads, dim)."""
    k, v = key.float().repeat_interleave(groups, 1), value.float().repeat_interleave(groups, 1)
    scores = (query.float() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="28,28,4,128", help="layers,heads,key/value heads,head_dim (Qwen2.5-7B)")
    parser.add_argument("--rows", default="1,8,32")
    parser.add_argument("--length", default="256,1024", help="static cache lengths")
    parser.add_argument("--filled", type=float, default=0.45, help="share of each cache's positions the mask keeps")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", default="", help="comma-separated ways (default: all)")
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch

    from pytest_quantbench.bound import time_ms

    layers, heads, kv_heads, dim = map(int, args.shape.split(","))
    groups, dtype, device = heads // kv_heads, getattr(torch, args.dtype), torch.device(args.device)
    cuda = device.type == "cuda"
    table = ways(groups)
    chosen = [w for w in args.only.split(",") if w] or list(table)
    results = []
    for rows in map(int, args.rows.split(",")):
        for length in map(int, args.length.split(",")):
            torch.manual_seed(0)
            query = torch.randn(rows, heads, 1, dim, dtype=dtype, device=device)
            caches = [(torch.randn(rows, kv_heads, length, dim, dtype=dtype, device=device),
                       torch.randn(rows, kv_heads, length, dim, dtype=dtype, device=device)) for _ in range(layers)]
            mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=device)
            mask[..., : max(1, int(length * args.filled))] = True
            scale = dim ** -0.5
            want = reference(query, *caches[0], mask, scale, groups)
            for name in chosen:
                attend = table[name]
                row = {"way": name, "rows": rows, "length": length, "layers": layers}
                try:
                    with torch.inference_mode():
                        got = attend(query, *caches[0], mask, scale).float()
                        row["max_abs_error"] = (got - want).abs().max().item()
                        ms, how = time_ms(partial(each_layer, attend, query, caches, mask, scale), cuda)
                    row.update(ms_per_step=ms, us_per_layer=1000 * ms / layers, timing=how)
                except Exception as error:  # noqa: BLE001  a backend this GPU or shape does not have
                    row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"
                results.append(row)
                print(json.dumps(row), flush=True)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else platform.processor(),
            "shape": args.shape, "dtype": args.dtype, "filled": args.filled}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": info, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
