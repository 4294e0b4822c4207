"""Agreement and throughput against lm-evaluation-harness on the same questions, model and machine.

Run with a Python that has `lm-eval` installed next to this checkout's dependencies (a scratch venv, not the
project's), from the repository root:

    python benchmarks/compare_lm_eval.py --data-dir ../shared/data --model smollm2-135m --precision fp32 \
        --task mmlu=500 --task arc_challenge=300:1,16 --task wikitext2=0 --lm-eval-batch-sizes 16 --out cmp.json

`--model` takes every source the plugin takes (an alias, a hub id, a local directory, a `.gguf` file,
`synthetic:qwen2.5-7b`), loaded in the precision by the plugin's own code (so nf4 is the plugin's nf4) on `--device`;
`--tokenizer SOURCE` gives it another source's tokenizer (SmolLM2's for a synthetic model, whose own tokenizer is
bytes: " A" would be two tokens). `--task NAME=N[:BATCH_SIZES]`: N questions (0: all), or for wikitext2 N articles;
batch sizes `none` time our side alone.

For each task it takes our documents (the deterministic stratified subset `--qb-limit` would take), writes them as
JSON files in the hub's schema, and has lm-eval build its own requests from its own default config for the task
(the installed `mmlu/default/_default_template_yaml` per subject, `arc/arc_easy.yaml`, `wikitext/wikitext.yaml`)
pointed at those files; requests are lined up by document position and a misaligned document stops the run.
Both sides score one model object: lm-eval through its HFLM, we through `pytest_quantbench.scoring` (called
directly: the score cache is never read). It reports the prompt strings that differ, per-choice log-likelihood
differences, accuracies (for wikitext2 word perplexities), per-question answer agreement, and questions/s of each
side (the scoring call only, after a short warm-up of each; data preparation excluded; the fastest of `--rounds`
interleaved rounds, ours then each lm-eval batch size). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}  # --sdpa-backends names -> torch.nn.attention.SDPBackend members


def parse_batch_sizes(text: str) -> list[int]:
    """'1,16' -> [1, 16]; 'none', '0' or '' -> [] (our side alone)."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    return [int(b) for b in text.split(",")]


def parse_task(spec: str, default_sizes: list[int]) -> tuple[str, int | None, list[int]]:
    """'mmlu=500' -> ('mmlu', 500, default); 'arc_easy=0:1,16' -> ('arc_easy', None (all), [1, 16])."""
    name, _, rest = spec.partition("=")
    limit, colon, sizes = rest.partition(":")
    return name, int(limit) or None if limit else None, parse_batch_sizes(sizes) if colon else default_sizes


def file_task(task_name: str, doc: dict) -> str:
    """The lm-eval task (one per written file) a document of ours goes to."""
    return f"qbcmp_mmlu_{doc['subject']}" if task_name.startswith("mmlu") else f"qbcmp_{task_name}"


def write_docs(task_name: str, docs: list, shots: dict[str, list[dict]], folder: Path, lm_eval_dir: Path) -> list[str]:
    """Our documents as hub-schema JSON files and one lm-eval task yaml per file; returns the task names."""
    names = []
    if task_name == "wikitext2":
        with open(folder / "wikitext2_test.jsonl", "w") as handle:
            handle.writelines(json.dumps({"page": page}) + "\n" for page in docs)
        (folder / "qbcmp_wikitext2.yaml").write_text(
            f"include: {lm_eval_dir / 'tasks/wikitext/wikitext.yaml'}\ntask: qbcmp_wikitext2\n"
            f"dataset_path: json\ndataset_name: null\ntraining_split: null\nvalidation_split: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {folder / 'wikitext2_test.jsonl'}\n")
        names.append("qbcmp_wikitext2")
    elif task_name.startswith("mmlu"):
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


def line_up(docs: list, keys: list[tuple[str, int]], counts: list[int], instances) -> list:
    """lm-eval's instances in our request order. A document is keyed by its file's task and its position in that
    file (questions alone are not unique: MMLU repeats some, with the choices reordered or even identical); a key
    held twice, a missing request or a document that is not ours stops the run."""
    keyed = {}
    for inst in instances:
        key = (inst.task_name, inst.doc_id, inst.idx)
        if key in keyed:
            raise SystemExit(f"two lm-eval requests share the key {key}: cannot line them up with ours")
        keyed[key] = inst
    if len(keyed) != sum(counts):
        raise SystemExit(f"lm-eval built {len(keyed)} requests, we {sum(counts)}")
    order = []
    for doc, (name, position), count in zip(docs, keys, counts):
        for i in range(count):
            inst = keyed.get((name, position, i))
            if inst is None or not _same_doc(inst.doc, doc):
                raise SystemExit(f"lm-eval's request {(name, position, i)} is not for our document there")
            order.append(inst)
    return order


def _same_doc(theirs: dict, ours) -> bool:
    """Whether lm-eval's document (as write_docs wrote it) is ours: a WikiText article, an MMLU or an ARC question."""
    if isinstance(ours, str):
        return theirs["page"] == ours
    if "subject" in ours:
        return (theirs["subject"], theirs["question"], theirs["choices"]) == \
            (ours["subject"], ours["question"], ours["choices"])
    return theirs["id"] == ours["id"]


def document_keys(task_name: str, docs: list) -> list[tuple[str, int]]:
    """(lm-eval task, position in its file) of each document, in the order write_docs writes them."""
    seen: dict[str, int] = {}
    keys = []
    for doc in docs:
        name = "qbcmp_wikitext2" if task_name == "wikitext2" else file_task(task_name, doc)
        seen[name] = seen.get(name, -1) + 1
        keys.append((name, seen[name]))
    return keys


def timed(device: str, call, *args, **kwargs):
    """(call's result, seconds), the GPU's queue drained on both sides."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = call(*args, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def lm_eval_model(model, tokenizer, batch_size: int, args):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device),
                max_length=args.max_length, softmax_dtype=args.lm_eval_softmax_dtype)


def time_rounds(args, ours_call, method: str, order: list, warm: int, batch_sizes: list[int], model, tokenizer):
    """Our scores and each lm-eval batch size's, timed in `args.rounds` interleaved rounds (ours, then every batch
    size): a side that happens to run while the GPU's clocks ramp up, or the host is busy, gets another turn. Returns
    (our scores, our seconds per round, {batch size: (scores, seconds per round) or {"error": ...}}). A batch size
    that runs out of memory is recorded as such and the sizes that fit still run."""
    import torch

    ours, ours_seconds, theirs = None, [], {b: (None, []) for b in batch_sizes}
    for round_ in range(args.rounds):
        ours, seconds = timed(args.device, ours_call)
        ours_seconds.append(seconds)
        for batch_size in batch_sizes:
            if isinstance(theirs[batch_size], dict):
                continue
            lm = lm_eval_model(model, tokenizer, batch_size, args)
            call = getattr(lm, method)
            try:
                if warm and round_ == 0:
                    call(order[:warm], disable_tqdm=True)
                scores, seconds = timed(args.device, call, order, disable_tqdm=True)
                theirs[batch_size] = (scores, theirs[batch_size][1] + [seconds])
            except torch.OutOfMemoryError as error:
                print(f"lm-eval batch size {batch_size}: out of memory, skipped", file=sys.stderr, flush=True)
                theirs[batch_size] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
            finally:
                del lm, call
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    return ours, ours_seconds, theirs


def ran(result: dict, lm_eval_runs: dict):
    """(batch size, scores, fastest seconds, every round's seconds) of each lm-eval batch size that ran; the error of
    one that did not goes into `result` as its entry."""
    for batch_size, run in lm_eval_runs.items():
        if isinstance(run, dict):
            result[f"lm_eval_bs{batch_size}"] = run
        else:
            yield batch_size, run[0], min(run[1]), run[1]


def compare_task(task_name: str, limit: int | None, batch_sizes: list[int], args, model, tokenizer,
                 lm_eval_dir: Path, reference=None) -> dict:
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
    order = line_up(docs, document_keys(task_name, docs), [len(r) for r in ours_requests], instances)
    prompt_mismatches = [(a.args, b) for a, b in zip(order, flat) if tuple(a.args) != tuple(b)]

    result = {"task": task_name, "questions": len(docs), "requests": len(flat),
              "prompt_mismatches": len(prompt_mismatches), "prompt_mismatch_examples": prompt_mismatches[:2]}
    if args.prompts_only:
        return result
    budget = scoring.budget_for(model, args.token_budget)
    warm = flat[: sum(len(r) for r in ours_requests[: args.warmup])]
    share = {"default": None, "on": True, "off": False}[args.share_prefixes]
    if warm:
        scoring.loglikelihood(model, tokenizer, warm, args.max_length, budget, share_prefixes=share,
                              min_shared=args.min_shared)
    rounds_stats: list[dict] = []  # each round's tokenizing seconds and forward passes

    def ours_call():
        rounds_stats.append({})
        return scoring.loglikelihood(model, tokenizer, flat, args.max_length, budget, share_prefixes=share,
                                     stats=rounds_stats[-1], min_shared=args.min_shared)

    ours, ours_seconds, lm_eval_runs = time_rounds(args, ours_call, "loglikelihood", order, len(warm), batch_sizes,
                                                   model, tokenizer)
    result["ours_s"], result["ours_s_rounds"] = min(ours_seconds), ours_seconds
    result["ours_tokenize_s_rounds"] = [round(stats["tokenize_s"], 3) for stats in rounds_stats]
    result["ours_passes"] = rounds_stats[0]["passes"]
    result["shared_prefixes"] = args.share_prefixes
    result["min_shared"] = args.min_shared
    result["token_budget"] = dataclasses.asdict(budget)
    result["ours_questions_per_s"] = len(docs) / result["ours_s"]
    ours_result = task.score(docs, ours_requests, ours)
    result["ours_acc"] = ours_result.metrics["acc"]
    result["ours_acc_norm"] = ours_result.metrics.get("acc_norm")
    result["ours_acc_stderr"] = ours_result.metrics["acc_stderr"]

    for batch_size, theirs, seconds, rounds in ran(result, lm_eval_runs):
        theirs_result = task.score(docs, ours_requests, theirs)
        diffs = [abs(a[0] - b[0]) for a, b in zip(ours, theirs)]
        same = sum(a == b for a, b in zip(answers_of(ours, ours_requests), answers_of(theirs, ours_requests)))
        result[f"lm_eval_bs{batch_size}"] = {
            "seconds": seconds, "seconds_rounds": rounds, "questions_per_s": len(docs) / seconds,
            "acc": theirs_result.metrics["acc"], "acc_norm": theirs_result.metrics.get("acc_norm"),
            "max_abs_ll_diff": max(diffs), "mean_abs_ll_diff": sum(diffs) / len(diffs),
            "same_answer_pct": 100 * same / len(docs),
            "greedy_flag_agreement_pct": 100 * sum(a[1] == b[1] for a, b in zip(ours, theirs)) / len(ours),
        }
    answers = {"ours": ours, **{f"lm_eval_bs{b}": theirs for b, theirs, _, _ in ran({}, lm_eval_runs)}}
    result["between_lm_eval_batch_sizes"] = between_batch_sizes(answers, ours_requests)
    if reference is not None:
        ref_model, ref_precision = reference
        scores = scoring.loglikelihood(ref_model, tokenizer, flat, args.max_length,
                                       scoring.budget_for(ref_model, args.token_budget), share_prefixes=share)
        result["reference"] = against_reference(ref_precision, scores, answers, ours_requests)
    _fastest(result, batch_sizes)
    return result


def between_batch_sizes(answers: dict, requests: list) -> dict:
    """Same answers between lm-eval at two batch sizes: how much batch shapes alone flip answers (in bf16, a floor
    under any agreement of two sides that batch differently)."""
    names = [n for n in answers if n != "ours"]
    preds = {n: answers_of(answers[n], requests) for n in names}
    return {f"{a} vs {b}": 100 * sum(x == y for x, y in zip(preds[a], preds[b])) / len(requests)
            for k, a in enumerate(names) for b in names[k + 1:]}


def against_reference(precision: str, reference: list, answers: dict, requests: list) -> dict:
    """Each side's answers against our scorer's in a reference precision (fp32), and, where ours and lm-eval's
    differ, which side gave the reference's answer and how near-tied the reference's top two choices were there."""
    n = len(requests)
    truth = answers_of(reference, requests)
    margins = [lls[0] - lls[1] for lls in (sorted(q, reverse=True) for q in per_question(reference, requests))]
    preds = {name: answers_of(scores, requests) for name, scores in answers.items()}
    out = {"precision": precision, "median_top2_margin_nats": statistics.median(margins)}
    for name, pred in preds.items():
        out[f"{name}_same_as_reference_pct"] = 100 * sum(p == t for p, t in zip(pred, truth)) / n
    for name, pred in preds.items():
        if name == "ours":
            continue
        differ = [i for i in range(n) if pred[i] != preds["ours"][i]]
        out[f"ours_vs_{name}"] = {
            "questions_answered_differently": len(differ),
            "ours_gives_reference_answer": sum(preds["ours"][i] == truth[i] for i in differ),
            "lm_eval_gives_reference_answer": sum(pred[i] == truth[i] for i in differ),
            "reference_top2_margin_nats": sorted(round(margins[i], 4) for i in differ),
        }
    return out


def compare_rolling(limit: int | None, batch_sizes: list[int], args, model, tokenizer, lm_eval_dir: Path,
                    reference=None) -> dict:
    """WikiText-2: our loglikelihood_rolling against lm-eval's on the same articles, as word perplexities."""
    from pytest_quantbench import scoring
    from pytest_quantbench.tasks import get_task
    from pytest_quantbench.tasks.perplexity import detokenize, load_articles

    task = get_task("wikitext2")
    articles = load_articles(args.data_dir)[: limit or None]  # as --qb-limit: the first N articles
    texts = [detokenize(a) for a in articles]
    folder = Path(tempfile.mkdtemp(prefix="qbcmp-wikitext2-"))
    instances = lm_eval_instances(write_docs("wikitext2", articles, {}, folder, lm_eval_dir), folder, 0)
    order = line_up(articles, document_keys("wikitext2", articles), [1] * len(articles), instances)
    mismatches = [(a.args[0][:80], b[:80]) for a, b in zip(order, texts) if a.args != (b,)]
    result = {"task": "wikitext2", "documents": len(articles), "questions": len(articles),
              "prompt_mismatches": len(mismatches), "prompt_mismatch_examples": mismatches[:2]}
    if args.prompts_only:
        return result
    budget = scoring.budget_for(model, args.token_budget)
    warm = texts[: min(args.warmup, 2)]  # an article is thousands of tokens: two warm every kernel
    if warm:
        scoring.loglikelihood_rolling(model, tokenizer, warm, args.max_length, token_budget=budget)
    ours, ours_seconds, lm_eval_runs = time_rounds(
        args, lambda: scoring.loglikelihood_rolling(model, tokenizer, texts, args.max_length, token_budget=budget),
        "loglikelihood_rolling", order, len(warm), batch_sizes, model, tokenizer)
    result["ours_s"], result["ours_s_rounds"] = min(ours_seconds), ours_seconds
    mine = task.score(articles, ours).metrics
    tokens = int(mine["tokens"])
    result.update(token_budget=dataclasses.asdict(budget), max_length=args.max_length or scoring.model_max_length(model),
                  tokens=tokens, ours_docs_per_s=len(texts) / result["ours_s"],
                  ours_questions_per_s=len(texts) / result["ours_s"], ours_tokens_per_s=tokens / result["ours_s"],
                  ours_word_perplexity=mine["word_perplexity"], ours_byte_perplexity=mine["byte_perplexity"],
                  ours_bits_per_byte=mine["bits_per_byte"])
    for batch_size, theirs, seconds, rounds in ran(result, lm_eval_runs):
        word_ppl = task.score(articles, [(ll, n) for ll, (_, n) in zip(theirs, ours)]).metrics["word_perplexity"]
        diffs = [abs(a[0] - b) for a, b in zip(ours, theirs)]
        result[f"lm_eval_bs{batch_size}"] = {
            "seconds": seconds, "seconds_rounds": rounds, "docs_per_s": len(texts) / seconds, "questions_per_s": len(texts) / seconds,
            "word_perplexity": word_ppl,
            "word_perplexity_rel_diff_pct": 100 * (word_ppl - mine["word_perplexity"]) / mine["word_perplexity"],
            "max_abs_ll_diff": max(diffs), "mean_abs_ll_diff": sum(diffs) / len(diffs),
            "max_rel_ll_diff": max(d / max(1e-9, abs(a[0])) for d, a in zip(diffs, ours)),
        }
    if reference is not None:
        ref_model, ref_precision = reference
        scores = scoring.loglikelihood_rolling(ref_model, tokenizer, texts, args.max_length,
                                               token_budget=scoring.budget_for(ref_model, args.token_budget))
        ref_ppl = task.score(articles, scores).metrics["word_perplexity"]
        sides = [("ours", mine["word_perplexity"])] + [
            (f"lm_eval_bs{b}", result[f"lm_eval_bs{b}"]["word_perplexity"])
            for b in batch_sizes if "word_perplexity" in result[f"lm_eval_bs{b}"]]
        result["reference"] = {"precision": ref_precision, "word_perplexity": ref_ppl,
                               **{f"{name}_rel_diff_pct": 100 * (ppl - ref_ppl) / ref_ppl for name, ppl in sides}}
    _fastest(result, batch_sizes)
    return result


def per_question(scores, requests) -> list[list[float]]:
    """The flat per-choice scores cut into each question's choice log-likelihoods."""
    out, start = [], 0
    for choices in requests:
        out.append([s[0] for s in scores[start : start + len(choices)]])
        start += len(choices)
    return out


def answers_of(scores, requests) -> list[int]:
    """Each question's highest-scoring choice (the first of a tie), as `acc` counts it."""
    return [max(range(len(lls)), key=lambda k: (lls[k], -k)) for lls in per_question(scores, requests)]


def _fastest(result: dict, batch_sizes: list[int]) -> None:
    ran = [b for b in batch_sizes if "seconds" in result[f"lm_eval_bs{b}"]]
    if ran:
        fastest = min(ran, key=lambda b: result[f"lm_eval_bs{b}"]["seconds"])
        result["lm_eval_fastest_bs"] = fastest
        result["speedup_vs_fastest_lm_eval"] = result[f"lm_eval_bs{fastest}"]["seconds"] / result["ours_s"]


def load(args, precision_name: str):
    """(model, tokenizer, what the report says of them), loaded as the plugin loads `--model` in the precision."""
    import torch

    from pytest_quantbench import scoring
    from pytest_quantbench.models import ModelLoadError, load_with_tokenizer, resolve_model
    from pytest_quantbench.precisions import parse_precision

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    precision = parse_precision(precision_name)
    why = precision.why_unavailable(args.device)
    if why:
        raise SystemExit(why)
    try:
        handle = load_with_tokenizer(resolve_model(args.model), precision, args.device, args.tokenizer)
    except ModelLoadError as error:
        raise SystemExit(f"error: {error}") from None
    choice_tokens = len(handle.tokenizer.encode(" A", add_special_tokens=False))
    if choice_tokens > 1:
        print(f"warning: the tokenizer splits ' A' into {choice_tokens} tokens, so an MMLU choice is a continuation "
              "of its own, unlike with a real model's tokenizer: give one with --tokenizer", file=sys.stderr)
    about = {"model_source": handle.source, "precision_params": precision.params(args.device),
             "tokenizer": args.tokenizer or "the model's own", "tokenizer_size": len(handle.tokenizer),
             "tokens_of_choice_A": choice_tokens, "load_s": handle.load_s,
             "token_budget": dataclasses.asdict(scoring.budget_for(handle.model, args.token_budget))}
    return handle.model, handle.tokenizer, about


def environment(device: str) -> dict:
    import lm_eval
    import torch
    import transformers

    from pytest_quantbench.results import package_version

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {"device": device, "device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "lm_eval": getattr(lm_eval, "__version__", None) or package_version("lm-eval"),
            "bitsandbytes": package_version("bitsandbytes"), "torch_threads": torch.get_num_threads()}


def main() -> None:
    from pytest_quantbench.scoring import MIN_SHARED

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", required=True, help="a --qb-model source: alias, hub id, directory, .gguf, synthetic:")
    parser.add_argument("--tokenizer", help="the tokenizer of this source instead of the model's (a directory of "
                                            "tokenizer files or any model source)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--task", action="append", required=True,
                        help="NAME=N[:BATCH_SIZES], e.g. mmlu=500, arc_challenge=300:1,16, mmlu_5shot=0:none, "
                             "wikitext2=0 (N=0: all)")
    parser.add_argument("--lm-eval-batch-sizes", default="1,16",
                        help="lm-eval batch sizes for tasks that name none; 'none' times our side alone")
    parser.add_argument("--lm-eval-softmax-dtype", help="lm-eval's softmax_dtype (default: the model's dtype; "
                                                        "ours is float32)")
    parser.add_argument("--token-budget", type=int, default=None, help="our padded tokens a pass (default: sized "
                                                                       "to the device)")
    parser.add_argument("--max-length", type=int, default=None, help="context length of both sides (default: the "
                                                                     "model config's)")
    parser.add_argument("--share-prefixes", choices=["default", "on", "off"], default="default",
                        help="our shared few-shot prefix (default: scoring.loglikelihood's, where it saves more than it costs)")
    parser.add_argument("--min-shared", type=int, default=MIN_SHARED,
                        help=f"our shortest run of context tokens worth sharing (default {MIN_SHARED}, which "
                             "takes in MMLU's ~17-token 0-shot subject header)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, ours then each lm-eval batch size in "
                                                              "turn; each side's fastest counts (default 2)")
    parser.add_argument("--warmup", type=int, default=8, help="questions each side scores before it is timed")
    parser.add_argument("--prompts-only", action="store_true", help="compare the request strings only (no model)")
    parser.add_argument("--sdpa-backends", default="",
                        help="SDPA backends both sides may use, e.g. flash,efficient,math (default: torch's choice; "
                             "cuDNN's attention may build a plan for every new batch shape)")
    parser.add_argument("--reference-precision",
                        help="also score every question with our scorer in this precision (e.g. fp32; untimed, "
                             "same tokenizer) and report, where the two sides answer differently, which gives the "
                             "reference's answer and how near-tied its top two choices were")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    unknown = [n for n in args.sdpa_backends.split(",") if n and n not in SDPA_BACKENDS]
    if unknown:
        parser.error(f"--sdpa-backends: unknown {', '.join(unknown)}; give some of {', '.join(SDPA_BACKENDS)}")
    default_sizes = parse_batch_sizes(args.lm_eval_batch_sizes)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["QB_SCORE_CACHE"] = "0"  # scoring.py is called directly anyway; nothing here may read stored scores

    import lm_eval

    lm_eval_dir = Path(lm_eval.__file__).parent
    model = tokenizer = None
    report = {**environment(args.device), "precision": args.precision, "model": args.model,
              "prompts_only": args.prompts_only, "max_length": args.max_length, "warmup_questions": args.warmup,
              "rounds": args.rounds,
              "lm_eval_softmax_dtype": args.lm_eval_softmax_dtype or "the model's dtype",
              "score_cache": "off: scoring.py called directly, QB_SCORE_CACHE=0", "tasks": []}
    reference = None
    if not args.prompts_only:
        model, tokenizer, about = load(args, args.precision)
        report.update(about)
        if args.reference_precision:
            ref_model, _, ref_about = load(args, args.reference_precision)
            reference = (ref_model, args.reference_precision)
            report["reference"] = {"precision": args.reference_precision, **ref_about}
    report["sdpa_backends"] = args.sdpa_backends or "torch's choice"
    with sdpa_backends(args.sdpa_backends):
        run_tasks(args, default_sizes, model, tokenizer, lm_eval_dir, report, reference)


@contextlib.contextmanager
def sdpa_backends(names: str):
    """Both sides' SDPA limited to `names` (comma-separated SDPBackend names), or torch's own choice."""
    if not names:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[n]) for n in names.split(",")]):
        yield


def run_tasks(args, default_sizes, model, tokenizer, lm_eval_dir: Path, report: dict, reference=None) -> None:
    for spec in args.task:
        name, limit, sizes = parse_task(spec, default_sizes)
        if name == "wikitext2":
            entry = compare_rolling(limit, sizes, args, model, tokenizer, lm_eval_dir, reference)
        else:
            entry = compare_task(name, limit, sizes, args, model, tokenizer, lm_eval_dir, reference)
        report["tasks"].append(entry)
        print(json.dumps(entry, indent=1, default=str), flush=True)
        if args.out:  # after every task: a run cut short keeps what it measured
            args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
