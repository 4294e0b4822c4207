"""The `quantbench` command's own views: its version and the registries, with what can run here."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from pytest_quantbench.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"quantbench {version('pytest-quantbench')}"


def test_list_precisions_says_what_runs_on_this_device_and_why_not(capsys):
    assert main(["list", "precisions", "--device", "cpu"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "nf4[@fp32|@fp16|@bf16][+dq][+vision]" in rows
    assert "bitsandbytes" in rows["nf4[@fp32|@fp16|@bf16][+dq][+vision]"]
    assert " yes " in rows["fp32"]
    assert "no: fp8 needs a CUDA GPU; device is cpu" in rows["fp8[@fp32|@fp16|@bf16]"]


@pytest.mark.parametrize("what, expected", [("decodings", ["greedy", "sample", "beam5"]),
                                            ("tasks", ["simple", "mmlu", "wikitext2", "humaneval"]),
                                            ("presets", ["qwen2.5-7b", "paligemma-3b"]),
                                            ("models", ["smollm2-135m"])])
def test_list_registries(capsys, what, expected):
    assert main(["list", what]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert set(expected) <= set(names)


def test_list_unknown_registry_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["list", "kernels"])
    assert done.value.code == 2
    assert "invalid choice: 'kernels'" in capsys.readouterr().err


def test_report_reads_a_journal_by_its_suffix(tmp_path, capsys):
    """`quantbench report x.jsonl` rebuilds from the journal without --from-journal (it was 'Extra data: line 2')."""
    import json

    record = {"test": "t.py::test_speed[m-fp32-greedy]", "model": "m", "precision": "fp32", "decoding": "greedy",
              "device": "cpu", "metrics": {"ms_per_token": 12.5, "tokens_per_s": 80.0}}
    journal = tmp_path / "quantbench.jsonl"
    journal.write_text("\n".join(json.dumps(dict(record, test=f"t.py::test_{n}[m-fp32-greedy]")) for n in "ab") + "\n")
    assert main(["report", str(journal), "--out", str(tmp_path / "out")]) == 0
    rebuilt = json.loads((tmp_path / "out" / "quantbench.json").read_text())
    assert [r["test"] for r in rebuilt["records"]] == ["t.py::test_a[m-fp32-greedy]", "t.py::test_b[m-fp32-greedy]"]


def test_merge_of_a_cpu_and_a_gpu_report_shows_both_and_writes_every_file(tmp_path, capsys):
    """The same model and precision measured on two machines stay two rows in every table (they were keyed without
    the device, so the CPU's row hid the H100's); merge writes the CSV and plots a session writes."""
    import json

    from pytest_quantbench.results import Record, report_dict

    def report(name: str, device: str, device_name: str, ms: float):
        records = [Record(f"b.py::test_speed[m-{p}-greedy]", "m", p, "greedy", device, device_name=device_name,
                          metrics={"ms_per_token": ms, "tokens_per_s": 1000 / ms, "peak_mem_mb": 100.0},
                          accuracy_pct={"simple": 50.0})
                   for p in ("fp32", "nf4")]
        path = tmp_path / name
        path.write_text(json.dumps(report_dict(records, {"device": device}, {})))
        return str(path)

    cpu, gpu = report("cpu.json", "cpu", "AMD EPYC 9B14", 55.0), report("gpu.json", "cuda", "NVIDIA H100 80GB HBM3", 9.0)
    assert main(["merge", cpu, gpu, "--out", str(tmp_path / "merged")]) == 0
    markdown = (tmp_path / "merged" / "quantbench.md").read_text()
    by_precision = markdown.split("## By precision")[1].split("##")[0]
    for machine, ms in (("AMD EPYC 9B14", "55.0"), ("NVIDIA H100 80GB HBM3", "9.0")):
        rows = [[cell.strip() for cell in line.split("|")] for line in by_precision.splitlines()]
        assert any(machine in row and "nf4" in row and ms in row for row in rows)
    csv = (tmp_path / "merged" / "quantbench.csv").read_text().splitlines()
    assert len(csv) == 5 and csv[0].startswith("machine,")
    pytest.importorskip("matplotlib")
    assert any((tmp_path / "merged" / "plots").glob("*.png"))


def test_compare_names_tests_in_one_run_only_and_speaks_json(tmp_path, capsys):
    import json

    from pytest_quantbench.results import Record, report_dict

    def report(name: str, tests: dict[str, float]) -> str:
        records = [Record(f"b.py::{t}[m-nf4-greedy]", "m", "nf4", "greedy", "cpu", metrics={"ms_per_token": ms},
                          accuracy_pct={"simple": 50.0}) for t, ms in tests.items()]
        (tmp_path / name).write_text(json.dumps(report_dict(records, {"device": "cpu"}, {})))
        return str(tmp_path / name)

    base = report("base.json", {"test_a": 10.0, "test_old": 10.0})
    new = report("new.json", {"test_a": 40.0, "test_new": 10.0})
    assert main(["compare", base, new, "--fail-on", "ms_per_token:5%,accuracy:1pt"]) == 1
    out = capsys.readouterr().out
    assert "| `b.py::test_a[m-nf4-greedy]` | ms_per_token | 10.00 ms | 40.00 ms | **REGRESSION**" in out
    assert "| accuracy[simple] | 50.00% | 50.00% | ok" in out
    assert "1 tests only in the baseline: b.py::test_old[m-nf4-greedy]" in out
    assert "1 tests only in the new run: b.py::test_new[m-nf4-greedy]" in out
    assert main(["compare", base, new, "--fail-on", "ms_per_token:5%", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["regressions"] == 1 and data["only_in_new"] == ["b.py::test_new[m-nf4-greedy]"]
    assert data["comparisons"][0] | {"message": ""} == {
        "test": "b.py::test_a[m-nf4-greedy]", "metric": "ms_per_token", "unit": "ms", "baseline": 10.0, "new": 40.0,
        "regression": True, "message": ""}
