"""Report extras: Pareto front, normalization, recommendations, CSV and PNG files."""

from __future__ import annotations

import pandas as pd
import pytest

from pytest_quantbench.report.markdown import render
from pytest_quantbench.report.plots import normalized, pareto_front
from pytest_quantbench.report.recommend import recommendations
from pytest_quantbench.report.writer import write_reports
from pytest_quantbench.results import Record


def test_pareto_front_hand_computed():
    # (memory, accuracy): b dominates c (smaller and as accurate); a and b trade off; d is dominated by b
    points = [(100.0, 60.0), (50.0, 55.0), (80.0, 55.0), (90.0, 40.0)]
    assert pareto_front(points) == [0, 1]


def summary():
    return pd.DataFrame({"model": ["m"] * 3, "precision": ["fp32", "int8", "nf4"],
                         "footprint_mb": [500.0, 200.0, 150.0], "tokens_per_s": [20.0, 10.0, 15.0],
                         "peak_mem_mb": [900.0, 700.0, 600.0], "acc:simple": [60.0, 58.0, 40.0]})


def test_normalized_best_is_one():
    grid = normalized(summary(), ["footprint_mb", "tokens_per_s", "acc:simple"])
    assert list(grid["footprint_mb"]) == [0.0, pytest.approx(300 / 350), 1.0]
    assert list(grid["tokens_per_s"]) == [1.0, 0.0, 0.5]
    assert list(grid["acc:simple"]) == [1.0, 0.9, 0.0]


def test_normalized_ties_are_all_best_either_way():
    tied = summary().assign(footprint_mb=100.0, tokens_per_s=12.0)  # lower is better for one, higher for the other
    grid = normalized(tied, ["footprint_mb", "tokens_per_s"])
    assert list(grid["footprint_mb"]) == [1.0, 1.0, 1.0] and list(grid["tokens_per_s"]) == [1.0, 1.0, 1.0]


def test_recommendations():
    lines = recommendations(summary())
    assert lines[0] == "- **Fastest**: m fp32 (20.0 tokens/s)"
    assert lines[1] == "- **Most accurate**: m fp32 (mean accuracy 60.0% over simple)"
    assert lines[2].startswith("- **Smallest within 5 pt of the most accurate**: m int8 (200.0 MB")
    # fp32 (0 + 1 + 0 + 1) / 4 = 0.5; int8 (0.857 + 0 + 0.667 + 0.9) / 4 = 0.606; nf4 (1 + 0.5 + 1 + 0) / 4 = 0.625
    assert lines[3].startswith("- **Best overall balance**: m nf4 (mean normalized score 0.6")


def test_recommendations_rank_on_the_tasks_every_precision_ran():
    # nf4 has the best mean only because it skipped the hard task: ranked on `simple` alone, fp32 leads
    uneven = summary().assign(**{"acc:hard": [20.0, 18.0, None], "acc:simple": [60.0, 58.0, 59.0]})
    lines = recommendations(uneven)
    assert lines[1] == "- **Most accurate**: m fp32 (mean accuracy 60.0% over simple)"


@pytest.mark.parametrize(("items", "says"), [
    (12, "; on 12 items differences under 54 pt cannot be told from noise"),  # a 30-point gap can be chance
    (4, "; on 4 items differences under 100 pt"),
    (5000, ")"),  # enough items to see the 5-point budget: no caveat
])
def test_recommendations_say_which_accuracy_gaps_are_noise(items, says):
    lines = recommendations(summary().assign(**{"n:simple": items}))
    assert lines[1].startswith("- **Most accurate**: m fp32 (mean accuracy 60.0% over simple" + says)


def two_records() -> list[Record]:
    return [Record(f"t::t[m-{p}-greedy]", "m", p, "greedy", "cpu",
                   metrics={"footprint_mb": f, "tokens_per_s": t, "peak_mem_mb": f + 300}, accuracy_pct={"simple": a})
            for p, f, t, a in [("fp32", 500.0, 20.0, 60.0), ("nf4", 150.0, 15.0, 40.0)]]


def test_write_reports_adds_csv_and_plots(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the matplotlib extra")
    records = two_records()
    paths = write_reports(records, tmp_path, "pytest benchmarks")
    names = {p.name for p in paths}
    assert {"quantbench.json", "quantbench.md", "quantbench.csv", "footprint_mb.png", "tokens_per_s.png",
            "peak_mem_mb.png", "heatmap.png", "accuracy_vs_memory.png"} <= names
    csv = pd.read_csv(tmp_path / "quantbench.csv")
    assert list(csv["precision"]) == ["fp32", "nf4"] and list(csv["acc:simple"]) == [60.0, 40.0]
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")
    assert "## Recommendations" in (tmp_path / "quantbench.md").read_text()


def test_gpu_section_shows_workers_physical_gpus_and_split_memory():
    from pytest_quantbench.report.markdown import gpu_section

    one = Record(test="b.py::test_speed[m-nf4-greedy]", model="m", precision="nf4", decoding="greedy", device="cuda",
                 worker="gw1", metrics={"peak_allocated_mb": 5000.0, "tokens_per_s": 30.0},
                 model_info={"gpus": [{"index": 1, "nvml_used_mb": 6100.0}], "device_map": {"cuda:0": 1}})
    split = Record(test="b.py::test_speed[big-bf16-greedy]", model="big", precision="bf16", decoding="greedy",
                   device="cuda", metrics={"peak_allocated_mb_gpu0": 31000.0, "peak_allocated_mb_gpu1": 33000.0},
                   model_info={"gpus": [{"index": 0, "nvml_used_mb": 32000.0}, {"index": 1, "nvml_used_mb": 34000.0}],
                               "device_map": {"0": 30, "1": 35}})
    cpu = Record(test="b.py::test_speed[m-fp32-greedy]", model="m", precision="fp32", decoding="greedy", device="cpu")
    lines = gpu_section([one, split, cpu])
    assert lines[1] == "## Workers and GPUs"
    assert "| `test_speed[m-nf4-greedy]` | gw1 | 1 | cuda:0: 1 | 6100 | 5000 | 30.0 |" in lines
    assert "| `test_speed[big-bf16-greedy]` | main | 0, 1 | 0: 30, 1: 35 | 32000 / 34000 | 31000 / 33000 | – |" in lines
    assert not any("m-fp32" in line for line in lines) and gpu_section([cpu]) == []


def test_nvml_gpus_is_empty_or_describes_visible_gpus(monkeypatch):
    from pytest_quantbench.gpus import nvml_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nvml_gpus() == []  # no GPU visible (and on a machine without NVML: nothing to describe either)


def verdict_records() -> list[Record]:
    passed = two_records()
    passed[1].checks = [{"name": "accuracy_drop:simple", "passed": False, "message": "simple: drop 20.0 pt | > 5.0"},
                        {"name": "max_memory_mb", "passed": True, "message": "peak 450 MB <= 1000 MB"}]
    failed = Record("benchmarks/test_speed.py::test_speed[m-int8-greedy]", "m", "int8", "greedy", "cpu",
                    outcome="failed", reason="Failed: threshold failed: ms/token 9.0 > 5.0\nmore detail")
    skipped = Record("benchmarks/test_speed.py::test_speed[m-gptq-greedy]", "m", "gptq", "greedy", "cpu",
                     outcome="skipped", reason="gptq: needs GPTQModel")
    return [*passed, skipped, failed]


def test_markdown_opens_with_the_verdict_and_lists_failures_first():
    markdown = render(verdict_records(), {"command": "pytest benchmarks"}, {})
    lines = markdown.splitlines()
    assert lines[2] == "**FAILED**: 1 failed, 2 passed, 1 skipped; 1 of 2 threshold checks crossed."
    assert "| `test_speed[m-int8-greedy]` | threshold failed: ms/token 9.0 > 5.0 |" in lines  # short name, first line
    assert lines.index("## Recommendations") < lines.index("## Run") < lines.index("## By precision")
    checks = [line for line in lines if line.startswith("| `t[m-nf4-greedy]`")]
    assert checks[0].endswith("**FAIL**: simple: drop 20.0 pt \\| > 5.0 |") and "pass" in checks[1]  # escaped pipe
    troubled = lines[lines.index("## Failed and skipped") + 4:]
    assert troubled[0].startswith("| `test_speed[m-int8-greedy]` | failed") and "skipped" in troubled[1]


def test_long_tables_fold_into_details():
    records = [Record(f"t::t[m{i}-fp32-greedy]", f"m{i}", "fp32", "greedy", "cpu", metrics={"ms_per_token": 1.0})
               for i in range(20)]
    markdown = render(records, {"command": "pytest"}, {})
    assert "<details><summary>greedy: every case (20 rows)</summary>" in markdown
    assert "**PASSED**: 20 passed; 0 of 0 threshold checks crossed." in markdown


def test_terminal_table_names_the_decoding_and_the_spread():
    from pytest_quantbench.report.markdown import terminal_table

    record = Record("t::t[m-nf4-sample]", "m", "nf4", "sample", "cpu",
                    metrics={"ms_per_token": 20.0, "ms_per_token_iqr": 1.5, "tokens_per_s": 50.0})
    header, _, row = terminal_table([record]).splitlines()
    assert header.split() == ["model", "precision", "decoding", "ms/token", "ms/token", "IQR", "tokens/s"]
    assert row.split() == ["m", "nf4", "sample", "20.0", "1.5", "50.0"]


def test_recommendations_name_the_machine_in_a_merged_report():
    merged = summary().assign(machine=["cpu-box", "cpu-box", "H200"])
    assert recommendations(merged)[0] == "- **Fastest**: m fp32 on cpu-box (20.0 tokens/s)"
