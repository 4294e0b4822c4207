"""Batched scoring on the real SmolLM2-135M: padding (left for contexts and windows, right for continuations) and
batching must not move a number; checked against lm-eval's plain computation, one unpadded request at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data" / "local"


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(smollm2_dir))


def _requests():
    from pytest_quantbench.tasks import get_task

    requests = []
    for name, count in (("mmlu", 1), ("arc_easy", 2)):  # single-token and multi-token choices, 3 or 4 of them
        task = get_task(name)
        requests += [r for doc in task.load(DATA, "test")[:count] for r in task.requests(doc, [])]
    return requests


def _plain(model, tokenizer, context, continuation):
    """lm-eval's computation for one request: one unpadded pass over context + continuation, full logits."""
    import torch

    from pytest_quantbench.scoring import encode_pair

    context_tokens, tokens = encode_pair(tokenizer, context, continuation)
    with torch.inference_mode():
        logprobs = model(torch.tensor([(context_tokens + tokens)[:-1]])).logits[0, -len(tokens):].float().log_softmax(-1)
    target = torch.tensor(tokens)
    return logprobs.gather(-1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "apart"])
def test_batched_equals_plain_unbatched_within_1e4(smollm2, monkeypatch, packed):
    """Packed (each context with its choices' tokens in one row, under a mask) and apart (the contexts, then the
    choices from their key/value cache): both equal lm-eval's plain computation."""
    from pytest_quantbench import scoring

    model, tokenizer = smollm2
    assert scoring.packs(model)
    if not packed:
        monkeypatch.setattr(scoring, "packs", lambda model: False)
    requests = _requests()
    stats: dict = {}
    batched = scoring.loglikelihood(model, tokenizer, requests, stats=stats)
    assert stats["passes"] == (2 if packed else 3)  # MMLU's contexts; ARC's packed, or its contexts then choices
    plain = [_plain(model, tokenizer, *r) for r in requests]
    assert max(abs(a[0] - b[0]) for a, b in zip(batched, plain)) < 1e-4
    assert [a[1] for a in batched] == [b[1] for b in plain]


def test_batched_tokenization_equals_lm_evals_request_by_request(smollm2):
    """encode_pairs tokenizes each distinct text once, in batches; it must give encode_pair's tokens for every kind of
    request: shared contexts, trailing spaces moved to the continuation, an empty context, a text starting with BOS."""
    from pytest_quantbench import scoring

    _, tokenizer = smollm2
    bos = tokenizer.bos_token or ""
    requests = [*_requests(), ("Question: 2+2=", " 4"), ("Answer: ", "yes"), ("", "Hello there"),
                (f"{bos}Once upon", " a time"), ("x  ", " y")]
    assert scoring.encode_pairs(tokenizer, requests) == [scoring.encode_pair(tokenizer, *r) for r in requests]


def test_rolling_batched_equals_alone_within_1e4(smollm2):
    from pytest_quantbench import scoring
    from pytest_quantbench.tasks.perplexity import detokenize, load_articles

    model, tokenizer = smollm2
    texts = [detokenize(a)[:240] for a in load_articles(DATA)]  # two texts of different lengths: left padding
    together = scoring.loglikelihood_rolling(model, tokenizer, texts, context_length=24, stride=16)
    for text, (total, n) in zip(texts, together):
        [(alone, n_alone)] = scoring.loglikelihood_rolling(model, tokenizer, [text], context_length=24, stride=16,
                                                           token_budget=1)
        assert n == n_alone and abs(total - alone) < 1e-4


def test_few_shot_contexts_scored_from_their_shared_examples_equal_the_full_contexts(smollm2):
    """MMLU 5-shot: a subject's five examples go through the model once; each question continues from their cache."""
    from pytest_quantbench import scoring
    from pytest_quantbench.tasks import get_task

    model, tokenizer = smollm2
    task = get_task("mmlu_5shot")
    docs = task.load(DATA, "test")[:3]
    shots = task.shots_for(docs, DATA)
    requests = [r for doc in docs for r in task.requests(doc, shots(doc))]
    groups = scoring.group_requests(tokenizer, requests, scoring.model_max_length(model))
    assert scoring.shared_prefixes(groups), "the questions of a subject should share their examples"
    shared = scoring.loglikelihood(model, tokenizer, requests)
    full = scoring.loglikelihood(model, tokenizer, requests, share_prefixes=False)
    assert max(abs(a[0] - b[0]) for a, b in zip(shared, full)) < 1e-4
    assert [a[1] for a in shared] == [b[1] for b in full]


def test_few_shot_runs_of_several_subjects_scored_together_equal_the_full_contexts(smollm2):
    """Three subjects' 5-shot examples, of different lengths, in one padded pass; their questions batched across
    subjects, each row reading its own subject's cache; ARC's multi-token answers after a shared run too."""
    from pytest_quantbench import scoring
    from pytest_quantbench.tasks import get_task

    model, tokenizer = smollm2
    task = get_task("mmlu_5shot")
    docs = task.load(DATA, "test")
    shots = task.shots_for(docs, DATA)
    requests = [r for doc in docs for r in task.requests(doc, shots(doc))]
    arc = [r for doc in get_task("arc_easy").load(DATA, "test")[:2] for r in get_task("arc_easy").requests(doc, [])]
    requests += [(prefix + context, choice) for prefix in ("The sky is blue because of how sunlight scatters. " * 8,
                                                           "Plants turn light into sugar. " * 20)
                 for context, choice in arc]
    groups = scoring.group_requests(tokenizer, requests, scoring.model_max_length(model))
    clusters = scoring.shared_prefixes(groups)
    assert len(clusters) >= 3 and len({length for length, _ in clusters}) >= 3
    shared = scoring.loglikelihood(model, tokenizer, requests, share_prefixes=True)
    full = scoring.loglikelihood(model, tokenizer, requests, share_prefixes=False)
    assert max(abs(a[0] - b[0]) for a, b in zip(shared, full)) < 1e-4
    assert [a[1] for a in shared] == [b[1] for b in full]
