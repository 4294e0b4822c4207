"""Accuracy on the built-in suites (simple: facts, arithmetic, science; complex: classification, phishing, fraud),
held to a maximum drop against the baseline precision measured in the same session."""

import pytest

# Items per suite in the default run, chosen so the whole default suite stays within 15 minutes on a 2-core CPU:
# a stratified third of each suite, and 4 items under sampling, which draws 20 responses per item (majority vote).
# `--qb-limit N` overrides both (`--qb-limit 0`: every item).
ITEMS = {"sample": 4}
DEFAULT_ITEMS = 12


@pytest.mark.quantbench(max_accuracy_drop=15.0)
@pytest.mark.parametrize("task", ["simple", "complex"])
def test_accuracy(quantbench, task):
    accuracy = quantbench.evaluate(task, limit=ITEMS.get(quantbench.case.decoding.name, DEFAULT_ITEMS))
    assert 0.0 <= accuracy <= 100.0
