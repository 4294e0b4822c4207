"""Where our log-likelihood scorer's time goes: torch.profiler over one scoring call of a task's questions.

    python scripts/profile_scoring.py --model smollm2-135m --precision bf16 --device cuda --task mmlu --n 500 \
        --data-dir ../shared/data --out profile.json

Loads the model as benchmarks/compare_lm_eval.py does (the plugin's loading, `--tokenizer` to borrow one), scores
the N questions (for wikitext2 the first N articles) once to warm up, counting the tokens of every forward pass,
once more timed, and once under torch.profiler (CPU activity, and CUDA's on a GPU), all with one budget. Prints the
wall time, questions/s and tokens/s of the timed call, the top ops by self CUDA time and by self CPU time, the GPU's
busy fraction (kernel time over the profiled call's wall time) and the padding of the batches (padded tokens over
real ones); `--out` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def task_call(args, model, tokenizer, budget):
    """(questions, a function that scores them once) for `args.task`."""
    from pytest_quantbench import scoring
    from pytest_quantbench.tasks import get_task
    from pytest_quantbench.tasks.sources import stratified

    if args.task == "wikitext2":
        from pytest_quantbench.tasks.perplexity import detokenize, load_articles

        texts = [detokenize(a) for a in load_articles(args.data_dir)[: args.n or None]]
        return len(texts), lambda: scoring.loglikelihood_rolling(model, tokenizer, texts, args.max_length,
                                                                 token_budget=budget)
    task = get_task(args.task)
    docs = stratified(task.load(args.data_dir, task.test_split), args.n or None, task.stratum)
    shots = task.shots_for(docs, args.data_dir)
    requests = [r for doc in docs for r in task.requests(doc, shots(doc))]
    return len(docs), lambda: scoring.loglikelihood(model, tokenizer, requests, args.max_length, budget)


def count_tokens(model, pad_id: int):
    """A forward pre-hook adding up, per pass, the input tokens (padded) and the real ones: those the attention mask
    keeps that are not the pad token (continuations are right-padded under a mask of ones; texts never hold the pad
    token, a special one). Returns (totals, hook handle)."""
    totals = {"passes": 0, "padded_tokens": 0, "real_tokens": 0}

    def hook(module, args, kwargs):
        ids = kwargs["input_ids"]
        real = ids != pad_id
        if kwargs.get("attention_mask") is not None:
            real &= kwargs["attention_mask"][:, -ids.shape[1]:] == 1
        totals["passes"] += 1
        totals["padded_tokens"] += ids.numel()
        totals["real_tokens"] += int(real.sum())

    return totals, model.register_forward_pre_hook(hook, with_kwargs=True)


def top_ops(prof, key: str, n: int) -> list[dict]:
    """The n ops with the largest `key` (self_cpu_time_total or self_device_time_total), times in ms."""
    rows = sorted(prof.key_averages(), key=lambda e: -getattr(e, key, 0))[:n]
    return [{"op": e.key[:100], "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000,
             "cpu_total_ms": e.cpu_time_total / 1000,
             "self_cuda_ms": getattr(e, "self_device_time_total", 0) / 1000,
             "cuda_total_ms": getattr(e, "device_time_total", 0) / 1000} for e in rows if getattr(e, key, 0) > 0]


def table(title: str, rows: list[dict]) -> str:
    lines = [title, f"{'op':<60} {'calls':>7} {'self CPU ms':>12} {'self CUDA ms':>13} {'CUDA total ms':>14}"]
    lines += [f"{r['op'][:60]:<60} {r['calls']:>7} {r['self_cpu_ms']:>12.2f} {r['self_cuda_ms']:>13.2f} "
              f"{r['cuda_total_ms']:>14.2f}" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a --qb-model source")
    parser.add_argument("--tokenizer", help="the tokenizer of this source instead of the model's")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--task", default="mmlu", help="mmlu, mmlu_5shot, arc_easy, arc_challenge or wikitext2")
    parser.add_argument("--n", type=int, default=20, help="questions (wikitext2: articles); 0: all")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--token-budget", type=int, default=None, help="default: sized to the device")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["QB_SCORE_CACHE"] = "0"

    import torch
    from compare_lm_eval import load, timed
    from torch.profiler import ProfilerActivity, profile

    from pytest_quantbench import scoring

    model, tokenizer, about = load(args, args.precision)
    budget = scoring.budget_for(model, args.token_budget)
    questions, score = task_call(args, model, tokenizer, budget)
    tokens, hook = count_tokens(model, scoring.pad_token_id(tokenizer))
    _, warmup_s = timed(args.device, score)
    hook.remove()
    _, wall_s = timed(args.device, score)
    cuda = args.device == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        _, profiled_s = timed(args.device, score)
    kernel_us = sum(e.device_time for e in prof.events()
                    if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0) if cuda else 0.0
    result = {
        "model": args.model, "precision": args.precision, "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "task": args.task,
        "questions": questions, **{k: about[k] for k in ("model_source", "tokenizer", "tokens_of_choice_A")},
        "token_budget": dataclasses.asdict(budget), "warmup_s": warmup_s, "wall_s": wall_s,
        "questions_per_s": questions / wall_s, "tokens_per_s": tokens["real_tokens"] / wall_s,
        "padded_tokens_per_s": tokens["padded_tokens"] / wall_s, **tokens,
        "padded_over_real": tokens["padded_tokens"] / tokens["real_tokens"],
        "padding_pct": 100 * (tokens["padded_tokens"] - tokens["real_tokens"]) / tokens["padded_tokens"],
        "profiled_wall_s": profiled_s, "kernel_s": kernel_us / 1e6,
        "gpu_busy_pct": 100 * kernel_us / 1e6 / profiled_s if cuda else None,
        "top_self_cuda": top_ops(prof, "self_device_time_total", args.top) if cuda else [],
        "top_self_cpu": top_ops(prof, "self_cpu_time_total", args.top),
    }
    busy = f"GPU busy {result['gpu_busy_pct']:.1f}% of the profiled call" if cuda else "no CUDA activity (CPU)"
    print(f"{args.model} {args.precision} on {result['device_name']}, {args.task} x {questions}, budget {budget}\n"
          f"wall {wall_s:.3f} s (warm-up {warmup_s:.3f} s, profiled {profiled_s:.3f} s): {result['questions_per_s']:.2f}"
          f" q/s, {result['tokens_per_s']:.0f} tokens/s; {tokens['passes']} passes, padded/real "
          f"{result['padded_over_real']:.3f} ({result['padding_pct']:.1f}% padding); {busy}\n")
    if cuda:
        print(table(f"top {args.top} by self CUDA time", result["top_self_cuda"]) + "\n")
    print(table(f"top {args.top} by self CPU time", result["top_self_cpu"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
