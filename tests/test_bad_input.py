"""Bad input gets a usage error, a collection error or a failure whose message names the problem, before any
evaluation, and never a Python traceback: options and ini keys, markers, model sources, data files, baselines and
the `quantbench` command."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from pytest_quantbench.cli import main
from pytest_quantbench.models import embedded_gguf_path
from pytest_quantbench.results import Record, load_report
from pytest_quantbench.tasks.generation import DatasetError
from pytest_quantbench.tasks.multiple_choice import arc_loader, load_mmlu

SPEED_TEST = """
def test_speed(quantbench):
    quantbench.measure(max_new_tokens=4)
"""
ONE_CASE = ("--qb-precision=fp32", "--qb-decoding=greedy", "--qb-repeats=1", "--qb-warmup=0", "-p", "no:cacheprovider")
RECORD = {"test": "t.py::test_speed[m-fp32-greedy]", "model": "m", "precision": "fp32", "decoding": "greedy",
          "device": "cpu", "metrics": {"ms_per_token": 12.5, "tokens_per_s": 80.0, "unstable": False,
                                       "bandwidth_source": "measured copy"}, "accuracy_pct": {"mmlu": 50.0}}


def assert_no_traceback(lines: list[str]) -> None:
    """No Python or pytest traceback, no INTERNALERROR, no pluggy frames."""
    # The warnings summary names pytest's own files (an assert-rewrite warning where the package was imported
    # before the inner session): a location, not a frame.
    lines = [line for line in lines if "Warning" not in line and not re.match(r"\s*\S+\.py:\d+$", line)]
    text = "\n".join(lines)
    for sign in ("Traceback", "INTERNALERROR", "pluggy/_", "_pytest/", "During handling of the above exception"):
        assert sign not in text, text
    frames = [line for line in lines if line.startswith("E   ") or re.match(r"\S+\.py:\d+: in \w", line)]
    assert not frames, text


def assert_usage_error(result, message: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: {message}" in result.stderr.str()
    assert_no_traceback(result.outlines + result.errlines)


@pytest.fixture
def tiny(tiny_model_dir):
    return f"--qb-model=tiny={tiny_model_dir}"


@pytest.mark.parametrize(("args", "message"), [
    (["--qb-max-new-tokens=0"], ("--qb-max-new-tokens must be at least 2 (decode ms/token is timed over the "
                                 "tokens after the first), got 0")),
    (["--qb-max-new-tokens=-3"], "--qb-max-new-tokens must be at least 2"),
    (["--qb-max-new-tokens=many"], "--qb-max-new-tokens must be an integer, got 'many'"),
    (["--qb-limit=-1"], "--qb-limit must be at least 0 (0 means all items), got -1"),
    (["--qb-repeats=0"], "--qb-repeats must be at least 1, got 0"),
    (["--qb-ppl-context=0"], "--qb-ppl-context must be at least 1, got 0"),
    (["--qb-ppl-context=64", "--qb-ppl-stride=128"], "--qb-ppl-stride 128 is longer than --qb-ppl-context 64"),
    (["--qb-max-memory-mb=-1"], "--qb-max-memory-mb must be a finite number >= 0, got '-1'"),
    (["--qb-max-ms-per-token=nan"], "--qb-max-ms-per-token must be a finite number >= 0, got 'nan'"),
    (["--qb-min-tokens-per-s=inf"], "--qb-min-tokens-per-s must be a finite number >= 0, got 'inf'"),
    (["--qb-max-accuracy-drop=150"], "--qb-max-accuracy-drop is in percentage points (0-100), got '150'"),
    (["--qb-target-cv=-0.1"], "--qb-target-cv must be a finite number >= 0, got '-0.1'"),
    (["--qb-model="], ("--qb-model is empty: give a hub id (org/name), a local model directory, a .gguf file or "
                       "an alias (smollm2-135m)")),
    (["--qb-model=smollm2-135m", "--qb-model= "], "--qb-model is empty"),
    (["--qb-model=./no-such-dir"], "model directory './no-such-dir' does not exist"),
    (["--qb-model=org/name/extra"], "model directory 'org/name/extra' does not exist (and it is no hub id"),
    (["--qb-model=no-such.gguf"], "GGUF file 'no-such.gguf' does not exist"),
    (["--qb-model=a=smollm2-135m", "--qb-model=a=org/model"], "two models share the test-id name(s) ['a']"),
    (["--qb-data-dir=no-such-data"], "--qb-data-dir 'no-such-data' is not a directory"),
    (["--qb-batch-size=0"], "--qb-batch-size must be at least 1, got 0"),
    (["--qb-batch-size=x"], "--qb-batch-size must be an integer, got 'x'"),
])
def test_bad_option_is_a_usage_error(pytester, args, message):
    pytester.makepyfile(SPEED_TEST)
    assert_usage_error(pytester.runpytest(*args), message)


def test_mistyped_compile_tuning_is_a_usage_error(pytester, monkeypatch):
    pytester.makepyfile(SPEED_TEST)
    monkeypatch.setenv("QB_COMPILE_TUNING", "yes please")
    assert_usage_error(pytester.runpytest("--qb-mode=compiled"),
                       "QB_COMPILE_TUNING='yes please' is not a setting: give auto, 1 (or on) or 0 (or off)")
    monkeypatch.setenv("QB_COMPILE_TUNING", "ON")
    assert pytester.runpytest("--qb-mode=compiled", "--collect-only", "-q").ret == 0
    monkeypatch.setenv("QB_COMPILE_FUSE", "maybe")
    assert_usage_error(pytester.runpytest("--qb-mode=compiled"),
                       "QB_COMPILE_FUSE='maybe' is not a setting: give 1 (or on) or 0 (or off)")


@pytest.mark.parametrize(("ini", "message"), [
    ("qb_max_memory_mb = -1", "--qb-max-memory-mb must be a finite number >= 0, got -1"),
    ("qb_max_new_tokens = 0", "--qb-max-new-tokens must be at least 2"),
    ("qb_model =", "--qb-model is empty"),
    ("qb_batch_size = 1,-8", "--qb-batch-size must be at least 1, got -8"),
])
def test_bad_ini_value_is_a_usage_error(pytester, ini, message):
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(SPEED_TEST)
    assert_usage_error(pytester.runpytest(), message)


@pytest.mark.parametrize(("ini", "message"), [
    ("qb_warmup = two", "tox.ini: config option 'qb_warmup' expects one of int | '', got str: 'two'"),
    ("qb_force_baseline = maybe", "tox.ini: config option 'qb_force_baseline' expects one of bool | '', got str"),
])
def test_a_typed_ini_key_names_its_type(pytester, ini, message):
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert_no_traceback(result.outlines + result.errlines)


def test_typed_ini_keys_take_native_toml_numbers_and_empty_means_default(pytester, tiny):
    pytester.makepyprojecttoml('[tool.pytest]\nqb_max_new_tokens = 4\nqb_max_time = 2.5\nqb_force_baseline = false\n'
                               'qb_decoding = "greedy"\n')
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest("--collect-only", "-q", tiny, *ONE_CASE)
    result.stdout.fnmatch_lines(["*1 test collected*"])
    pytester.makeini("[pytest]\nqb_warmup =\nqb_max_time =\n")
    result = pytester.runpytest("--collect-only", "-q", tiny, *ONE_CASE)
    result.stdout.fnmatch_lines(["*1 test collected*"])


def test_smallest_accepted_values_collect(pytester, tiny):
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest("--collect-only", "-q", tiny, "--qb-max-new-tokens=2", "--qb-limit=0",
                                "--qb-max-memory-mb=0", *ONE_CASE)
    result.stdout.fnmatch_lines(["*1 test collected*"])


def test_model_directory_without_config_and_non_gguf_file_are_usage_errors(pytester):
    pytester.makepyfile(SPEED_TEST)
    pytester.mkdir("empty-model")
    assert_usage_error(pytester.runpytest("--qb-model=./empty-model"),
                       "model directory './empty-model' has no config.json")
    (pytester.path / "weights.bin").write_bytes(b"\0" * 16)
    assert_usage_error(pytester.runpytest("--qb-model=weights.bin"),
                       "model source 'weights.bin' is a file but not a .gguf")


@pytest.mark.parametrize(("marker", "message"), [
    ("baseline='nf5'", "unknown precision 'nf5'; valid: fp32, fp16, bf16"),
    ("baseline=['fp32']", "baseline= takes one precision name, got ['fp32']"),
    ("precisions=['fp33']", "unknown precision 'fp33'"),
    ("decodings=['beam9']", "unknown decoding 'beam9'"),
    ("decodings=[3]", "decodings= takes a name or a list of names, got [3]"),
    ("modes=['jit']", "unknown mode(s) jit"),
    ("max_memory_mb=-1", "max_memory_mb must be a finite number >= 0, got -1"),
    ("max_ms_per_token=float('nan')", "max_ms_per_token must be a finite number >= 0, got nan"),
    ("min_top1_agreement=101", "min_top1_agreement is in percentage points (0-100), got 101"),
    ("drop_test='sometimes'", "unknown drop test 'sometimes'"),
    ("precision='fp32'", "unknown keyword(s) precision; valid: models, precisions, decodings, modes, baseline"),
])
def test_bad_marker_is_a_collection_error_before_any_model_loads(pytester, marker, message):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.quantbench({marker})
        def test_speed(quantbench):
            quantbench.measure(max_new_tokens=4)
    """)
    result = pytester.runpytest(*ONE_CASE)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert f"test_bad_marker_is_a_collection_error_before_any_model_loads.py::test_speed: quantbench marker: " \
           f"{message}" in result.stdout.str()
    assert_no_traceback(result.outlines + result.errlines)
    assert not (pytester.path / ".quantbench").exists()  # nothing ran: no journal, no report


def test_marker_takes_one_name_as_a_list_of_one(pytester, tiny):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quantbench(precisions="fp32", decodings="greedy")
        def test_speed(quantbench):
            pass
    """)
    result = pytester.runpytest("--collect-only", "-q", tiny, "--qb-precision=fp32,bf16", "--qb-decoding=greedy,beam2")
    result.stdout.fnmatch_lines(["*test_speed?tiny-fp32-greedy?*", "*1 test collected*"])


def write_report(path, records, **extra):
    path.write_text(json.dumps({"schema_version": 1, "environment": {}, "models": {}, "records": records, **extra}))
    return path


TEST_ID = RECORD["test"]
# (records, where the bad one is, what is wrong with it)
BAD_REPORTS = [
    (["a", "b"], "record 0", 'expected a record (a JSON object), got str "a"'),
    ([{**RECORD, "metrics": {"ms_per_token": "12.5"}}], f"record 0 ({TEST_ID})",
     "metrics['ms_per_token']: expected a number, got \"12.5\""),
    ([{**RECORD, "metrics": {"tokens_per_s": True}}], f"record 0 ({TEST_ID})",
     "metrics['tokens_per_s']: expected a number, got true"),
    ([{**RECORD, "metrics": "fast"}], f"record 0 ({TEST_ID})", "field 'metrics': expected an object, got \"fast\""),
    ([RECORD, {**RECORD, "accuracy_pct": {"mmlu": "50"}}], f"record 1 ({TEST_ID})",
     "accuracy_pct['mmlu']: expected a number (percent), got \"50\""),
    ([{k: v for k, v in RECORD.items() if k != "test"}], "record 0", "missing field(s) test"),
    ([{**RECORD, "checks": ["ok"]}], f"record 0 ({TEST_ID})", "checks[0]: expected an object, got \"ok\""),
]


@pytest.mark.parametrize(("records", "where", "problem"), BAD_REPORTS)
def test_malformed_report_names_file_record_and_field(tmp_path, records, where, problem):
    path = write_report(tmp_path / "base.json", records)
    with pytest.raises(ValueError) as error:
        load_report(path)
    assert str(error.value) == f"{path}: {where}: {problem}"
    with pytest.raises(ValueError) as error:
        Record.from_dict(records[int(where.split()[1])])
    assert str(error.value) == problem


@pytest.mark.parametrize(("records", "where", "problem"), BAD_REPORTS[:2])
def test_malformed_baseline_is_a_usage_error(pytester, records, where, problem):
    write_report(pytester.path / "base.json", records)
    pytester.makepyfile(SPEED_TEST)
    assert_usage_error(pytester.runpytest("--qb-baseline=base.json"), f"base.json: {where}: {problem}")


@pytest.mark.parametrize(("records", "where", "problem"), BAD_REPORTS)
@pytest.mark.parametrize("command", ["compare", "merge", "report"])
def test_cli_reports_malformed_records_without_a_traceback(tmp_path, capsys, command, records, where, problem):
    good, bad = write_report(tmp_path / "good.json", [RECORD]), write_report(tmp_path / "bad.json", records)
    argv = {"compare": ["compare", str(good), str(bad)], "report": ["report", str(bad)],
            "merge": ["merge", str(good), str(bad), "--out", str(tmp_path)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"quantbench {command}: {bad}: {where}: {problem}\n"


def test_merge_refuses_a_report_given_twice(tmp_path, capsys):
    report = write_report(tmp_path / "a.json", [RECORD])
    (tmp_path / "link.json").symlink_to(report)
    for twice in ([str(report), str(report)], [str(report), str(tmp_path / "link.json")]):
        assert main(["merge", *twice, "--out", str(tmp_path / "out")]) == 2
        assert "the same report given more than once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merge_drops_identical_records_and_keeps_other_runs_of_a_test(tmp_path, capsys):
    first = write_report(tmp_path / "a.json", [RECORD])
    copy = tmp_path / "copy.json"
    shutil.copy(first, copy)
    rerun = write_report(tmp_path / "b.json", [{**RECORD, "metrics": {**RECORD["metrics"], "ms_per_token": 13.0}}])
    assert main(["merge", str(first), str(copy), str(rerun), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "dropped 1 records identical to one already merged" in out
    assert "1 tests appear in more than one report with different results: all kept" in out
    merged = load_report(tmp_path / "out" / "quantbench.json")["records"]
    assert sorted(r["metrics"]["ms_per_token"] for r in merged) == [12.5, 13.0]


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    """A conversion that should fail must not leave anything in the user's cache."""
    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path / "cache"))


def first_bytes(path, count: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def small_gguf() -> bytes:
    """A whole GGUF file of 16 KB: a llama header, no tokenizer, one 64x64 tensor."""
    import tempfile

    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        writer = gguf.GGUFWriter(f"{folder}/small.gguf", "llama")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.zeros((64, 64), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(f"{folder}/small.gguf", "rb") as handle:
            return handle.read()


@pytest.mark.parametrize(("content", "message"), [
    (lambda: b"", "{path}: empty file, not a GGUF model"),
    (lambda: b"PK\x03\x04 a zip, not a model" * 40,
     "{path}: not a GGUF file (it starts with b'PK\\x03\\x04'; a GGUF file starts with b'GGUF')"),
    (lambda: first_bytes(embedded_gguf_path(), 2000), "{path}: truncated or corrupt GGUF file (2000 bytes;"),
    (lambda: small_gguf()[:-4000],  # cut in the tensor data
     "{path}: truncated or corrupt GGUF file (12544 bytes; ValueError: cannot reshape"),
    (small_gguf, "could not convert {path}: ValueError: Cannot build a tokenizer"),  # whole, but no tokenizer
])
def test_broken_gguf_fails_its_cases_with_one_message(pytester, private_cache, content, message):
    path = pytester.path / "model.gguf"
    path.write_bytes(content())
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest(f"--qb-model={path}", *ONE_CASE)
    result.assert_outcomes(failed=1)
    assert f"ModelLoadError: {message.format(path=path)}" in result.stdout.str()
    assert_no_traceback(result.outlines + result.errlines)


@pytest.mark.parametrize(("env", "why"), [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ({"HF_HUB_OFFLINE": "True"}, "HF_HUB_OFFLINE is set"),  # every value huggingface_hub takes as true
    ({"HF_HUB_OFFLINE": "on"}, "HF_HUB_OFFLINE is set"),
    ({"HF_ENDPOINT": "https://127.0.0.1:9"}, "the Hugging Face hub is unreachable"),  # nothing listens on port 9
])
def test_hub_model_offline_is_one_clear_line(pytester, monkeypatch, env, why):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest("--qb-model=quantbench-tests/not-cached", *ONE_CASE)
    result.assert_outcomes(failed=1)
    assert (f"ModelLoadError: quantbench-tests/not-cached: {why} and the model is not in the local hub cache; "
            "download it where the network is reachable (hf download quantbench-tests/not-cached) or pass a local "
            "directory (--qb-model NAME=/path/to/model)") in result.stdout.str()
    assert "Retrying" not in result.stdout.str()
    assert_no_traceback(result.outlines + result.errlines)


def test_hub_model_offline_loads_from_the_local_hub_cache(pytester, monkeypatch, tiny_model_dir):
    revision = "0" * 40
    repo = pytester.path / "hub" / "models--quantbench-tests--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(pytester.path / "hub"))  # read when huggingface_hub is imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(SPEED_TEST)
    result = pytester.runpytest_subprocess("--qb-model=quantbench-tests/tiny", *ONE_CASE)
    result.assert_outcomes(passed=1)
    record = load_report(pytester.path / ".quantbench" / "quantbench.json")["records"][0]
    assert record["model_info"]["source"] == {"kind": "hub", "id": "quantbench-tests/tiny", "revision": revision}


def test_hub_revision_is_pinned_with_at(pytester, monkeypatch, tiny_model_dir):
    """`org/name@REV` loads that revision (a commit, or a branch the cache's refs resolve), records the commit and
    what was asked, and keeps the test id of `org/name`; a revision not in the cache is one clear line."""
    main, pinned = "0" * 40, "1" * 40
    repo = pytester.path / "hub" / "models--quantbench-tests--tiny"
    for revision in (main, pinned):
        shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)
    (repo / "refs" / "v1").write_text(pinned)
    monkeypatch.setenv("HF_HUB_CACHE", str(pytester.path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(SPEED_TEST)
    for asked, commit in ((pinned, pinned), ("v1", pinned), ("main", main)):
        out = pytester.path / asked
        result = pytester.runpytest_subprocess(f"--qb-model=quantbench-tests/tiny@{asked}", *ONE_CASE,
                                               f"--qb-report-dir={out}")
        result.assert_outcomes(passed=1)
        record = load_report(out / "quantbench.json")["records"][0]
        assert record["model_info"]["source"] == {"kind": "hub", "id": "quantbench-tests/tiny", "revision": commit,
                                                  "requested_revision": asked}
        assert record["test"].endswith("[tiny-fp32-greedy]")
    missing = pytester.runpytest("--qb-model=quantbench-tests/tiny@v2", *ONE_CASE)
    missing.assert_outcomes(failed=1)
    assert ("quantbench-tests/tiny@v2: HF_HUB_OFFLINE is set and the model at revision v2 is not in the local hub "
            "cache; download it where the network is reachable (hf download quantbench-tests/tiny --revision v2)"
            ) in missing.stdout.str()
    bad = pytester.runpytest("--qb-model=quantbench-tests/tiny@", *ONE_CASE)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


GOOD_MMLU = '{"subject": "anatomy", "question": "q?", "choices": ["a", "b", "c", "d"], "answer": 1}\n'


def test_malformed_data_row_fails_with_file_and_line_only(pytester, tiny):
    data = pytester.mkdir("data")
    (data / "mmlu").mkdir()
    (data / "mmlu" / "mmlu_test.jsonl").write_text(GOOD_MMLU + GOOD_MMLU.replace('"c", "d"', '"c"'))
    pytester.makepyfile("def test_mmlu(quantbench):\n    quantbench.evaluate('mmlu')\n")
    result = pytester.runpytest(tiny, f"--qb-data-dir={data}", *ONE_CASE)
    result.assert_outcomes(failed=1)
    assert (f"DatasetError: {data}/mmlu/mmlu_test.jsonl:2: expected 4 string choices ('choices' list or columns "
            "A-D)") in result.stdout.str()
    assert_no_traceback(result.outlines + result.errlines)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("mmlu/mmlu_test.jsonl", b"", "mmlu/mmlu_test.jsonl: no rows"),
    ("mmlu/mmlu_test.jsonl", GOOD_MMLU.encode() + b'{"question": "caf\xe9"}\n',
     "mmlu/mmlu_test.jsonl:2: not UTF-8 text (invalid continuation byte at byte 18 of the line)"),
    ("mmlu/mmlu_test.jsonl", GOOD_MMLU.encode() + b"[1, 2]\n",
     "mmlu/mmlu_test.jsonl:2: expected a JSON object, got list"),
    ("mmlu/mmlu_test.jsonl", GOOD_MMLU.replace("1}", '"E"}').encode(),
     "mmlu/mmlu_test.jsonl:1: answer 'E' is not one of A-D or 0-3"),
    ("mmlu/mmlu_test.parquet", b"PAR1 not really", "mmlu/mmlu_test.parquet: not a readable parquet file"),
    ("mmlu/data/test/anatomy_test.csv", b"q,a,b,c,d,A\nq2,a,b\n",
     "mmlu/data/test/anatomy_test.csv:2: expected 6 fields (question, A, B, C, D, answer), got 3"),
    ("mmlu/data/test/anatomy_test.csv", b"", "mmlu/data/test: every *_test.csv file is empty"),
])
def test_malformed_mmlu_files_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError) as error:
        load_mmlu(tmp_path, "test")
    assert str(error.value).startswith(f"{tmp_path}/{message}")


def test_mmlu_rows_with_a_byte_order_mark_and_windows_line_ends_load(tmp_path):
    (tmp_path / "mmlu").mkdir()
    text = "\ufeff" + (GOOD_MMLU + GOOD_MMLU).replace("\n", "\r\n")
    (tmp_path / "mmlu" / "mmlu_test.jsonl").write_bytes(text.encode())
    assert len(load_mmlu(tmp_path, "test")) == 2


def test_arc_labels_must_be_a_list(tmp_path):
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "ARC-Easy-Test.jsonl").write_text(
        '{"id": "1", "question": "q", "choices": {"text": ["a", "b"], "label": "AB"}, "answerKey": "A"}\n')
    with pytest.raises(DatasetError, match="ARC-Easy-Test.jsonl:1: expected choices with matching 'text' and 'label'"):
        arc_loader("ARC-Easy")(tmp_path, "test")


def test_hub_reachability_goes_through_the_proxy(monkeypatch):
    """The check asks the endpoint over HTTP as the hub clients do, so a proxy (HTTP(S)_PROXY) is honoured: a host
    that does not resolve here is reachable through a proxy that answers, and not without it."""
    import http.server
    import threading

    from pytest_quantbench.hub import hub_reachable

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200 if self.path.startswith("http://hub.invalid") else 400)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        assert not hub_reachable(timeout_s=2)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_port}")
        assert hub_reachable(timeout_s=2)
    finally:
        server.shutdown()
