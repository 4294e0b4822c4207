"""Multiple-choice and perplexity tasks against a scripted model: prompts equal to lm-evaluation-harness's, metrics
by hand, the stratified limit, data layouts, missing data and malformed rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pytest_quantbench.tasks import DataUnavailable, get_task
from pytest_quantbench.tasks.generation import DatasetError
from pytest_quantbench.tasks.multiple_choice import MMLU_SUBJECTS, load_mmlu, mean_stderr
from pytest_quantbench.tasks.perplexity import detokenize, load_articles
from pytest_quantbench.tasks.sources import stratified

DATA = Path(__file__).parent / "data"
LOCAL, HENDRYCKS = DATA / "local", DATA / "hendrycks"


class ScriptedModel:
    """Answers log-likelihood requests from a function of (context, continuation); records what it was asked."""

    def __init__(self, score=lambda context, continuation: -float(len(continuation))):
        self.score = score
        self.requests: list[tuple[str, str]] = []

    def loglikelihood(self, requests):
        self.requests += requests
        return [(self.score(c, x), False) for c, x in requests]

    def loglikelihood_rolling(self, texts, context_length=None, stride=None):
        self.texts = texts
        return [(-2.0 * len(t.split()), len(t.split())) for t in texts]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# lm-eval 0.4.13's strings for the fixture items, written out by hand from its default configs
# (mmlu/default/_default_template_yaml + the per-subject description; arc/arc_easy.yaml).
LM_EVAL_MMLU_0SHOT = ("The following are multiple choice questions (with answers) about anatomy.\n\n"
                      "Where is the hyoid bone?\nA. Skull\nB. Neck\nC. Pelvis\nD. Foot\nAnswer:")
LM_EVAL_MMLU_1SHOT = ("The following are multiple choice questions (with answers) about high school us history.\n\n"
                      "Which war ended in 1865?\nA. Civil War\nB. War of 1812\nC. Spanish-American War\n"
                      "D. World War I\nAnswer: A\n\n"
                      "In what year was the Declaration of Independence signed?\nA. 1492\nB. 1776\nC. 1812\nD. 1865\n"
                      "Answer:")
LM_EVAL_ARC = "Question: Water freezes at what temperature in degrees Celsius?\nAnswer:"


def test_mmlu_prompts_equal_lm_eval_strings():
    model = ScriptedModel()
    get_task("mmlu").evaluate(model, None, None, 0, data_dir=LOCAL)
    hyoid = [r for r in model.requests if "hyoid" in r[0]]
    assert hyoid == [(LM_EVAL_MMLU_0SHOT, f" {letter}") for letter in "ABCD"]
    model = ScriptedModel()
    get_task("mmlu_1shot").evaluate(model, None, None, 0, data_dir=LOCAL)
    assert (LM_EVAL_MMLU_1SHOT, " B") in model.requests


def test_arc_prompts_and_choices_equal_lm_eval_strings():
    model = ScriptedModel()
    get_task("arc_easy").evaluate(model, None, None, 0, data_dir=LOCAL)
    assert [r for r in model.requests if "freezes" in r[0]] == [(LM_EVAL_ARC, " 0"), (LM_EVAL_ARC, " 50"),
                                                                 (LM_EVAL_ARC, " 100")]


def test_mmlu_accuracy_categories_and_stderr_by_hand():
    # The model always prefers " A": right on the 2 questions whose answer is A out of 6.
    model = ScriptedModel(lambda context, continuation: 0.0 if continuation == " A" else -1.0)
    result = get_task("mmlu").evaluate(model, None, None, 0, data_dir=LOCAL)
    assert result.n == 6 and result.accuracy == pytest.approx(2 / 6)
    assert result.correct == [True, False, False, False, False, True]
    assert result.metrics["acc_stderr"] == pytest.approx(math.sqrt((2 * (2 / 3) ** 2 + 4 * (1 / 3) ** 2) / 5) / math.sqrt(6))
    assert result.metrics["chance"] == pytest.approx(0.25)
    assert result.by_category == {"STEM": pytest.approx(1 / 3), "humanities": 0.0, "other": 1.0}


def test_arc_acc_norm_divides_by_choice_length_in_characters():
    # Scores -len(continuation): acc picks the shortest choice, acc_norm the best per character.
    scores = {" the Sun": -8.0, " the Moon": -4.5, " a rock": -3.0, " a mirror": -8.0}
    model = ScriptedModel(lambda context, continuation: scores.get(continuation, -100.0 if continuation != " 0" else 0.0))
    result = get_task("arc_easy").evaluate(model, None, 1, 0, data_dir=LOCAL)
    # acc: " a rock" (-3.0) is wrong; acc_norm: -8/7, -4.5/8, -3/6, -8/8 -> "the Moon" (-0.5625)... is also wrong
    assert result.correct == [False] and result.metrics["acc_norm"] == 0.0
    scores[" the Sun"] = -3.5  # -3.5/7 = -0.5 ties " a rock" -3/6 = -0.5: the first one wins, as numpy's argmax
    result = get_task("arc_easy").evaluate(model, None, 1, 0, data_dir=LOCAL)
    assert result.metrics["acc"] == 0.0 and result.metrics["acc_norm"] == 1.0


def test_mean_stderr_is_lm_evals_sample_stderr():
    assert mean_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(math.sqrt(0.75 / 3) / 2)  # squares: 3 x 1/16 + 9/16
    assert mean_stderr([1.0]) == 0.0


def test_stratified_limit_keeps_every_stratum_and_order():
    items = [{"s": s, "i": i} for i, s in enumerate("aaaabbbcc")]
    chosen = stratified(items, 4, lambda item: item["s"])
    assert [c["i"] for c in chosen] == [0, 1, 4, 7]
    assert stratified(items, None, lambda item: item["s"]) == items
    assert stratified(items, 4, lambda item: item["s"]) == chosen  # deterministic


def test_mmlu_limit_represents_every_subject():
    model = ScriptedModel()
    result = get_task("mmlu").evaluate(model, None, 3, 0, data_dir=LOCAL)
    subjects = {r[0].split("about ")[1].split(".")[0] for r in model.requests}
    assert result.n == 3 and subjects == {"anatomy", "high school us history", "marketing"}


def test_both_mmlu_layouts_load_the_same_documents():
    assert load_mmlu(LOCAL, "test") == load_mmlu(HENDRYCKS, "test")
    assert load_mmlu(LOCAL, "dev") == load_mmlu(HENDRYCKS, "dev")
    assert all(doc["subject"] in MMLU_SUBJECTS for doc in load_mmlu(LOCAL, "test"))


def test_arc_numeric_labels_and_odd_choice_counts():
    docs = get_task("arc_easy").load(LOCAL, "test")
    assert [len(d["choices"]) for d in docs] == [4, 3, 5]
    assert docs[1]["labels"] == ["1", "2", "3"] and docs[1]["gold"] == 0


def test_missing_data_offline_says_how_to_provide_it(tmp_path):
    for name in ("mmlu", "arc_challenge", "wikitext2"):
        with pytest.raises(DataUnavailable, match="--qb-data-dir"):
            get_task(name).evaluate(ScriptedModel(), None, None, 0, data_dir=tmp_path)


@pytest.mark.parametrize("line, message", [
    ('{"subject": "anatomy", "question": "Q?", "choices": ["a", "b", "c"], "answer": "A"}', "4 string choices"),
    ('{"subject": "anatomy", "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "E"}', "not one of A-D"),
    ('{"subject": "anatomy", "question": "Q?", "choices": ["a", "b", "c", "d"]', "not valid JSON"),
])
def test_malformed_mmlu_rows_name_file_and_line(tmp_path, line, message):
    (tmp_path / "mmlu").mkdir()
    good = json.dumps({"subject": "anatomy", "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "A"})
    path = tmp_path / "mmlu" / "mmlu_test.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=f"mmlu_test.jsonl:2: .*{message}"):
        load_mmlu(tmp_path, "test")


def test_malformed_csv_and_arc_rows(tmp_path):
    (tmp_path / "mmlu" / "data" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "data" / "test" / "anatomy_test.csv").write_text('Q1,a,b,c,d,A\n"Q2\nline 2",a,b,c\n')
    with pytest.raises(DatasetError, match=r"anatomy_test.csv:2: expected 6 fields"):
        load_mmlu(tmp_path, "test")
    (tmp_path / "arc").mkdir()
    row = {"id": "x", "question": {"stem": "Q?", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]},
           "answerKey": "C"}
    (tmp_path / "arc" / "ARC-Easy-Test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=r"ARC-Easy-Test.jsonl:1: answerKey 'C'"):
        get_task("arc_easy").load(tmp_path, "test")


def test_fewshot_names_and_unknown_tasks():
    assert get_task("mmlu_5shot").num_fewshot == 5 and get_task("mmlu_5shot").name == "mmlu_5shot"
    assert get_task("arc_easy_0shot").name == "arc_easy"
    with pytest.raises(ValueError, match="unknown task"):
        get_task("simple_5shot")


def test_wikitext_articles_detokenized_and_metrics_by_hand():
    articles = load_articles(LOCAL)
    assert len(articles) == 2 and articles[0].startswith(" = First Article = \n")
    assert "1,000-year-old tree. It grows (slowly)." in detokenize(articles[0])
    model = ScriptedModel()
    result = get_task("wikitext2").evaluate(model, None, None, 0, data_dir=LOCAL)
    assert result.accuracy is None and result.main_metric == "word_perplexity" and result.n == 2
    loglikelihood = sum(-2.0 * len(t.split()) for t in model.texts)
    words = sum(len(__import__("re").split(r"\s+", a)) for a in articles)
    size = sum(len(a.encode()) for a in articles)
    assert result.metrics["word_perplexity"] == pytest.approx(math.exp(-loglikelihood / words))
    assert result.metrics["bits_per_byte"] == pytest.approx(-loglikelihood / size / math.log(2))
    assert result.metrics["token_perplexity"] == pytest.approx(math.exp(2.0))
    assert get_task("wikitext2").evaluate(ScriptedModel(), None, 1, 0, data_dir=LOCAL).n == 1
