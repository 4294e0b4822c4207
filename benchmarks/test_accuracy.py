"""Accuracy on the built-in suites (simple: facts, arithmetic, science; complex: classification, phishing, fraud),
held to a maximum drop against the baseline precision measured in the same session."""

import pytest

# Items per suite in the default run, chosen to keep the whole default suite near 20 minutes on a 2-core CPU (bf16
# under sampling is the slowest there: no native bf16 matmul):
# a stratified third of each suite, and 4 items under sampling, which draws 20 responses per item (majority vote).
# `--qb-limit N` overrides both (`--qb-limit 0`: every item).
ITEMS = {"sample": 4}
DEFAULT_ITEMS = 12


# 12 items make one item 8.3 pt: a drop fails only when the paired comparison finds it significant (McNemar, bootstrap
# interval), so two flipped items out of twelve (p = 0.5) are reported as noise, not as a failure.
@pytest.mark.quantbench(max_accuracy_drop=15.0, drop_test="significant")
@pytest.mark.parametrize("task", ["simple", "complex"])
def test_accuracy(quantbench, task):
    accuracy = quantbench.evaluate(task, limit=ITEMS.get(quantbench.case.decoding.name, DEFAULT_ITEMS))
    assert 0.0 <= accuracy <= 100.0


# The standard benchmarks, from --qb-data-dir (or the hub): skipped, with how to provide the data, when it is missing.
# Scored by log-likelihood, so they do not depend on the decoding: greedy only. Items chosen so the five CPU
# precisions add a few minutes: MMLU 2 questions per subject, 200 ARC questions each, one WikiText-2 article.
# The accuracy drop is gated only where the baseline is clearly above chance (SmolLM2-135M: ARC-Easy; MMLU and
# ARC-Challenge sit at chance and are recorded, the check saying so); perplexity may rise 25% at most.
BENCHMARK_ITEMS = {"arc_easy": 200, "arc_challenge": 200, "mmlu": 114, "wikitext2": 1}


@pytest.mark.quantbench(decodings=["greedy"], max_accuracy_drop=10.0, max_perplexity_increase=25.0)
@pytest.mark.parametrize("task", list(BENCHMARK_ITEMS))
def test_benchmark(quantbench, task):
    value = quantbench.evaluate(task, limit=BENCHMARK_ITEMS[task])
    assert value > 0.0
