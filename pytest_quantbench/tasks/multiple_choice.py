"""Multiple-choice tasks scored by log-likelihood, declared as lm-evaluation-harness's default configs declare them:
a prompt (`doc_to_text`), the choices (continuations after `target_delimiter`), the gold choice, the metrics.

    mmlu           cais/mmlu, 57 subjects; "<description><question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:" scored
                   with the choices " A".." D"; few-shot examples: the first k of the subject's dev split
    arc_easy       allenai/ai2_arc ARC-Easy; "Question: <question>\\nAnswer:" scored with " <answer text>"
    arc_challenge  the same on ARC-Challenge

The prediction is the choice with the highest log-likelihood (`acc`); `acc_norm` divides each log-likelihood by
the choice's length in characters first (lm-eval's acc_norm). Standard errors as lm-eval's: sample standard
deviation over sqrt(n). `<task>_<k>shot` (e.g. `mmlu_5shot`) is the task with k few-shot examples.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import DatasetError, Task, TaskResult, register
from .sources import first_existing, hub_rows, read_csv, read_table, stratified

LETTERS = ("A", "B", "C", "D")

# lm-eval's subject -> category map (tasks/mmlu/_generate_configs.py), by category.
MMLU_CATEGORIES = {
    "STEM": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
            "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
            "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
            "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
                  "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
                  "prehistory professional_law world_religions",
    "social sciences": "econometrics high_school_geography high_school_government_and_politics "
                       "high_school_macroeconomics high_school_microeconomics high_school_psychology "
                       "human_sexuality professional_psychology public_relations security_studies sociology "
                       "us_foreign_policy",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
             "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
}
MMLU_SUBJECTS = {subject: category for category, names in MMLU_CATEGORIES.items() for subject in names.split()}


def _how_to_provide(files: str) -> str:
    return f"to run offline, put {files} in a directory and pass --qb-data-dir DIR (see the README's data layout)"


def _answer_index(value, where: str, n: int = 4) -> int:
    """MMLU's answer as a letter A-D or an index 0-3 (int or digit string)."""
    text = str(value).strip()
    if text.upper() in LETTERS[:n]:
        return LETTERS.index(text.upper())
    if text.isdigit() and int(text) < n:
        return int(text)
    raise DatasetError(f"{where}: answer {value!r} is not one of A-D or 0-3")


def mmlu_doc(row: dict, where: str) -> dict:
    """A row of any accepted MMLU layout -> {subject, question, choices, gold}; DatasetError when malformed."""
    choices = row.get("choices")
    if choices is None and all(k in row for k in LETTERS):
        choices = [row[k] for k in LETTERS]
    if not isinstance(choices, (list, tuple)) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise DatasetError(f"{where}: expected 4 string choices ('choices' list or columns A-D)")
    for key in ("subject", "question"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DatasetError(f"{where}: missing or empty string field {key!r}")
    if "answer" not in row:
        raise DatasetError(f"{where}: missing field 'answer'")
    return {"subject": row["subject"], "question": row["question"], "choices": list(choices),
            "gold": _answer_index(row["answer"], where)}


def load_mmlu(data_dir: Path | None, split: str) -> list[dict]:
    """mmlu/mmlu_<split>.{jsonl,parquet,csv}, else mmlu/data/<split>/<subject>_<split>.csv, else the hub."""
    path = first_existing(data_dir, [f"mmlu/mmlu_{split}.{ext}" for ext in ("jsonl", "parquet", "csv")])
    folder = Path(data_dir) / "mmlu" / "data" / split if data_dir else None
    if path is not None:
        rows = read_table(path)
    elif folder is not None and folder.is_dir() and any(folder.glob(f"*_{split}.csv")):
        rows = []
        for file in sorted(folder.glob(f"*_{split}.csv")):  # Hendrycks' own layout: headerless, one file per subject
            subject = file.name.removesuffix(f"_{split}.csv")
            rows += [({**row, "subject": subject}, where)
                     for row, where in read_csv(file, ["question", "A", "B", "C", "D", "answer"])]
        if not rows:
            raise DatasetError(f"{folder}: every *_{split}.csv file is empty")
    else:
        rows = hub_rows("cais/mmlu", "all", split, _how_to_provide(
            f"mmlu/mmlu_{split}.jsonl (or mmlu/data/{split}/<subject>_{split}.csv)"))
    return [mmlu_doc(row, where) for row, where in rows]


def mmlu_prompt(doc: dict) -> str:
    return (f"{doc['question'].strip()}\nA. {doc['choices'][0]}\nB. {doc['choices'][1]}\nC. {doc['choices'][2]}"
            f"\nD. {doc['choices'][3]}\nAnswer:")


def mmlu_description(doc: dict) -> str:
    return f"The following are multiple choice questions (with answers) about {doc['subject'].replace('_', ' ')}.\n\n"


ARC_SPLIT_FILES = {"test": "Test", "train": "Train", "validation": "Dev"}


def arc_doc(row: dict, where: str) -> dict:
    """A row in AllenAI's layout (question.stem, question.choices[{text, label}]) or the hub's (question,
    choices{text, label}) -> {id, question, choices, labels, gold}."""
    question, choices = row.get("question"), row.get("choices")
    if isinstance(question, dict):  # AllenAI's original jsonl
        question, choices = question.get("stem"), question.get("choices")
        if isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
            choices = {"text": [c.get("text") for c in choices], "label": [c.get("label") for c in choices]}
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: missing or empty question")
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list) or \
            not isinstance(choices.get("label"), list) or len(choices["text"]) != len(choices["label"]) or \
            len(choices["text"]) < 2:
        raise DatasetError(f"{where}: expected choices with matching 'text' and 'label' lists (at least 2)")
    texts, labels = list(choices["text"]), [str(label) for label in choices["label"]]
    if not all(isinstance(t, str) for t in texts):
        raise DatasetError(f"{where}: every choice text must be a string")
    if str(row.get("answerKey")) not in labels:
        raise DatasetError(f"{where}: answerKey {row.get('answerKey')!r} is not one of the labels {labels}")
    return {"id": row.get("id", where), "question": question, "choices": texts, "labels": labels,
            "gold": labels.index(str(row["answerKey"]))}


def arc_loader(config: str) -> Callable[[Path | None, str], list[dict]]:
    def load(data_dir: Path | None, split: str) -> list[dict]:
        stem = f"arc/{config}-{ARC_SPLIT_FILES[split]}"
        path = first_existing(data_dir, [f"{stem}.jsonl", f"{stem}.parquet"])
        rows = read_table(path) if path else hub_rows("allenai/ai2_arc", config, split,
                                                       _how_to_provide(f"{stem}.jsonl"))
        return [arc_doc(row, where) for row, where in rows]

    return load


def mean_stderr(values: list[float]) -> float:
    """lm-eval's stderr of a mean: sample standard deviation / sqrt(n) (0 for fewer than two values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def argmax(values: list[float]) -> int:
    """Index of the largest value, the first one on ties (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


@dataclass(frozen=True)
class MultipleChoiceTask(Task):
    name: str
    load: Callable[[Path | None, str], list[dict]]  # (data dir, split) -> documents with "choices" and "gold"
    doc_to_text: Callable[[dict], str]
    doc_to_choice: Callable[[dict], list[str]]
    description: Callable[[dict], str] = lambda doc: ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot_split: str = "train"
    test_split: str = "test"
    acc_norm: bool = False
    category: Callable[[dict], str] | None = None  # per-category accuracy in the report
    stratum: Callable[[dict], str] = lambda doc: ""  # what --qb-limit keeps represented
    num_fewshot: int = 0
    version: str = "1"
    families: tuple[str, ...] = ("decoder",)  # scoring.py scores causal LMs; the fixture skips other families
    options = ("data_dir",)

    def with_fewshot(self, k: int) -> MultipleChoiceTask:
        base = re.sub(r"_\d+shot$", "", self.name)
        return dataclasses.replace(self, name=f"{base}_{k}shot" if k else base, num_fewshot=k)

    def context(self, doc: dict, shots: list[dict]) -> str:
        """The prompt a document's choices are scored after (lm-eval's fewshot_context)."""
        examples = "".join(self.doc_to_text(s) + self.target_delimiter + self.doc_to_choice(s)[s["gold"]]
                           + self.fewshot_delimiter for s in shots)
        return self.description(doc) + examples + self.doc_to_text(doc)

    def requests(self, doc: dict, shots: list[dict]) -> list[tuple[str, str]]:
        context = self.context(doc, shots)
        return [(context, self.target_delimiter + choice) for choice in self.doc_to_choice(doc)]

    def shots_for(self, docs: list[dict], data_dir: Path | None) -> Callable[[dict], list[dict]]:
        """The few-shot examples of a document: the first k of the few-shot split with the same stratum
        (MMLU: the subject's dev questions, as lm-eval's first_n sampler)."""
        if not self.num_fewshot:
            return lambda doc: []
        pool: dict[str, list[dict]] = {}
        for shot in self.load(data_dir, self.fewshot_split):
            pool.setdefault(self.stratum(shot), []).append(shot)
        return lambda doc: pool.get(self.stratum(doc), [])[: self.num_fewshot]

    def evaluate(self, model, decoding, limit: int | None, max_new_tokens: int,
                 data_dir: Path | None = None) -> TaskResult:
        docs = stratified(self.load(data_dir, self.test_split), limit, self.stratum)
        shots = self.shots_for(docs, data_dir)
        requests = [self.requests(doc, shots(doc)) for doc in docs]
        scores = model.loglikelihood([r for per_doc in requests for r in per_doc])
        return self.score(docs, requests, scores)

    def score(self, docs: list[dict], requests: list[list[tuple[str, str]]], scores: list) -> TaskResult:
        """Per-document predictions from the flat list of (log-likelihood, is_greedy) -> the task's result."""
        acc, acc_norm, categories, examples, start = [], [], {}, [], 0
        for doc, per_doc in zip(docs, requests):
            lls = [float(s[0]) for s in scores[start : start + len(per_doc)]]
            start += len(per_doc)
            choices = self.doc_to_choice(doc)
            hit = argmax(lls) == doc["gold"]
            acc.append(hit)
            acc_norm.append(argmax([ll / max(1, len(c)) for ll, c in zip(lls, choices)]) == doc["gold"])
            if self.category is not None:
                categories.setdefault(self.category(doc), []).append(hit)
            if len(examples) < 3:
                examples.append({"prompt": per_doc[0][0], "choices": choices, "loglikelihoods": lls,
                                 "gold": doc["gold"], "correct": hit})
        metrics = {"acc": sum(acc) / len(acc), "acc_stderr": mean_stderr([float(a) for a in acc]),
                   "chance": sum(1 / len(self.doc_to_choice(d)) for d in docs) / len(docs),
                   "num_fewshot": float(self.num_fewshot)}
        if self.acc_norm:
            metrics.update(acc_norm=sum(acc_norm) / len(acc_norm),
                           acc_norm_stderr=mean_stderr([float(a) for a in acc_norm]))
        return TaskResult(task=self.name, accuracy=metrics["acc"], n=len(docs), correct=acc, metrics=metrics,
                          by_category={c: sum(v) / len(v) for c, v in categories.items()}, examples=examples)


MMLU = register(MultipleChoiceTask(
    name="mmlu", load=load_mmlu, doc_to_text=mmlu_prompt, doc_to_choice=lambda doc: list(LETTERS),
    description=mmlu_description, fewshot_split="dev", category=lambda doc: MMLU_SUBJECTS.get(doc["subject"], "other"),
    stratum=lambda doc: doc["subject"]))
for _name, _config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
    register(MultipleChoiceTask(
        name=_name, load=arc_loader(_config), doc_to_text=lambda doc: f"Question: {doc['question']}\nAnswer:",
        doc_to_choice=lambda doc: doc["choices"], acc_norm=True))
