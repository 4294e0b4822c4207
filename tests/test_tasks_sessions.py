"""Log-likelihood tasks through inner pytest sessions on the tiny random-weight Llama: fixture data from
--qb-data-dir, thresholds for tasks at chance and for perplexity, the report, and the skip when data is missing."""

from __future__ import annotations

import json
from pathlib import Path

FAST = ("--qb-decoding=greedy", "--qb-repeats=1", "--qb-warmup=0", "-p", "no:cacheprovider")
DATA = Path(__file__).parent / "data" / "local"

TASKS_TEST = """
import pytest

@pytest.mark.quantbench(max_accuracy_drop=5.0, max_perplexity_increase=50.0)
@pytest.mark.parametrize("task", ["arc_easy", "mmlu", "wikitext2"])
def test_task(quantbench, task):
    assert quantbench.evaluate(task) > 0
"""


def test_tasks_from_data_dir_with_thresholds_and_report(pytester, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("QB_SCORE_CACHE", "0")
    pytester.makepyfile(TASKS_TEST)
    result = pytester.runpytest(f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=fp32,bf16",
                                f"--qb-data-dir={DATA}", "--qb-ppl-context=64", *FAST)
    result.assert_outcomes(passed=6)
    report = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())
    bf16 = {r["test"].split("[")[1]: r for r in report["records"] if r["precision"] == "bf16"}
    arc = bf16["tiny-bf16-greedy-arc_easy]"]
    assert arc["task_details"]["arc_easy"]["n"] == 3 and "acc_norm_stderr" in arc["task_details"]["arc_easy"]["metrics"]
    # A random model is at chance: the drop is recorded, not gated.
    assert "not gated" in arc["checks"][0]["message"] and arc["checks"][0]["passed"]
    mmlu = bf16["tiny-bf16-greedy-mmlu]"]["task_details"]["mmlu"]
    assert set(mmlu["by_category_pct"]) == {"STEM", "humanities", "other"}
    ppl = bf16["tiny-bf16-greedy-wikitext2]"]
    assert "wikitext2" not in ppl["accuracy_pct"] and ppl["task_details"]["wikitext2"]["metrics"]["context_length"] == 64
    assert ppl["checks"][0]["name"] == "perplexity_increase[wikitext2]" and ppl["checks"][0]["passed"]
    markdown = (pytester.path / ".quantbench" / "quantbench.md").read_text()
    assert "wikitext2 word ppl" in markdown and "arc_easy acc (%)" in markdown


def test_missing_data_skips_with_how_to_provide_it(pytester, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(TASKS_TEST)
    result = pytester.runpytest(f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=fp32",
                                f"--qb-data-dir={tmp_path}", "-rs", *FAST)
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*SKIPPED*arc_easy: allenai/ai2_arc*--qb-data-dir DIR*",
                                 "*SKIPPED*mmlu: cais/mmlu*mmlu/mmlu_test.jsonl*",
                                 "*SKIPPED*wikitext2: wikitext*wiki.test.raw*"])
