"""Eager decode speed of one model in several fresh processes, per precision: whether a precision's speed moves
between same-commit runs (what the regression gate's between-run noise has to cover) or only within one.

    python scripts/decode_spread.py --precision nf4,nf4@bf16,fp32 --processes 6

Each process loads the model, decodes 8 tokens to warm up, then times 4 rounds of 32 greedy tokens; it prints
ms/token per round. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_process(model: str, precision: str, rounds: int, tokens: int) -> list[float]:
    from pytest_quantbench.decoding import parse_decoding
    from pytest_quantbench.models import load_model, resolve_model
    from pytest_quantbench.precisions import parse_precision

    handle = load_model(resolve_model(model), parse_precision(precision), "cpu")
    inputs, greedy = handle.encode(["The capital of France is"]), parse_decoding("greedy")
    handle.generate_ids(inputs, greedy, 8, exact_length=True)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        handle.generate_ids(inputs, greedy, tokens, exact_length=True)
        times.append(round((time.perf_counter() - start) / tokens * 1000, 1))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--precision", default="nf4,nf4@bf16,fp32", help="comma-separated")
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one precision, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_process(args.model, args.precision, args.rounds, args.tokens)))
        return
    report = {}
    for precision in args.precision.split(","):
        runs = []
        for _ in range(args.processes):
            child = subprocess.run([sys.executable, __file__, "--one", "--model", args.model, "--precision", precision,
                                    "--rounds", str(args.rounds), "--tokens", str(args.tokens)],
                                   capture_output=True, text=True, check=True)
            runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
        report[precision] = runs
        medians = sorted(sorted(run)[len(run) // 2] for run in runs)
        print(f"{precision}: ms/token per process (median of {args.rounds} rounds) {medians}; "
              f"max/min {medians[-1] / medians[0]:.2f}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
