"""Accuracy tasks. A task sees the model only through a small interface (`TaskModel`), so task logic is tested with a
scripted fake model and real-model tests stay few.

Adding a task is one `register(...)` of an object with `name`, `version` and `evaluate(model, decoding, limit,
max_new_tokens) -> TaskResult` (or an entry point in the group `pytest_quantbench.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class TaskModel(Protocol):
    def generate(self, prompts: list[str], decoding, max_new_tokens: int) -> list[list[str]]:
        """One list of responses per prompt (one response, or `decoding.num_responses`)."""


@dataclass
class TaskResult:
    task: str
    accuracy: float  # fraction in [0, 1]
    n: int
    correct: list[bool] = field(default_factory=list)  # per item, in item order (paired comparisons need it)
    metrics: dict[str, float] = field(default_factory=dict)  # extra task metrics, e.g. mean_response_accuracy
    by_category: dict[str, float] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # a few prompts and responses for the report


class Task(Protocol):
    name: str
    version: str

    def evaluate(self, model: TaskModel, decoding, limit: int | None, max_new_tokens: int) -> TaskResult: ...


REGISTRY: dict[str, Task] = {}
_entry_points_loaded = False


def register(task: Task) -> Task:
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
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


from . import generation

__all__ = ["REGISTRY", "Task", "TaskModel", "TaskResult", "generation", "get_task", "register"]
