"""Unit tests of the pure parts: parsers, registries, statistics, scoring, thresholds, records, the Markdown report."""

from __future__ import annotations

import json
import re
import time

import pytest

from pytest_quantbench import measure, thresholds, trackers
from pytest_quantbench.decoding import parse_decoding
from pytest_quantbench.models import ModelLoadError, resolve_model
from pytest_quantbench.precisions import Precision, parse_precision
from pytest_quantbench.report.markdown import render
from pytest_quantbench.results import Record, load_report, write_atomic
from pytest_quantbench.settings import resolve_device, split_list
from pytest_quantbench.tasks import TaskResult, get_task
from pytest_quantbench.tasks.generation import (
    DATA,
    DatasetError,
    GenerationTask,
    by_category,
    is_correct,
    load_items,
    majority,
    predict,
)
from pytest_quantbench.tasks.sources import stratified
from pytest_quantbench.thresholds import Thresholds


def test_split_list():
    assert split_list("fp32, nf4,,int8") == ["fp32", "nf4", "int8"]
    assert split_list(["a,b", "c"]) == ["a", "b", "c"]
    assert split_list(None) == []


def test_thresholds_updated_rejects_unknown_keys():
    assert Thresholds().updated(max_memory_mb="512").max_memory_mb == 512.0
    with pytest.raises(ValueError, match="unknown threshold.*max_memroy_mb.*valid:.*max_memory_mb"):
        Thresholds().updated(max_memroy_mb=1)


def test_resolve_device():
    assert resolve_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_parse_precision_variants():
    nf4 = parse_precision("nf4@fp16+dq")
    assert (nf4.name, nf4.compute_dtype, nf4.double_quant) == ("nf4@fp16+dq", "fp16", True)
    assert parse_precision("fp4+dq").double_quant and parse_precision("fp4+dq").compute_dtype is None
    assert parse_precision("nf4").params("cpu") == {"library": "bitsandbytes", "compute_dtype": "fp32",
                                                    "double_quant": False}
    assert parse_precision("nf4").params("cuda")["compute_dtype"] == "bf16"
    with pytest.raises(ValueError, match=r"unknown precision 'fp33'; valid: fp32, fp16, bf16, int8\S*, nf4"):
        parse_precision("fp33")
    with pytest.raises(ValueError, match="takes no @ argument"):
        parse_precision("int8@fp16")
    with pytest.raises(ValueError, match="unknown compute dtype 'fp8'"):
        parse_precision("nf4@fp8")


def test_precision_load_kwargs_build_bitsandbytes_config():
    import torch

    kwargs = parse_precision("nf4@fp16+dq").load_kwargs("cpu")
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.float16 and config.bnb_4bit_use_double_quant
    assert parse_precision("bf16").load_kwargs("cpu") == {"dtype": torch.bfloat16}
    assert parse_precision("int8").load_kwargs("cpu")["quantization_config"].load_in_8bit


def test_why_unavailable():
    needs_gpu = Precision("gpu-only", "torch", "x", lambda p, d: {}, needs_cuda=True)
    assert "needs a CUDA GPU" in needs_gpu.why_unavailable("cpu")
    assert needs_gpu.why_unavailable("cuda") is None
    missing = Precision("odd", "oddlib", "x", lambda p, d: {}, requires=("no_such_module_qb",))
    assert "no_such_module_qb" in missing.why_unavailable("cuda")


def test_decodings():
    sample = parse_decoding("sample").kwargs()
    assert sample["temperature"] == 0.6 and sample["top_p"] == 0.95 and sample["num_return_sequences"] == 20
    assert parse_decoding("beam4").kwargs() == {"do_sample": False, "num_beams": 4, "num_return_sequences": 1}
    assert parse_decoding("greedy").kwargs()["do_sample"] is False
    with pytest.raises(ValueError, match="unknown decoding 'beam6'; valid: greedy, sample, beam2, beam3, beam4, beam5"):
        parse_decoding("beam6")


def test_summarize_hand_computed():
    stats = measure.summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert stats["median"] == 3.0 and stats["min"] == 1.0 and stats["max"] == 10.0
    assert stats["iqr"] == pytest.approx(4.0 - 2.0)
    assert stats["cv"] == pytest.approx(3.5355339 / 4.0, rel=1e-6)
    assert measure.summarize([5.0]) == {"median": 5.0, "iqr": 0.0, "cv": 0.0, "min": 5.0, "max": 5.0}
    with pytest.raises(ValueError):
        measure.summarize([])


def test_timer_and_memory_tracker():
    with trackers.Timer("cpu") as timer:
        time.sleep(0.05)
    assert 0.045 < timer.seconds < 0.5
    with trackers.MemoryTracker("cpu", interval=0.001) as tracker:
        block = bytearray(200 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
        time.sleep(0.05)
    del block
    metrics = tracker.metrics
    assert metrics["rss_peak_mb"] - metrics["rss_start_mb"] > 150
    source = "heap" if "heap_peak_mb" in metrics else "rss"  # the C heap's counter where glibc has one
    assert metrics["peak_mem_source"] == source and metrics["peak_mem_mb"] == metrics[f"{source}_peak_mb"]
    assert metrics["peak_mem_mb"] - metrics[f"{source}_start_mb"] > 150


def test_model_footprint_counts_shared_storage_once():
    import torch

    linear = torch.nn.Linear(100, 50)  # 5000 + 50 float32
    assert trackers.model_footprint_mb(linear) == pytest.approx(5050 * 4 / 2**20)
    tied = torch.nn.Module()
    tied.a = torch.nn.Linear(100, 50, bias=False)
    tied.b = torch.nn.Linear(100, 50, bias=False)
    tied.b.weight = tied.a.weight
    assert trackers.model_footprint_mb(tied) == pytest.approx(5000 * 4 / 2**20)


@pytest.mark.parametrize(("item", "response", "prediction", "correct"), [
    ({"match": "contains", "answer": "Paris"}, "The capital of France is Paris.", "Paris", True),
    ({"match": "contains", "answer": "Paris"}, "Parisian food is great", "parisian food is great", False),
    ({"match": "contains", "answer": "carbon dioxide", "aliases": ["CO2"]}, "It is CO2!", "CO2", True),
    ({"match": "numeric", "answer": "19"}, "The answer is 19.", "19", True),
    ({"match": "numeric", "answer": "2.5"}, "2.5 kg", "2.5", True),
    ({"match": "numeric", "answer": "1000"}, "About 1,000 people", "1000", True),
    ({"match": "numeric", "answer": "7"}, "I do not know", "", False),
    ({"match": "label", "answer": "legitimate", "labels": ["phishing", "legitimate"]},
     "Legitimate. It is not phishing.", "legitimate", True),
    ({"match": "label", "answer": "legitimate", "labels": ["phishing", "legitimate"]},
     "This is phishing, not legitimate", "phishing", False),
])
def test_scoring_rules(item, response, prediction, correct):
    assert predict(item, response) == prediction
    assert is_correct(item, prediction) is correct


def test_majority_ties_go_to_first_seen():
    assert majority(["b", "a", "a", "b"]) == "b"
    assert majority(["x", "y", "y"]) == "y"


def test_take_is_stratified_and_deterministic():
    items = [{"id": f"{c}{i}", "category": c} for c in "abc" for i in range(4)]
    chosen = stratified(items, 6, by_category)
    assert [i["id"] for i in chosen] == ["a0", "a1", "b0", "b1", "c0", "c1"]
    assert stratified(items, 6, by_category) == chosen and stratified(items, None, by_category) == items


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": "x", "prompt": "p", "match": "contains"}), "missing or empty string field 'answer'"),
    (json.dumps({"id": "x", "prompt": "p", "answer": "c", "match": "label", "labels": ["a", "b"]}),
     "must be one of its 'labels'"),
    (json.dumps({"id": "x", "prompt": "p", "answer": "many", "match": "numeric"}), "is not a number"),
    (json.dumps({"id": "x", "prompt": "p", "answer": "a", "match": "regex"}), "unknown match rule 'regex'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "suite.jsonl"
    good = json.dumps({"id": "ok", "prompt": "p", "answer": "a", "match": "contains"})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=f"suite.jsonl:2: .*{message}"):
        load_items(path)


def test_shipped_suites_are_valid():
    for name in ("simple", "complex"):
        items = load_items(DATA / f"{name}.jsonl")
        assert len(items) == 36 and len({i["id"] for i in items}) == 36
        assert get_task(name).name == name
    with pytest.raises(ValueError, match="unknown task 'mmlu2'"):
        get_task("mmlu2")


class ScriptedModel:
    """Answers from a script: prompt -> list of responses."""

    def __init__(self, script):
        self.script = script

    def generate(self, prompts, decoding, max_new_tokens):
        return [self.script[p][: decoding.num_responses] for p in prompts]


def test_generation_task_accuracy_and_majority_vote(tmp_path):
    rows = [
        {"id": "1", "category": "math", "prompt": "2+2?", "answer": "4", "match": "numeric"},
        {"id": "2", "category": "math", "prompt": "3+3?", "answer": "6", "match": "numeric"},
        {"id": "3", "category": "fact", "prompt": "Capital of France?", "answer": "Paris", "match": "contains"},
    ]
    path = tmp_path / "mini.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = GenerationTask("mini", path)
    script = {"2+2?": ["4"] * 12 + ["5"] * 8, "3+3?": ["7"] * 11 + ["6"] * 9, "Capital of France?": ["Paris."] * 20}
    greedy = task.evaluate(ScriptedModel(script), parse_decoding("greedy"), None, 8)
    assert greedy.correct == [True, False, True] and greedy.accuracy == pytest.approx(2 / 3)
    assert greedy.by_category == {"math": 0.5, "fact": 1.0}
    sampled = task.evaluate(ScriptedModel(script), parse_decoding("sample"), None, 8)
    assert sampled.correct == [True, False, True]  # majority: 4 (12 of 20), 7 (11 of 20), Paris
    assert sampled.metrics["response_accuracy"] == pytest.approx((12 + 9 + 20) / 60)


def test_threshold_messages():
    failed = thresholds.accuracy_drop("simple", "nf4", 0.71, "fp32", 0.80, 5.0)
    assert not failed.passed
    assert failed.message == "simple: nf4 accuracy 71.0% vs fp32 80.0%: drop 9.0 pt > allowed 5.0 pt"
    assert thresholds.accuracy_drop("simple", "nf4", 0.71, "fp32", 0.80, 10.0).passed
    assert thresholds.at_most("peak_mem_mb", 600.0, 600.0, "MB").passed
    over = thresholds.at_most("peak_mem_mb", 600.5, 600.0, "MB")
    assert not over.passed and over.message == "peak_mem_mb 600.5 MB > limit 600.0 MB"
    under = thresholds.at_least("tokens_per_s", 9.5, 10.0, "tokens/s")
    assert not under.passed and under.message == "tokens_per_s 9.5 tokens/s < minimum 10.0 tokens/s"


def test_threshold_evaluate_checks_only_what_was_measured():
    limits = Thresholds(max_accuracy_drop=5, max_memory_mb=100, min_tokens_per_s=1)
    half = TaskResult("simple", 0.5, 10)
    outcome = thresholds.TaskOutcome(half, TaskResult("simple", 0.5, 10), "fp32")
    checks = thresholds.evaluate(limits, "nf4", {"tokens_per_s": 3.0}, {"simple": outcome})
    assert [c.name for c in checks] == ["accuracy_drop[simple]", "tokens_per_s"]
    same = thresholds.evaluate(limits, "fp32", {}, {"simple": thresholds.TaskOutcome(half)})  # no baseline to compare
    assert same == []


def test_record_round_trip_and_report_files(tmp_path):
    record = Record("t::x[a]", "m", "nf4", "greedy", "cpu", metrics={"ms_per_token": 1.5})
    assert Record.from_dict({**record.as_dict(), "future_field": 1}) == record
    path = tmp_path / "r.json"
    write_atomic(path, json.dumps({"schema_version": 1, "records": []}))
    assert load_report(path)["records"] == [] and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    for name, text in [("corrupt.json", "{]"), ("truncated.json", '{"schema_version": 1, "rec'),
                       ("schema.json", '{"schema_version": 99, "records": []}')]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name):
            load_report(tmp_path / name)


def test_markdown_report():
    def record(precision, decoding, ms, acc, outcome="passed", reason=None):
        return Record(f"b.py::t[m-{precision}-{decoding}]", "m", precision, decoding, "cpu", outcome, reason,
                      metrics={"ms_per_token": ms, "footprint_mb": 100.0}, accuracy_pct={"simple": acc})

    check = thresholds.accuracy_drop("simple", "nf4", 0.5, "fp32", 0.6, 5.0).as_dict()
    records = [record("fp32", "greedy", 10.0, 60.0), record("nf4", "greedy", 20.0, 50.0, "failed", "drop"),
               record("fp32", "beam4", 30.0, 70.0), Record("b.py::t[m-int8-greedy]", "m", "int8", "greedy", "cpu",
                                                           "skipped", "int8 needs bitsandbytes")]
    records[1].checks = [check]
    text = render(records, {"versions": {"torch": "2.13"}, "device": "cpu", "cpu": "x", "cpu_count": 2},
                  {"m": {"source": {"kind": "gguf", "sha256": "abc", "note": "dequantized Q4_1"}}})
    assert "## By precision" in text and "### greedy" in text and "### beam4" in text
    assert re.search(r"\| m +\| fp32 +\|", text) and re.search(r"\| m +\| nf4 +\|", text)
    assert "simple acc (%)" in text and "dequantized Q4_1" in text
    assert "**FAIL**: simple: nf4 accuracy 50.0% vs fp32 60.0%" in text
    assert "| `t[m-int8-greedy]` | skipped | int8 needs bitsandbytes |" in text  # test ids without their file


def test_resolve_model(tmp_path):
    assert resolve_model("smollm2-135m").kind == "alias"
    (tmp_path / "config.json").write_text("{}")
    named = resolve_model(f"mine={tmp_path}")
    assert (named.name, named.kind) == ("mine", "dir")
    (tmp_path / "Model-Q4.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "Model-Q4.gguf")).name == "model-q4"
    hub = resolve_model("Org/Some-Model")
    assert (hub.name, hub.kind, hub.source) == ("some-model", "hub", "Org/Some-Model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("./nope")
