"""Paired accuracy drops, --qb-drop-test, fidelity thresholds and the comparison report sections, through real inner
pytest sessions on the tiny random-weight Llama."""

from __future__ import annotations

import json

import pytest

TESTS = """
import pytest
from pytest_quantbench.tasks import Task, TaskResult, register


class OneFlip(Task):
    '''100 items; fp32 gets 60 right, any other precision loses one of them: a 1-point drop, noise.'''
    name, version, needs_real_weights = "oneflip", "1", False

    def evaluate(self, model, decoding, limit, max_new_tokens):
        right = 60 if model.precision.name == "fp32" else 59
        correct = [i < right for i in range(100)]
        return TaskResult(self.name, right / 100, 100, correct, metrics={"mean_new_tokens": 10.0 if right == 60 else 12.0})


register(OneFlip())


@pytest.mark.quantbench(max_accuracy_drop=0.5)
def test_oneflip(quantbench):
    quantbench.evaluate("oneflip")


@pytest.mark.quantbench(decodings=["greedy"], max_kl=0.0, min_top1_agreement=50)
def test_kl(quantbench):
    metrics = quantbench.fidelity(prompts=["The sky is blue because", "def add(a, b):\\n    return a + b"])
    assert metrics["fidelity_positions"] > 10
"""
ARGS = ("--qb-precision=fp32,nf4", "--qb-decoding=greedy,beam2", "--qb-repeats=1", "--qb-warmup=0",
        "-p", "no:cacheprovider")


@pytest.fixture
def session(pytester, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path / "cache"))
    pytester.makepyfile(TESTS)

    def run(*extra):
        return pytester.runpytest(f"--qb-model=tiny={tiny_model_dir}", *ARGS, *extra)

    return run


def test_point_drop_test_fails_noise_and_fidelity_gates(session, pytester, tmp_path):
    result = session()
    # test_oneflip: nf4 fails under both decodings (1 pt > 0.5 pt); test_kl: nf4's KL > 0 fails
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines([("*oneflip: nf4 accuracy 59.0% vs fp32 60.0%: drop 1.0 pt > allowed 0.5 pt "
                                  "(paired 95% CI [[]*, *[]] pt, McNemar p=1, 100 items: not significant)*"),
                                 "*kl_mean * nats > limit 0 nats*"])
    data = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())
    by_test = {r["test"].split("::")[1]: r for r in data["records"]}
    paired = by_test["test_oneflip[tiny-nf4-greedy]"]["task_details"]["oneflip"]["vs_baseline"]
    assert paired["drop_pt"] == pytest.approx(1.0) and paired["p_value"] == 1.0
    assert paired["ci_low_pt"] <= 0 <= paired["ci_high_pt"] and paired["verdict"] == "not significant"
    assert (paired["flips_to_wrong"], paired["flips_to_right"]) == (1, 0)
    assert paired["length_ratio"] == pytest.approx(1.2)
    fp32, nf4 = by_test["test_kl[tiny-fp32-greedy]"], by_test["test_kl[tiny-nf4-greedy]"]
    assert fp32["metrics"]["kl_mean"] == 0.0 and fp32["metrics"]["top1_agreement_pct"] == 100.0
    assert nf4["metrics"]["kl_mean"] > 0 and nf4["task_details"]["fidelity"]["baseline"] == "fp32"
    assert list((tmp_path / "cache" / "fidelity").glob("*.npz"))  # the baseline summary is cached on disk
    markdown = (pytester.path / ".quantbench" / "quantbench.md").read_text()
    assert "## Accuracy by precision and decoding" in markdown
    assert "oneflip · greedy" in markdown and "oneflip · beam2" in markdown
    assert "## Against the baseline (paired)" in markdown and "not significant" in markdown
    assert "## Fidelity against the baseline" in markdown


def test_significant_drop_test_lets_noise_pass(session):
    result = session("--qb-drop-test=significant", "-k", "oneflip")
    result.assert_outcomes(passed=4)


def test_drop_test_from_ini_and_usage_error(session, pytester):
    pytester.makeini("[pytest]\nqb_drop_test = significant\n")
    session("-k", "oneflip").assert_outcomes(passed=4)
    bad = session("--qb-drop-test=sometimes")
    assert "unknown drop test 'sometimes'; valid: point, significant" in bad.stderr.str()
