"""Accuracy tasks. A task sees the model only through a small interface (`TaskModel`), so task logic is tested with a
scripted fake model and real-model tests stay few.

Adding a task: subclass `Task` (a dataclass works), declare what it needs, write `evaluate`, and `register(...)` an
instance in a module of this package (or name it in the entry-point group `pytest_quantbench.tasks`). A task whose
data cannot be found raises `DataUnavailable`, and the test is skipped with its message; a malformed row raises
`DatasetError` naming its file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Protocol


class TaskModel(Protocol):
    def generate(self, prompts: list[str], decoding, max_new_tokens: int) -> list[list[str]]:
        """One list of responses per prompt (one response, or `decoding.num_responses`)."""

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Per (context, continuation): log p(continuation | context) and whether greedy decoding would produce it."""

    def loglikelihood_rolling(self, texts: list[str], context_length: int | None = None,
                              stride: int | None = None) -> list[tuple[float, int]]:
        """Per text: log p(text) and the number of tokens scored (every token once, in windows)."""

    def complete(self, texts: list[str], decoding, max_new_tokens: int, stop: list[str] | None = None) -> list[list[str]]:
        """Continuations of raw texts (no chat template), each cut before the first stop string."""

    def format_prompt(self, text: str) -> str:
        """A user message in the model's chat template; the text itself when the model has none."""


@dataclass
class TaskResult:
    task: str
    accuracy: float | None  # fraction in [0, 1]; None for a task without one (perplexity)
    n: int
    correct: list[bool] = field(default_factory=list)  # per item, in item order (paired comparisons need it)
    metrics: dict[str, float] = field(default_factory=dict)  # extra task metrics, e.g. mean_response_accuracy
    by_category: dict[str, float] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # a few prompts and responses for the report
    main_metric: str = "accuracy"  # what the task is judged by; a key of `metrics` when accuracy is None
    scores: list[float] = field(default_factory=list)  # per item in [0, 1] where not just right or wrong (pass@1)
    details: dict = field(default_factory=dict)  # other facts for the record's task details (the sandbox that ran)


class DataUnavailable(Exception):
    """A task's data is neither in --qb-data-dir nor reachable on the hub; the message says how to provide it."""


class DatasetError(ValueError):
    """A dataset file has a malformed row; the message names the file and line."""


class Task:
    """What a task declares; the fixture and the session read these attributes and nothing else.

    `families`: the model families it runs on (empty: all); the fixture skips the others, saying why.
    `needs_real_weights`: skipped on synthetic (random-weight) models, where accuracy means nothing.
    `options`: the session settings `evaluate` takes as keywords, from data_dir, context_length, stride, sandbox.
    `token_cap`: the most new tokens an answer needs; --qb-max-new-tokens caps it further.
    `token_budget`: a budget of the task's own that --qb-max-new-tokens does not cap (HumanEval's programs).
    """

    name: str
    version: str = "1"
    families: tuple[str, ...] = ()
    needs_real_weights: bool = True
    options: ClassVar[tuple[str, ...]] = ()
    token_cap: int | None = None
    token_budget: int | None = None

    def new_token_budget(self, session_cap: int) -> int:
        """How many new tokens a response may have under --qb-max-new-tokens `session_cap`."""
        if self.token_budget:
            return self.token_budget
        return min(session_cap, self.token_cap or session_cap)

    def evaluate(self, model: TaskModel, decoding, limit: int | None, max_new_tokens: int, **options) -> TaskResult:
        raise NotImplementedError

    def with_fewshot(self, k: int) -> Task | None:
        """This task with `k` few-shot examples (looked up as `<name>_<k>shot`); None where it has no such form."""
        return None


REGISTRY: dict[str, Task] = {}
_entry_points_loaded = False


def register(task: Task) -> Task:
    if not isinstance(task, Task):
        raise TypeError(f"{task!r} is not a pytest_quantbench.Task: subclass Task to declare what the task needs")
    REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """Look a task up by name; ValueError listing the valid names if unknown."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        from importlib.metadata import entry_points

        for entry in entry_points(group="pytest_quantbench.tasks"):
            register(entry.load())
    shots = re.fullmatch(r"(.+)_(\d+)shot", name)  # mmlu_5shot: a registered task with k few-shot examples
    if name not in REGISTRY and shots and shots.group(1) in REGISTRY:
        variant = REGISTRY[shots.group(1)].with_fewshot(int(shots.group(2)))
        if variant is not None:
            return variant
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


from . import code, generation

__all__ = ["REGISTRY", "DataUnavailable", "DatasetError", "Task", "TaskModel", "TaskResult", "code", "generation", "get_task", "register"]
from . import multiple_choice, perplexity  # noqa: F401, I001  (register mmlu, arc_easy, arc_challenge; wikitext2)
from . import images  # noqa: F401  (the built-in image suite, for image-text models)
