"""Agreement and throughput against lm-evaluation-harness on the same questions, model and machine.

Run with a Python that has `lm-eval` installed next to this checkout's dependencies (a scratch venv, not the
project's), from the repository root:

    python benchmarks/compare_lm_eval.py --data-dir ../shared/data --model DIR --precision fp32 \
        --task mmlu=500 --task arc_challenge=300:1,16 --lm-eval-batch-sizes 16 --out cmp-fp32.json

For each task it takes our documents (the deterministic stratified subset `--qb-limit` would take), writes them as
JSON files in the hub's schema, and has lm-eval build its own requests from its own default config for the task
(the installed `mmlu/default/_default_template_yaml` per subject, `arc/arc_easy.yaml`) pointed at those files.
Both sides score one model object loaded once in the precision (our loading code, so nf4 is the same nf4):
lm-eval through its HFLM, we through `pytest_quantbench.scoring`. It reports the prompt strings that differ,
per-choice log-likelihood differences, accuracies, per-question answer agreement, and questions/s of each side
(the scoring call only, data preparation excluded). Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_docs(task_name: str, docs: list[dict], shots: dict[str, list[dict]], folder: Path, lm_eval_dir: Path) -> list[str]:
    """Our documents as hub-schema JSON files and one lm-eval task yaml per file; returns the task names."""
    names = []
    if task_name.startswith("mmlu"):
        by_subject: dict[str, list[dict]] = {}
        for doc in docs:
            by_subject.setdefault(doc["subject"], []).append(doc)
        for subject, items in by_subject.items():
            for split, rows in (("test", items), ("dev", shots.get(subject, []) or items[:1])):
                with open(folder / f"mmlu_{subject}_{split}.jsonl", "w") as handle:
                    handle.writelines(json.dumps({"question": d["question"], "subject": d["subject"],
                                                 "choices": d["choices"], "answer": d["gold"]}) + "\n" for d in rows)
            description = f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"
            (folder / f"qbcmp_mmlu_{subject}.yaml").write_text(
                f"include: {lm_eval_dir / 'tasks/mmlu/default/_default_template_yaml'}\n"
                f"task: qbcmp_mmlu_{subject}\ndataset_path: json\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    test: {folder / f'mmlu_{subject}_test.jsonl'}\n"
                f"    dev: {folder / f'mmlu_{subject}_dev.jsonl'}\n"
                f"description: {json.dumps(description)}\n")
            names.append(f"qbcmp_mmlu_{subject}")
    else:
        with open(folder / f"{task_name}_test.jsonl", "w") as handle:
            handle.writelines(json.dumps({"id": d["id"], "question": d["question"],
                                         "choices": {"text": d["choices"], "label": d["labels"]},
                                         "answerKey": d["labels"][d["gold"]]}) + "\n" for d in docs)
        (folder / f"qbcmp_{task_name}.yaml").write_text(
            f"include: {lm_eval_dir / 'tasks/arc/arc_easy.yaml'}\ntask: qbcmp_{task_name}\ntag: []\n"
            f"dataset_path: json\ndataset_name: null\ntraining_split: null\nvalidation_split: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {folder / f'{task_name}_test.jsonl'}\n")
        names.append(f"qbcmp_{task_name}")
    return names


def lm_eval_instances(names: list[str], folder: Path, num_fewshot: int):
    from lm_eval.tasks import TaskManager, get_task_dict

    tasks = get_task_dict(names, TaskManager(include_path=str(folder)))
    instances = []
    for name in names:
        task = tasks[name]
        task.set_config(key="num_fewshot", value=num_fewshot)
        task.build_all_requests(rank=0, world_size=1)
        instances += task.instances
    return instances


def compare_task(task_name: str, limit: int, batch_sizes: list[int], args, model, tokenizer, lm_eval_dir: Path) -> dict:
    from pytest_quantbench import scoring
    from pytest_quantbench.tasks import get_task
    from pytest_quantbench.tasks.sources import stratified

    task = get_task(task_name)
    docs = stratified(task.load(args.data_dir, task.test_split), limit, task.stratum)
    shots_of = task.shots_for(docs, args.data_dir)
    shots = {task.stratum(d): shots_of(d) for d in docs}
    ours_requests = [task.requests(doc, shots_of(doc)) for doc in docs]
    flat = [r for per_doc in ours_requests for r in per_doc]

    folder = Path(tempfile.mkdtemp(prefix=f"qbcmp-{task_name}-"))
    names = write_docs(task_name, docs, shots, folder, lm_eval_dir)
    instances = lm_eval_instances(names, folder, task.num_fewshot)
    # Line lm-eval's instances up with our documents: by (subject, question) for MMLU, by id for ARC.
    key = (lambda d: (d["subject"], d["question"])) if task_name.startswith("mmlu") else (lambda d: d["id"])
    keyed = {(key(inst.doc), inst.idx): inst for inst in instances}
    order = [keyed[(key(d), i)] for d, per_doc in zip(docs, ours_requests) for i in range(len(per_doc))]
    prompt_mismatches = [(a.args, b) for a, b in zip(order, flat) if tuple(a.args) != tuple(b)]

    result = {"task": task_name, "questions": len(docs), "requests": len(flat),
              "prompt_mismatches": len(prompt_mismatches), "prompt_mismatch_examples": prompt_mismatches[:2]}
    if args.prompts_only:
        return result
    start = time.perf_counter()
    ours = scoring.loglikelihood(model, tokenizer, flat, token_budget=args.token_budget)
    result["ours_s"] = time.perf_counter() - start
    result["ours_questions_per_s"] = len(docs) / result["ours_s"]
    ours_result = task.score(docs, ours_requests, ours)

    from lm_eval.models.huggingface import HFLM

    for batch_size in batch_sizes:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        start = time.perf_counter()
        theirs = lm.loglikelihood(order, disable_tqdm=True)
        seconds = time.perf_counter() - start
        theirs_result = task.score(docs, ours_requests, theirs)
        diffs = [abs(a[0] - b[0]) for a, b in zip(ours, theirs)]
        same = sum(1 for i in range(len(docs))
                   if _pred(ours, ours_requests, i) == _pred(theirs, ours_requests, i))
        result[f"lm_eval_bs{batch_size}"] = {
            "seconds": seconds, "questions_per_s": len(docs) / seconds,
            "acc": theirs_result.metrics["acc"], "acc_norm": theirs_result.metrics.get("acc_norm"),
            "max_abs_ll_diff": max(diffs), "mean_abs_ll_diff": sum(diffs) / len(diffs),
            "same_answer_pct": 100 * same / len(docs),
            "greedy_flag_agreement_pct": 100 * sum(a[1] == b[1] for a, b in zip(ours, theirs)) / len(ours),
        }
    result["ours_acc"] = ours_result.metrics["acc"]
    result["ours_acc_norm"] = ours_result.metrics.get("acc_norm")
    result["ours_acc_stderr"] = ours_result.metrics["acc_stderr"]
    fastest = min(batch_sizes, key=lambda b: result[f"lm_eval_bs{b}"]["seconds"])
    result["lm_eval_fastest_bs"] = fastest
    result["speedup_vs_fastest_lm_eval"] = result[f"lm_eval_bs{fastest}"]["seconds"] / result["ours_s"]
    return result


def _pred(scores, requests, i) -> int:
    start = sum(len(r) for r in requests[:i])
    lls = [s[0] for s in scores[start : start + len(requests[i])]]
    return max(range(len(lls)), key=lambda k: (lls[k], -k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", required=True, help="local model directory")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--task", action="append", required=True,
                        help="NAME=QUESTIONS[:BATCH_SIZES], e.g. mmlu=500 or arc_challenge=300:1,16")
    parser.add_argument("--lm-eval-batch-sizes", default="1,16", help="lm-eval batch sizes for tasks that name none")
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--prompts-only", action="store_true", help="compare the request strings only (no model)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.lm_eval_batch_sizes = [int(b) for b in args.lm_eval_batch_sizes.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import lm_eval
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_quantbench import scoring
    from pytest_quantbench.precisions import parse_precision

    args.token_budget = args.token_budget or scoring.TOKEN_BUDGET
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    kwargs = parse_precision(args.precision).load_kwargs("cpu")
    kwargs.setdefault("device_map", {"": "cpu"})
    model = None if args.prompts_only else AutoModelForCausalLM.from_pretrained(args.model, **kwargs).eval()
    lm_eval_dir = Path(lm_eval.__file__).parent
    report = {"precision": args.precision, "model": args.model, "torch_threads": torch.get_num_threads(),
              "prompts_only": args.prompts_only,
              "lm_eval": getattr(lm_eval, "__version__", "?"), "tasks": []}
    for spec in args.task:
        name, _, rest = spec.partition("=")
        limit, _, sizes = rest.partition(":")
        sizes = [int(b) for b in sizes.split(",")] if sizes else args.lm_eval_batch_sizes
        entry = compare_task(name, int(limit) if limit else None, sizes, args, model, tokenizer, lm_eval_dir)
        report["tasks"].append(entry)
        print(json.dumps(entry, indent=1, default=str), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
