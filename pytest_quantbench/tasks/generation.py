"""Built-in generation suites: short prompts with a scoring rule per item (JSONL in pytest_quantbench/data).

Scoring rules:
  contains  the answer (or an alias) appears in the response as whole words, case-insensitive
  numeric   the first number in the response equals the answer
  label     the first of the item's labels mentioned in the response equals the answer
With several responses per prompt (sampling) the item's prediction is the majority vote of the responses' predictions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from . import DatasetError, Task, TaskResult, register
from .sources import read_jsonl, stratified

RULES = ("contains", "numeric", "label")
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _normalize(text: str) -> str:
    """Lower case, punctuation to spaces; a dot survives only inside a number (2.5)."""
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text.lower())
    return " ".join(re.sub(r"[^a-z0-9.]+", " ", text).split())


def first_number(text: str) -> float | None:
    match = NUMBER.search(text)
    return float(match.group().replace(",", "")) if match else None


def predict(item: dict, response: str) -> str:
    """What the response answers, in a form that can be compared and voted on ('' when it answers nothing)."""
    rule = item["match"]
    if rule == "numeric":
        number = first_number(response)
        return "" if number is None else f"{number:g}"
    if rule == "label":
        text = _normalize(response)
        hits = [(m.start(), label) for label in item["labels"] for m in [re.search(rf"\b{re.escape(label.lower())}\b", text)] if m]
        return min(hits)[1] if hits else ""
    text = f" {_normalize(response)} "
    for answer in [item["answer"], *item.get("aliases", [])]:
        if f" {_normalize(answer)} " in text:
            return answer
    return _normalize(response)[:40]


def is_correct(item: dict, prediction: str) -> bool:
    if item["match"] == "numeric":
        return prediction != "" and abs(float(prediction) - float(item["answer"])) < 1e-6
    if item["match"] == "label":
        return prediction == item["answer"]
    return prediction in [item["answer"], *item.get("aliases", [])]


def majority(predictions: list[str]) -> str:
    """Most common prediction; ties go to the one seen first (deterministic)."""
    counts = Counter(predictions)
    best = max(counts.values())
    return next(p for p in predictions if counts[p] == best)


def check_row(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("id", "prompt", "answer", "match"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DatasetError(f"{where}: missing or empty string field {key!r}")
    if row["match"] not in RULES:
        raise DatasetError(f"{where}: unknown match rule {row['match']!r}; valid: {', '.join(RULES)}")
    if row["match"] == "numeric":
        try:
            float(row["answer"])
        except ValueError:
            raise DatasetError(f"{where}: numeric answer {row['answer']!r} is not a number") from None
    if row["match"] == "label":
        labels = row.get("labels")
        if not isinstance(labels, list) or row["answer"] not in labels:
            raise DatasetError(f"{where}: label answer {row['answer']!r} must be one of its 'labels' list")
    return row


def load_items(path: Path) -> list[dict]:
    items = [check_row(row, where) for row, where in read_jsonl(path)]
    if not items:
        raise DatasetError(f"{path}: no items")
    return items


def score_votes(name: str, items: list[dict], responses: list[list[str]], predict_one: Callable[[dict, str], str],
                is_right: Callable[[dict, str], bool]) -> TaskResult:
    """Score each item by the majority vote of its responses' predictions (one response: that one's)."""
    correct, response_hits, categories, examples = [], [], {}, []
    for item, answers in zip(items, responses):
        predictions = [predict_one(item, r) for r in answers]
        hit = is_right(item, majority(predictions))
        correct.append(hit)
        response_hits.extend(is_right(item, p) for p in predictions)
        categories.setdefault(item.get("category", ""), []).append(hit)
        if len(examples) < 3:
            examples.append({"id": item["id"], "prompt": item["prompt"], "response": answers[0], "correct": hit})
    return TaskResult(
        task=name,
        accuracy=sum(correct) / len(correct),
        n=len(correct),
        correct=correct,
        metrics={"response_accuracy": sum(response_hits) / len(response_hits)},
        by_category={c: sum(v) / len(v) for c, v in categories.items()},
        examples=examples,
    )


def by_category(item: dict) -> str:
    return item.get("category", "")


@dataclass(frozen=True)
class GenerationTask(Task):
    name: str
    path: Path
    version: str = "1"
    token_cap: int = 12  # answers are a word, a number or a label: longer generations only cost time

    def evaluate(self, model, decoding, limit: int | None, max_new_tokens: int) -> TaskResult:
        items = stratified(load_items(self.path), limit, by_category)
        responses = model.generate([item["prompt"] for item in items], decoding, max_new_tokens)
        return score_votes(self.name, items, responses, predict, is_correct)


DATA = files("pytest_quantbench") / "data"
register(GenerationTask("simple", Path(str(DATA / "simple.jsonl"))))
register(GenerationTask("complex", Path(str(DATA / "complex.jsonl"))))
