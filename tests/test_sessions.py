"""The plugin through real inner pytest sessions (pytester), on a tiny random-weight Llama loaded like any model."""

from __future__ import annotations

import json
import re

import pytest

SPEED_TEST = """
def test_speed(quantbench):
    quantbench.measure(max_new_tokens=8)
"""
FAST = ("--qb-repeats=1", "--qb-warmup=0", "-p", "no:cacheprovider")


@pytest.fixture
def tiny(tiny_model_dir):
    return f"--qb-model=tiny={tiny_model_dir}"


def report(pytester, name="quantbench.json"):
    return json.loads((pytester.path / ".quantbench" / name).read_text())


def test_help_shows_quantbench_group(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*quantbench: LLM quantization benchmarks*", "*--qb-model*", "*--qb-precision*",
                                 "*--qb-decoding*", "*--qb-report-dir*", "*qb_model (string)*",
                                 "*qb_warmup (int*", "*qb_max_kl (float*", "*qb_trust_remote_code (bool*"])


def test_ids_and_keyword_selection(pytester, tiny):
    pytester.makepyfile(SPEED_TEST)
    args = (tiny, "--qb-precision=fp32,bf16,nf4", "--qb-decoding=greedy,beam2", *FAST)
    collected = pytester.runpytest("--collect-only", "-q", *args)
    for precision in ("fp32", "bf16", "nf4"):
        for decoding in ("greedy", "beam2"):
            collected.stdout.fnmatch_lines([f"*test_speed?tiny-{precision}-{decoding}?*"])
    collected.stdout.fnmatch_lines(["*6 tests collected*"])
    only_nf4 = pytester.runpytest("-k", "nf4", "-v", *args)
    only_nf4.assert_outcomes(passed=2)
    only_nf4.stdout.no_fnmatch_line("*fp32-greedy*PASSED*")
    one = pytester.runpytest("-k", "nf4 and greedy", "-v", *args)
    one.assert_outcomes(passed=1)
    one.stdout.fnmatch_lines(["*test_speed?tiny-nf4-greedy? PASSED*"])


def test_ini_keys_and_command_line_override(pytester, tiny_model_dir):
    pytester.makeini(f"[pytest]\nqb_model = tiny={tiny_model_dir}\nqb_precision = fp32,bf16\nqb_decoding = greedy\n")
    pytester.makepyfile(SPEED_TEST)
    from_ini = pytester.runpytest("--collect-only", "-q", *FAST)
    from_ini.stdout.fnmatch_lines(["*tiny-fp32-greedy*", "*tiny-bf16-greedy*", "*2 tests collected*"])
    overridden = pytester.runpytest("--collect-only", "-q", "--qb-precision=bf16", *FAST)
    overridden.stdout.fnmatch_lines(["*tiny-bf16-greedy*", "*1 test collected*"])


def test_marker_narrows_matrix(pytester, tiny):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quantbench(decodings=["greedy"], precisions=["fp32"])
        def test_narrow(quantbench):
            pass

        def test_full(quantbench):
            pass
    """)
    result = pytester.runpytest("--collect-only", "-q", tiny, "--qb-precision=fp32,bf16", "--qb-decoding=greedy,beam2")
    result.stdout.fnmatch_lines(["*test_narrow?tiny-fp32-greedy?*", "*5 tests collected*"])


@pytest.mark.parametrize(("option", "message"), [
    ("--qb-precision=fp33", "unknown precision 'fp33'; valid: fp32, fp16, bf16, int8*, nf4*"),
    ("--qb-decoding=beam9", "unknown decoding 'beam9'; valid: greedy, sample, beam2*"),
    ("--qb-precision=int8@fp16", "precision 'int8' takes no @ argument (@fp16)*"),
    ("--qb-device=tpu", "unknown device 'tpu'; valid: auto, cpu, cuda*"),
])
def test_bad_names_are_usage_errors(pytester, tiny, option, message):
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest(tiny, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def test_precision_variants_in_ids_are_k_safe(pytester, tiny):
    """`@` and `+` are not characters `-k` parses: the ids spell a precision's argument and flags with `-`."""
    pytester.makepyfile(SPEED_TEST)
    options = (tiny, "--qb-precision=nf4@fp16+dq,fp4+dq", "--qb-decoding=greedy")
    result = pytester.runpytest("--collect-only", "-q", *options)
    result.stdout.fnmatch_lines(["*tiny-nf4-fp16-dq-greedy*", "*tiny-fp4-dq-greedy*"])
    assert "@" not in result.stdout.str() and "+" not in result.stdout.str()
    picked = pytester.runpytest("--collect-only", "-q", *options, "-k", "nf4-fp16-dq")
    picked.stdout.fnmatch_lines(["*tiny-nf4-fp16-dq-greedy*", "1/2 tests collected (1 deselected)*"])


def test_markers_help_names_every_marker_keyword(pytester):
    result = pytester.runpytest("--markers")
    line = next(line for line in result.stdout.lines if line.startswith("@pytest.mark.quantbench("))
    for keyword in ("models=None", "precisions=None", "decodings=None", "modes=None", "baseline=None",
                    "max_accuracy_drop=None", "drop_test=None"):
        assert keyword in line


def test_cuda_on_a_cpu_machine_skips_with_reason(pytester, tiny):
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest(tiny, "--qb-device=cuda", "--qb-precision=bf16,nf4", "--qb-decoding=greedy", "-rs", *FAST)
    result.assert_outcomes(skipped=2)
    # the skip points at the test, not at the plugin's line that decided it
    skip_line = "SKIPPED [[]2[]] test_cuda_on_a_cpu_machine_skips_with_reason.py:*--qb-device cuda but no CUDA GPU*"
    result.stdout.fnmatch_lines([skip_line])
    records = report(pytester)["records"]
    assert [r["outcome"] for r in records] == ["skipped", "skipped"]
    assert "CUDA" in records[0]["reason"]


def test_broken_model_fails_only_its_own_cases(pytester, tiny):
    broken = pytester.mkdir("broken")
    (broken / "config.json").write_text("{not json")
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest(tiny, f"--qb-model=broken={broken}", "--qb-precision=fp32,bf16", "--qb-decoding=greedy",
                                *FAST)
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*ModelLoadError: could not load broken*in fp32 on cpu*"])
    records = report(pytester)["records"]
    assert sorted((r["model"], r["outcome"]) for r in records) == [
        ("broken", "failed"), ("broken", "failed"), ("tiny", "passed"), ("tiny", "passed")]
    assert all(r["metrics"]["tokens_per_s"] > 0 for r in records if r["model"] == "tiny")


def test_speed_thresholds_fail_with_numbers(pytester, tiny):
    pytester.makepyfile("""
        import pytest

        def test_speed(quantbench):
            quantbench.measure(max_new_tokens=4)

        @pytest.mark.quantbench(max_ms_per_token=1e-6)
        def test_marker(quantbench):
            quantbench.measure(max_new_tokens=4)

        @pytest.mark.quantbench(min_tokens_per_s=1e-6, max_memory_mb=1e9, max_footprint_mb=1e9)
        def test_generous(quantbench):
            quantbench.measure(max_new_tokens=4)
    """)
    result = pytester.runpytest(tiny, "--qb-precision=fp32", "--qb-decoding=greedy", "--qb-min-tokens-per-s=1e9", *FAST)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*threshold failed: tokens_per_s * tokens/s < minimum 1000000000.0 tokens/s*",
        "*threshold failed: ms_per_token * ms > limit 0.0 ms*",
    ])
    checks = {r["test"].split("::")[1]: r["checks"] for r in report(pytester)["records"]}
    assert {c["name"] for c in checks["test_generous[tiny-fp32-greedy]"]} == {
        "tokens_per_s", "peak_mem_mb", "footprint_mb"}
    assert all(c["passed"] for c in checks["test_generous[tiny-fp32-greedy]"])


ACCURACY_CONFTEST = """
from pytest_quantbench import Task, TaskResult, register_task


class ByPrecision(Task):
    name, version, token_cap = "scripted", "1", 4
    scores = {"fp32": 0.80, "nf4": 0.71, "bf16": 0.79}

    def evaluate(self, model, decoding, limit, max_new_tokens):
        model.generate(["Hello"], decoding, max_new_tokens)  # the real model runs; the score is scripted
        score = self.scores[model.precision.name]
        return TaskResult(self.name, score, 100)


register_task(ByPrecision())
"""


@pytest.mark.parametrize(("allowed", "outcomes"), [(5.0, {"passed": 2, "failed": 1}), (10.0, {"passed": 3})])
def test_accuracy_drop_threshold(pytester, tiny, allowed, outcomes):
    pytester.makeconftest(ACCURACY_CONFTEST)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.quantbench(max_accuracy_drop={allowed})
        def test_accuracy(quantbench):
            quantbench.evaluate("scripted")
    """)
    result = pytester.runpytest(tiny, "--qb-precision=fp32,bf16,nf4", "--qb-decoding=greedy", *FAST)
    result.assert_outcomes(**outcomes)
    if outcomes.get("failed"):
        result.stdout.fnmatch_lines([
            "*threshold failed: scripted: nf4 accuracy 71.0% vs fp32 80.0%: drop 9.0 pt > allowed 5.0 pt*"])
    checks = [c for r in report(pytester)["records"] for c in r["checks"]]
    assert {(c["name"], round(c["measured"], 1)) for c in checks} == {("accuracy_drop[scripted]", 1.0),
                                                                       ("accuracy_drop[scripted]", 9.0)}


def test_accuracy_baseline_computed_when_not_selected(pytester, tiny):
    pytester.makeconftest(ACCURACY_CONFTEST)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quantbench(max_accuracy_drop=5.0)
        def test_accuracy(quantbench):
            quantbench.evaluate("scripted")
    """)
    result = pytester.runpytest(tiny, "--qb-precision=nf4", "--qb-decoding=greedy", *FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*nf4 accuracy 71.0% vs fp32 80.0%: drop 9.0 pt > allowed 5.0 pt*"])


def test_report_files(pytester, tiny):
    pytester.makepyfile(SPEED_TEST)
    # Three repeats and a warm-up: every metric must come out positive even on a busy machine.
    result = pytester.runpytest(tiny, "--qb-precision=fp32,nf4", "--qb-decoding=greedy,beam2", "--qb-repeats=3",
                                "--qb-warmup=1", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*= quantbench =*", "*tiny*fp32*", "*tiny*nf4*", "report: .quantbench/quantbench.json"])
    data = report(pytester)
    assert data["schema_version"] == 1
    env = data["environment"]
    assert env["device"] == "cpu" and env["versions"]["torch"] and env["versions"]["transformers"]
    assert "--qb-precision=fp32,nf4" in env["command"]
    assert len(data["records"]) == 4
    for record in data["records"]:
        assert record["outcome"] == "passed" and record["device"] == "cpu" and record["model"] == "tiny"
        for key in ("load_s", "footprint_mb", "ttft_ms", "ms_per_token", "tokens_per_s", "latency_ms", "peak_mem_mb"):
            assert record["metrics"][key] > 0, key
    assert {(r["precision"], r["decoding"]) for r in data["records"]} == {
        ("fp32", "greedy"), ("fp32", "beam2"), ("nf4", "greedy"), ("nf4", "beam2")}
    assert data["models"]["tiny"]["source"]["kind"] == "dir"
    markdown = (pytester.path / ".quantbench" / "quantbench.md").read_text()
    assert "## By precision" in markdown and "### greedy" in markdown and "### beam2" in markdown
    assert re.search(r"\| tiny +\| fp32 ", markdown) and re.search(r"\| tiny +\| nf4 ", markdown)
    journal = (pytester.path / ".quantbench" / "quantbench.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 4 + 1 and json.loads(journal[0])["environment"]["command"] == env["command"]
    assert json.loads(journal[-1]) == {"session_end": {"exitstatus": 0, "records": 4}}


def test_tests_of_one_precision_run_together_baseline_first(pytester, tiny):
    pytester.makepyfile("""
        def test_a(quantbench):
            quantbench.model

        def test_b(quantbench):
            quantbench.model
    """)
    result = pytester.runpytest(tiny, "--qb-precision=nf4,fp32", "--qb-decoding=greedy", "-v", *FAST)
    result.assert_outcomes(passed=4)
    order = [line.split("::")[1].split(" ")[0] for line in result.stdout.lines if " PASSED" in line]
    assert order == ["test_a[tiny-fp32-greedy]", "test_b[tiny-fp32-greedy]",
                     "test_a[tiny-nf4-greedy]", "test_b[tiny-nf4-greedy]"]


def test_xdist_one_report_and_one_worker_per_precision(pytester, tiny):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    pytester.makepyfile(SPEED_TEST + "\n\ndef test_other(quantbench):\n    quantbench.measure(max_new_tokens=4)\n")
    # nf4@fp32: its id says nf4-fp32, and the scheduler's groups must read it so
    result = pytester.runpytest_subprocess("-n", "2", tiny, "--qb-precision=fp32,nf4@fp32",
                                           "--qb-decoding=greedy,beam2", *FAST)
    result.assert_outcomes(passed=8)
    records = report(pytester)["records"]
    assert len(records) == 8
    workers = {}
    for record in records:
        assert record["worker"] in ("gw0", "gw1")
        workers.setdefault(record["precision"], set()).add(record["worker"])
    assert all(len(w) == 1 for w in workers.values()), workers


def test_junit_xml_carries_metrics(pytester, tiny):
    pytester.makepyfile(SPEED_TEST)
    pytester.runpytest(tiny, "--qb-precision=fp32", "--qb-decoding=greedy", "--junitxml=out.xml", *FAST)
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="qb_tokens_per_s"' in xml and 'name="qb_ms_per_token"' in xml
    assert 'value="None"' not in xml and 'value="True"' not in xml and 'value="False"' not in xml


def test_shards_partition_the_matrix_by_model_and_precision(pytester, tiny):
    """`--qb-shard 1/2` and `2/2` collect disjoint parts whose union is the whole session; a (model, precision)
    lies in one shard only, so it loads on one CI job."""
    pytester.makepyfile(SPEED_TEST + "\n\ndef test_plain():\n    pass\n")
    options = (tiny, "--qb-precision=fp32,bf16,int8,nf4@fp32", "--qb-decoding=greedy,beam2")

    def collected(*extra: str) -> list[str]:
        result = pytester.runpytest("--collect-only", "-q", *options, *extra)
        assert result.ret == 0
        return [line for line in result.stdout.lines if "::" in line]

    everything = collected()
    first, second = collected("--qb-shard=1/2"), collected("--qb-shard", "2/2")
    assert len(everything) == 9 and first and second
    assert sorted(first + second) == sorted(everything) and not set(first) & set(second)
    groups = lambda ids: {i.split("[")[1].rsplit("-", 1)[0] for i in ids if "[" in i}
    assert not groups(first) & groups(second) and len(groups(first) | groups(second)) == 4
    assert collected("--qb-shard=1/1") == everything


@pytest.mark.parametrize("value", ["3/2", "0/2", "1", "a/b", "1/0"])
def test_bad_shard_is_a_usage_error(pytester, tiny, value):
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest(tiny, f"--qb-shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qb-shard*expected K/N with 1 <= K <= N*"])


def test_torch_jit_deprecation_noise_is_filtered(pytester):
    """torch warns once per TorchScript method a library it imports defines: not the user's concern."""
    pytester.makepyfile("def test_imports():\n    import bitsandbytes, transformers  # noqa: F401\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "script_method" not in result.stdout.str()
    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:quantbench")
    assert "script_method" in plain.stdout.str()  # what the filter hides is there without the plugin


def test_pytest_benchmark_json_covers_measured_cases(pytester, tiny, monkeypatch):
    """With --benchmark-json, each measured case is also a pytest-benchmark entry: its own rounds, timed through
    the public pedantic API, named by the case; without it, no extra generations run."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # else pytest-benchmark sees this suite's -n worker
    pytester.makepyfile(SPEED_TEST + "\n\ndef test_own(quantbench, benchmark):\n    benchmark(sum, [1, 2])\n"
                        "    quantbench.measure(max_new_tokens=4)\n")
    result = pytester.runpytest(tiny, "--qb-precision=fp32", "--qb-decoding=greedy", "--benchmark-json=bench.json",
                                "--qb-repeats=2", "--qb-warmup=0", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    entries = {b["name"]: b for b in json.loads((pytester.path / "bench.json").read_text())["benchmarks"]}
    measured = entries["test_speed[tiny-fp32-greedy]"]
    assert measured["stats"]["rounds"] == report(pytester)["records"][0]["metrics"]["repeats"]
    assert measured["extra_info"] == {"model": "tiny", "precision": "fp32", "decoding": "greedy"}
    assert entries["test_own[tiny-fp32-greedy]"]["stats"]["rounds"] > 2  # the test's own timing of sum() kept


def test_the_shipped_benchmarks_run_against_the_fixture_api(pytester, tiny):
    """The default suite's files, as users run them (eager mode; the GPU-only timer check skips on the CPU)."""
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "benchmarks").glob("test_*.py")):
        # renamed: this suite has its own test_fidelity module, and an inner session runs in this process
        pytester.makepyfile(**{f"test_shipped_{path.stem.removeprefix('test_')}": path.read_text()})
    result = pytester.runpytest(tiny, "--qb-precision=fp32,bf16", "--qb-decoding=greedy", "--qb-max-new-tokens=4",
                                "-k", "not (fidelity and bf16)", *FAST)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    tests = {r["test"].split("::")[1].split("[")[0] for r in report(pytester)["records"] if r["outcome"] == "passed"}
    assert {"test_speed", "test_memory", "test_fidelity", "test_accuracy"} <= tests


CUSTOM_CONFIG = """
from transformers import LlamaConfig


class CustomLlamaConfig(LlamaConfig):
    model_type = "custom-llama"
"""
CUSTOM_MODELING = """
from transformers import LlamaForCausalLM

from .configuration_custom import CustomLlamaConfig


class CustomLlamaForCausalLM(LlamaForCausalLM):
    config_class = CustomLlamaConfig
"""


def test_a_model_with_its_own_code_loads_only_when_trusted(pytester, tiny_model_dir, tmp_path):
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, custom)
    (custom / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (custom / "modeling_custom.py").write_text(CUSTOM_MODELING)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="custom-llama", architectures=["CustomLlamaForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomLlamaConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomLlamaForCausalLM"})
    (custom / "config.json").write_text(json.dumps(config))
    pytester.makepyfile(SPEED_TEST)
    args = (f"--qb-model=custom={custom}", "--qb-precision=fp32", "--qb-decoding=greedy", *FAST)
    refused = pytester.runpytest(*args)
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(["*pass --qb-trust-remote-code if you trust it*"])
    trusted = pytester.runpytest(*args, "--qb-trust-remote-code")
    trusted.assert_outcomes(passed=1)
