"""Where a decode step's time goes, on a GPU: torch.profiler over one generation, eager or compiled.

    python scripts/profile_compiled.py synthetic:qwen2.5-7b bf16 --mode compiled --out DIR

Loads the model as the plugin does, warms up (compiling in compiled mode), then profiles one generation of
`--new-tokens` tokens and one prefill-only generation, whose kernels are subtracted so the figures are the decode
steps'. Writes DIR/profile-<model>-<precision>-<mode>.json and .md: the time per decoded token (CUDA events,
outside the profiler, and under it), the share of the profiled step the GPU spent running kernels, bytes read per
step and the bandwidth that implies (MBU against the measured copy bandwidth), and the kernels grouped as matmul,
attention and other, each with its time per token; matmul kernels also with the bandwidth they reach if they read
all the weights. `--attention` picks the compiled step's decode attention (compiled.DECODE_ATTENTIONS: flex, math,
grouped, or transformers' own sdpa); one other than the plugin's default adds its name to the file names.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

MATMUL = re.compile(r"gemv|gemm|cutlass|xmma|nvjet|matmul|_mm_|mm_kernel|splitk|cublas|int8_mm|int4|fp8_mm", re.IGNORECASE)
ATTENTION = re.compile(r"flash|fmha|attention|sdpa|softmax|flex", re.IGNORECASE)


def category(kernel: str) -> str:
    return "matmul" if MATMUL.search(kernel) else "attention" if ATTENTION.search(kernel) else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("precision")
    parser.add_argument("--mode", default="compiled", choices=["eager", "compiled"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=".")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-tuning", action="store_true", help="compile without coordinate-descent kernel tuning")
    parser.add_argument("--attention", choices=["flex", "math", "grouped", "sdpa"],
                        help="compiled decode attention (default: the plugin's)")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import pytest_quantbench.compiled

    pytest_quantbench.compiled.TUNE_KERNELS = not args.no_tuning
    default_attention = pytest_quantbench.compiled.DECODE_ATTENTION
    args.attention = args.attention or default_attention
    pytest_quantbench.compiled.DECODE_ATTENTION = args.attention
    from pytest_quantbench.decoding import parse_decoding
    from pytest_quantbench.measure import copy_bandwidth_gbps, decode_bytes_per_step, timed_generation
    from pytest_quantbench.models import load_model, resolve_model
    from pytest_quantbench.precisions import parse_precision

    spec, precision = resolve_model(args.model), parse_precision(args.precision)
    handle = load_model(spec, precision, args.device)
    greedy = parse_decoding("greedy")
    inputs = handle.encode([handle.format_prompt("Explain in a few sentences why the sky is blue. " * 8)])
    prompt_tokens = inputs["input_ids"].shape[1]
    for _ in range(2):  # the first compiled call compiles and records CUDA graphs
        timed_generation(handle, inputs, greedy, args.new_tokens, args.mode)
    decode_ms = [timed_generation(handle, inputs, greedy, args.new_tokens, args.mode)[2] * 1000
                 for _ in range(args.repeats)]
    step_ms = statistics.median(decode_ms)

    def kernel_times(new_tokens: int) -> tuple[dict[str, list[float]], float]:
        """Kernel durations (µs) by name over one generation under the profiler, and its decode s/token."""
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            decode_s = timed_generation(handle, inputs, greedy, new_tokens, args.mode)[2]
        times: dict[str, list[float]] = {}
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time > 0:
                times.setdefault(event.name, []).append(event.device_time)
        return times, decode_s

    # Decode steps only: the kernels of a whole generation less those of a prefill-only (1-token) generation.
    full, profiled_decode_s = kernel_times(args.new_tokens)
    prefill, _ = kernel_times(1)
    steps = args.new_tokens - 1
    rows = []
    for name, times in full.items():
        calls = len(times) - len(prefill.get(name, []))
        us = sum(times) - sum(prefill.get(name, []))
        if us > 0:
            rows.append((name, calls / steps, us / steps))
    rows.sort(key=lambda row: -row[2])
    profiled_step_ms = profiled_decode_s * 1000
    kernel_us = sum(row[2] for row in rows)
    if not kernel_us:
        raise SystemExit(f"no GPU kernels were recorded on {args.device}: profile on a CUDA device")
    by_category: dict[str, float] = {}
    for name, _, us in rows:
        by_category[category(name)] = by_category.get(category(name), 0.0) + us

    step_bytes = decode_bytes_per_step(handle.model, 1, prompt_tokens + args.new_tokens // 2)
    kv_bytes = step_bytes - decode_bytes_per_step(handle.model, 1, 0)
    bandwidth = copy_bandwidth_gbps(args.device)
    matmul_us = by_category.get("matmul", 0.0)
    result = {
        "model": spec.name, "precision": precision.name, "mode": args.mode, "tuned": not args.no_tuning,
        "attention": args.attention, "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens,
        "decode_ms_per_token": step_ms, "decode_ms_per_token_all": decode_ms,
        "profiled_decode_ms_per_token": profiled_step_ms,
        "kernel_ms_per_token": kernel_us / 1000, "gpu_busy_pct": 100 * kernel_us / 1000 / profiled_step_ms,
        "bytes_per_step_mb": step_bytes / 2**20, "kv_bytes_per_step_mb": kv_bytes / 2**20,
        "copy_bandwidth_gbps": bandwidth, "mbu_pct": 100 * step_bytes / (step_ms / 1000) / (bandwidth * 1e9),
        "mbu_if_gpu_never_idle_pct": 100 * step_bytes / (kernel_us / 1e6) / (bandwidth * 1e9),
        "matmul_bandwidth_gbps": (step_bytes - kv_bytes) / (matmul_us / 1e6) / 1e9 if matmul_us else None,
        "ms_per_token_by_category": {k: v / 1000 for k, v in by_category.items()},
        "kernels": [{"name": name[:160], "calls_per_token": calls, "us_per_token": us, "category": category(name)}
                    for name, calls, us in rows[:25]],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"profile-{spec.name}-{precision.name}-{args.mode}" + ("-untuned" if args.no_tuning else "")
    stem += f"-{args.attention}" if args.attention != default_attention and args.mode == "compiled" else ""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {spec.name} {precision.name} {args.mode}: where a decode step goes", "",
             f"{result['device']}, torch {result['torch']}, prompt {prompt_tokens} tokens, {args.new_tokens} new.", "",
             (f"- decode: {step_ms:.3f} ms/token (median of {args.repeats}, CUDA events); under the profiler "
              f"{profiled_step_ms:.3f} ms, of which kernels run {result['kernel_ms_per_token']:.3f} ms: the GPU is "
              f"busy {result['gpu_busy_pct']:.1f}%"),
             (f"- bytes per step {result['bytes_per_step_mb']:.0f} MB (KV {result['kv_bytes_per_step_mb']:.1f} MB) at "
              f"{bandwidth:.0f} GB/s copy bandwidth: MBU {result['mbu_pct']:.1f}%, "
              f"{result['mbu_if_gpu_never_idle_pct']:.1f}% counting kernel time only"),
             f"- matmul kernels read the weights at {result['matmul_bandwidth_gbps'] or 0:.0f} GB/s", "",
             "| category | ms/token | share of kernel time |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v / 1000:.3f} | {100 * v / kernel_us:.1f}% |" for k, v in sorted(by_category.items())]
    lines += ["", "| kernel | category | calls/token | µs/token |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k['name'][:90]}` | {k['category']} | {k['calls_per_token']:.1f} | {k['us_per_token']:.1f} |"
              for k in result["kernels"]]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
