"""Perplexity on WikiText-2 (raw, test) by rolling log-likelihood, as lm-evaluation-harness's `wikitext` task:
documents are the articles (a top-level heading ` = Title = ` starts one), each is detokenized (`@-@` -> `-`,
spaces before punctuation, ...) and scored token by token in windows of `context_length` tokens moving by
`stride` (the default, stride = context length, is lm-eval's disjoint windows; a smaller stride gives every
token more context at more cost).

Metrics (lm-eval's): word_perplexity = exp(-sum log p / words), byte_perplexity = exp(-sum log p / bytes),
bits_per_byte = -sum log p / bytes / ln 2, words and bytes counted on the original (tokenized) article text; and
token_perplexity = exp(-sum log p / tokens) in the model's own tokens. A perplexity task has no accuracy: its
result's `accuracy` is None and `main_metric` names what thresholds and the report use.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from . import DatasetError, Task, TaskResult, register
from .sources import first_existing, hub_rows

LOCAL_FILES = ("wikitext2/wikitext-2-raw/wiki.test.raw", "wikitext2/wiki.test.raw", "wikitext-2-raw/wiki.test.raw")
TITLE = re.compile(r"^ = [^=].* = $")

# lm-eval's wikitext detokenizer (tasks/wikitext/preprocess_wikitext.py), as ordered (pattern, replacement) steps;
# plain-string steps are str.replace, compiled ones re.sub.
DETOKENIZE = [
    ("s '", "s'"), (re.compile(r"/' [0-9]/"), r"/'[0-9]/"),
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"), (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"), (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"),
    (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s"),
]


def detokenize(page: str) -> str:
    for pattern, replacement in DETOKENIZE:
        page = pattern.sub(replacement, page) if isinstance(pattern, re.Pattern) else page.replace(pattern, replacement)
    return page


def split_articles(lines: list[str]) -> list[str]:
    """Articles from WikiText lines (blank lines kept as empty lines), each starting at its title line."""
    articles: list[list[str]] = []
    for line in lines:
        line = line.rstrip("\r\n")
        if TITLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line if line.strip() else "")
    texts = ["\n".join(lines).strip("\n") + "\n" for lines in articles]
    return [text for text in texts if text.strip()]


def load_articles(data_dir: Path | None) -> list[str]:
    """The test articles from a local raw file, else from the hub (`wikitext`, wikitext-2-raw-v1, test)."""
    path = first_existing(data_dir, LOCAL_FILES)
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise DatasetError(f"{path}: not UTF-8 text ({error})") from None
    else:
        how = ("to run offline, put the raw WikiText-2 test file at wikitext2/wikitext-2-raw/wiki.test.raw in a "
               "directory and pass --qb-data-dir DIR")
        lines = [row.get("text", "").rstrip("\n") for row, _ in hub_rows("wikitext", "wikitext-2-raw-v1", "test", how)]
    articles = split_articles(lines)
    if not articles:
        raise DatasetError(f"{path or 'wikitext-2-raw-v1'}: no articles (expected lines like ' = Title = ')")
    return articles


@dataclass(frozen=True)
class PerplexityTask(Task):
    name: str = "wikitext2"
    version: str = "1"
    families: tuple[str, ...] = ("decoder",)  # scoring.py scores causal LMs; the fixture skips other families
    options = ("data_dir", "context_length", "stride")

    def evaluate(self, model, decoding, limit: int | None, max_new_tokens: int, data_dir: Path | None = None,
                 context_length: int | None = None, stride: int | None = None) -> TaskResult:
        articles = load_articles(data_dir)[: limit or None]  # --qb-limit counts articles, in file order
        scores = model.loglikelihood_rolling([detokenize(a) for a in articles], context_length, stride)
        return self.score(articles, scores, context_length, stride)

    def score(self, articles: list[str], scores: list[tuple[float, int]], context_length=None,
              stride=None) -> TaskResult:
        loglikelihood = sum(s[0] for s in scores)
        tokens = sum(s[1] for s in scores)
        words = sum(len(re.split(r"\s+", a)) for a in articles)
        size = sum(len(a.encode("utf-8")) for a in articles)
        metrics = {
            "word_perplexity": math.exp(-loglikelihood / words),
            "byte_perplexity": math.exp(-loglikelihood / size),
            "bits_per_byte": -loglikelihood / size / math.log(2),
            "token_perplexity": math.exp(-loglikelihood / max(1, tokens)),
            "tokens": float(tokens), "words": float(words), "bytes": float(size),
        }
        if context_length:
            metrics["context_length"] = float(context_length)
            metrics["stride"] = float(stride or context_length)
        return TaskResult(task=self.name, accuracy=None, n=len(articles), metrics=metrics,
                          main_metric="word_perplexity",
                          examples=[{"article": a[:200], "loglikelihood": s[0], "tokens": s[1]}
                                    for a, s in zip(articles[:2], scores)])


WIKITEXT2 = register(PerplexityTask())
