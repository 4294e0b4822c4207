"""Few-shot scoring with the shared prefix against full contexts: the same MMLU k-shot requests scored both ways by
one model, side by side, alternating, twice each (and the same questions 0-shot, for scale); answers and
log-likelihoods compared.

    python benchmarks/fewshot_prefix.py --data-dir ../shared/data --subjects 3 --per-subject 20 --out fewshot.json

A subject's k examples are the same for each of its questions, so the gain grows with the questions per subject
(full MMLU has 100-1,500 per subject). Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m", help="a --qb-model source (default: the embedded model)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--subjects", type=int, default=3, help="the first N subjects of the test split")
    parser.add_argument("--per-subject", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_quantbench import scoring
    from pytest_quantbench.models import materialize, resolve_model
    from pytest_quantbench.tasks import get_task

    path, _ = materialize(resolve_model(args.model))
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = get_task(f"mmlu_{args.shots}shot")
    every = task.load(args.data_dir, "test")
    subjects = list(dict.fromkeys(doc["subject"] for doc in every))[: args.subjects]
    docs = [doc for s in subjects for doc in [d for d in every if d["subject"] == s][: args.per_subject]]
    shots = task.shots_for(docs, args.data_dir)
    requests = [r for doc in docs for r in task.requests(doc, shots(doc))]
    zero_shot = [r for doc in docs for r in task.requests(doc, [])]  # what k-shot costs beside: the questions alone
    runs = {"shared": (requests, True), "full": (requests, False), "zero_shot": (zero_shot, True)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    scores = {}
    for _ in range(2):
        for name, (batch, share) in runs.items():
            start = time.perf_counter()
            scores[name] = scoring.loglikelihood(model, tokenizer, batch, share_prefixes=share)
            seconds[name].append(time.perf_counter() - start)

    def answers(result):
        out, start = [], 0
        for doc in docs:
            lls = [ll for ll, _ in result[start : start + len(doc["choices"])]]
            start += len(doc["choices"])
            out.append(max(range(len(lls)), key=lls.__getitem__))
        return out

    report = {"model": args.model, "device": args.device, "shots": args.shots, "subjects": subjects,
              "questions": len(docs), "requests": len(requests), "seconds": seconds,
              "full_over_shared": min(seconds["full"]) / min(seconds["shared"]),
              "shared_over_zero_shot": min(seconds["shared"]) / min(seconds["zero_shot"]),
              "identical_answers": sum(a == b for a, b in zip(answers(scores["shared"]), answers(scores["full"]))),
              "max_abs_loglikelihood_difference": max(abs(a[0] - b[0]) for a, b in zip(scores["shared"],
                                                                                         scores["full"]))}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
