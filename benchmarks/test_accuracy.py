"""Accuracy on the built-in suites (simple: facts, arithmetic, science; complex: classification, phishing, fraud),
held to a maximum drop against the baseline precision measured in the same session."""

import pytest

# Sampling draws 20 responses per prompt (majority vote): unless --qb-limit says otherwise it runs on a stratified
# subset of this many items per suite, so the default suite stays within minutes on a CPU.
SAMPLE_LIMIT = 12


@pytest.mark.quantbench(max_accuracy_drop=15.0)
@pytest.mark.parametrize("task", ["simple", "complex"])
def test_accuracy(quantbench, task):
    limit = quantbench.settings.limit
    if limit is None and quantbench.case.decoding.name == "sample":
        limit = SAMPLE_LIMIT
    accuracy = quantbench.evaluate(task, limit=limit)
    assert 0.0 <= accuracy <= 100.0
