"""Fidelity against the baseline: KL and top-1 agreement from cached baseline summaries, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quantbench.tasks import fidelity
from pytest_quantbench.tasks.fidelity import SummaryCache, compare, kl_per_position, summarize, summary_key


class TableModel:
    """A scripted LogitsModel: token ids are character codes mod the vocabulary, log-probs come from a table."""

    def __init__(self, probabilities: np.ndarray):
        self.logprobs_table = np.log(probabilities)
        self.vocab = probabilities.shape[1]

    def token_ids(self, text: str) -> list[int]:
        return [ord(c) % self.vocab for c in text]

    def logprobs(self, ids: list[int]) -> np.ndarray:
        return self.logprobs_table[[i % self.logprobs_table.shape[0] for i in range(len(ids))]]


def full_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def random_distributions(rows: int, vocab: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(rows, vocab)) * 3
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_kl_over_the_whole_vocabulary_is_the_exact_kl():
    p, q = random_distributions(6, 10, 0), random_distributions(6, 10, 1)
    summary = summarize(TableModel(p), ["abcdef"], k=10)
    expected = full_kl(p, q)
    assert np.allclose(kl_per_position(summary, np.log(q)), expected, atol=1e-12)


def test_top_k_kl_with_a_tail_bucket_by_hand():
    # baseline p = (.5, .3, .1, .1), candidate q = (.4, .4, .1, .1), k = 2: the two tail tokens merge into one bucket
    # of .2 on both sides: KL = .5 ln(.5/.4) + .3 ln(.3/.4) + .2 ln(.2/.2)
    p, q = np.array([[0.5, 0.3, 0.1, 0.1]]), np.array([[0.4, 0.4, 0.1, 0.1]])
    summary = summarize(TableModel(p), ["a"], k=2)
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
    assert kl_per_position(summary, np.log(q))[0] == pytest.approx(expected, abs=1e-12)
    assert summary.tail_logprob[0] == pytest.approx(math.log(0.2))


def test_top_k_kl_is_a_lower_bound_of_the_full_kl():
    p, q = random_distributions(20, 50, 2), random_distributions(20, 50, 3)
    summary = summarize(TableModel(p), ["x" * 20], k=8)
    assert np.all(kl_per_position(summary, np.log(q)) <= full_kl(p, q) + 1e-12)


def test_identical_models_have_zero_kl_and_full_agreement():
    p = random_distributions(5, 30, 4)
    summary = summarize(TableModel(p), ["hello", "fidelity"], k=4)
    metrics = compare(summary, TableModel(p))
    assert metrics == {"kl_mean": 0.0, "kl_p99": 0.0, "top1_agreement_pct": 100.0, "fidelity_positions": 13}


def test_compare_reports_mean_p99_and_agreement():
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    q = np.array([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])  # second position: top-1 flips
    summary = summarize(TableModel(p), ["ab"], k=3)
    metrics = compare(summary, TableModel(q))
    kl = full_kl(p, q)
    assert metrics["kl_mean"] == pytest.approx(kl.mean())
    assert metrics["kl_p99"] == pytest.approx(np.percentile(kl, 99))
    assert metrics["top1_agreement_pct"] == 50.0


def test_candidate_is_fed_the_baselines_token_ids():
    p = random_distributions(4, 12, 5)
    summary = summarize(TableModel(p), ["abcd"], k=3)
    seen = []

    class Recorder(TableModel):
        def logprobs(self, ids):
            seen.append(ids)
            return super().logprobs(ids)

        def token_ids(self, text):  # never used: the candidate must not re-tokenize
            raise AssertionError("re-tokenized")

    compare(summary, Recorder(p))
    assert seen == summary.tokens


def test_summary_round_trips_through_the_disk_cache(tmp_path):
    p = random_distributions(6, 20, 6)
    calls = []

    def compute():
        calls.append(1)
        return summarize(TableModel(p), ["abc", "defgh"], k=5)

    first = SummaryCache(tmp_path).get("key1", True, compute)
    second = SummaryCache(tmp_path).get("key1", True, compute)  # a new session: read from disk
    assert len(calls) == 1
    assert second.tokens == first.tokens
    assert np.array_equal(second.top_ids, first.top_ids) and np.array_equal(second.top_logprobs, first.top_logprobs)
    SummaryCache(tmp_path).get("key2", False, compute)  # not persistent: computed, nothing written
    assert len(calls) == 2 and not (tmp_path / "key2.npz").exists()


def test_summary_key_names_model_precision_and_prompt_set():
    source = {"kind": "gguf", "sha256": "abc"}
    key, persistent = summary_key(source, "m", "fp32", {"library": "torch"}, "cpu")
    assert persistent
    assert key != summary_key(source, "m", "bf16", {"library": "torch"}, "cpu")[0]
    assert key != summary_key({"kind": "gguf", "sha256": "abd"}, "m", "fp32", {"library": "torch"}, "cpu")[0]
    assert summary_key({"kind": "hub", "id": "org/model"}, "m", "fp32", {}, "cpu")[1] is False  # no revision


def test_length_ratio():
    assert fidelity.length_ratio({"mean_new_tokens": 10.0}, {"mean_new_tokens": 15.0}) == 1.5
    assert fidelity.length_ratio({}, {"mean_new_tokens": 15.0}) is None


def test_prompt_set_is_a_few_dozen_prompts():
    prompts = fidelity.load_prompts()
    assert 24 <= len(prompts) <= 64 and all(prompts)


@pytest.mark.slow
def test_smollm2_nf4_moves_the_distribution_and_fp32_does_not(smollm2_dir):
    from pytest_quantbench.models import load_model, resolve_model
    from pytest_quantbench.precisions import parse_precision

    prompts = fidelity.load_prompts()[:4]
    spec = resolve_model(f"smollm2={smollm2_dir}")
    fp32 = load_model(spec, parse_precision("fp32"), "cpu")
    summary = summarize(fidelity.HandleLogits(fp32), prompts)
    del fp32
    again = compare(summary, fidelity.HandleLogits(load_model(spec, parse_precision("fp32"), "cpu")))
    assert again["kl_mean"] == 0.0 and again["top1_agreement_pct"] == 100.0
    nf4 = compare(summary, fidelity.HandleLogits(load_model(spec, parse_precision("nf4"), "cpu")))
    assert nf4["kl_mean"] > 0 and nf4["kl_p99"] >= nf4["kl_mean"]
    assert nf4["top1_agreement_pct"] < 100.0
    assert nf4["fidelity_positions"] == sum(len(t) for t in summary.tokens)
