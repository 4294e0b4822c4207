"""quantbench.html: the Markdown report as one self-contained page, read as text and in a headless Chromium."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_quantbench.cli import main as quantbench
from pytest_quantbench.report.html import markdown_to_html
from pytest_quantbench.report.writer import write_reports
from pytest_quantbench.results import Record

pytest.importorskip("markdown_it", reason="the HTML page needs the html extra")
pytest.importorskip("nh3", reason="the HTML page needs the html extra")

ENV = {"device": "cpu", "cpu": "Test CPU", "cpu_count": 2, "git_commit": "0123456789abcdef",
       "versions": {"torch": "2.13.0", "transformers": "5.0.0", "bitsandbytes": "0.46.0"},
       "command": "pytest benchmarks --qb-precision fp32,nf4"}
HOSTILE = "<script>document.title = 'injected'</script><img src=x onerror=\"document.title = 'injected'\">"
ODD_TEST = "bench.py::test_odd[<script>alert(1)</script>&x]"


def records() -> list[Record]:
    measured = [Record(f"bench.py::test_speed[m-{p}-greedy]", "m", p, "greedy", "cpu",
                       metrics={"footprint_mb": f, "tokens_per_s": t, "peak_mem_mb": f + 300},
                       accuracy_pct={"simple": a}, checks=checks)
                for p, f, t, a, checks in [
                    ("fp32", 500.0, 20.0, 60.0, []),
                    ("nf4", 150.0, 15.0, 40.0, [
                        {"name": "accuracy_drop[simple]", "passed": False,
                         "message": "simple: nf4 accuracy 40.0% vs fp32 60.0%: drop 20.0 pt > allowed 5.0 pt"},
                        {"name": "footprint_mb", "passed": True, "message": "footprint 150 MB <= limit 200 MB"}])]]
    skipped = Record(ODD_TEST, "m", "int8", "greedy", "cpu", outcome="skipped", reason=f"needs a GPU {HOSTILE}")
    return [*measured, skipped]


class Page(HTMLParser):
    """What the tests read from a page: title, headings, paragraphs, tables (rows of cell text), images, captions."""

    def __init__(self, text: str):
        super().__init__()
        self.title, self.body = "", {}
        self.texts: dict[str, list[str]] = {"h1": [], "h2": [], "p": [], "li": [], "figcaption": []}
        self.tables: list[list[list[str]]] = []
        self.images: list[dict] = []
        self._into: list[str] | None = None  # the text being collected
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._into = self.tables[-1][-1]
            self._into.append("")
        elif tag in self.texts and self._into is None:
            self._into = self.texts[tag]
            self._into.append("")
        elif tag == "title":
            self._into = [""]

    def handle_endtag(self, tag):
        if tag in ("td", "th", "title", *self.texts) and self._into is not None:
            if tag == "title":
                self.title = self._into[0]
            self._into[-1] = self._into[-1].strip()
            self._into = None

    def handle_data(self, data):
        if self._into is not None:
            self._into[-1] += data

    def table(self, first_header: str, header: str) -> list[dict]:
        """The rows of the first table whose headers start with `first_header` and include `header`."""
        rows = next(t for t in self.tables if t[0][0] == first_header and header in t[0])
        return [dict(zip(rows[0], row)) for row in rows[1:]]


def report(tmp_path: Path) -> Path:
    write_reports(records(), tmp_path, "", env=ENV)
    return tmp_path / "quantbench.html"


def test_page_is_self_contained_with_captioned_plots(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plots extra")
    page_text = report(tmp_path).read_text(encoding="utf-8")
    page = Page(page_text)
    assert page.title == "quantbench report" and page.texts["h1"] == ["quantbench report"]
    assert "<script" not in page_text and "<link" not in page_text and 'src="http' not in page_text
    assert len(page.images) == 5 and all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    assert [i["alt"] for i in page.images] == page.texts["figcaption"]
    assert page.texts["figcaption"][:2] == ["footprint (MB) per precision", "tokens/s per precision"]
    assert len(page_text.encode()) < 1_000_000


def test_typical_report_is_well_under_a_megabyte(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plots need the plots extra")
    # The committed CPU report: five precisions, three decodings, five plots.
    saved = Path(__file__).parents[1] / "docs" / "results" / "cpu" / "quantbench.json"
    assert quantbench(["report", str(saved), "--out", str(tmp_path)]) == 0
    size = (tmp_path / "quantbench.html").stat().st_size
    assert 100_000 < size < 500_000, size


def test_hostile_ids_and_reasons_render_as_text():
    rendered = markdown_to_html(f"| test | reason |\n| --- | --- |\n| `{ODD_TEST}` | {HOSTILE} "
                                "[link](javascript:alert(1)) |\n\n<script>\nalert(2)\n</script>\n")
    assert "<script" not in rendered and "alert(2)" not in rendered
    assert "<img" not in rendered and "onerror" not in rendered and "<a" not in rendered
    assert "<code>bench.py::test_odd[&lt;script&gt;alert(1)&lt;/script&gt;&amp;x]</code>" in rendered


def test_details_blocks_keep_their_markdown():
    rendered = markdown_to_html("<details>\n<summary>per item</summary>\n\n| a | b |\n| ---: | --- |\n| 1 | 2 |\n\n"
                                "</details>\n")
    assert rendered.startswith("<details>\n<summary>per item</summary>\n<table>")
    assert '<td style="text-align:right">1</td>' in rendered


def test_page_without_plots_still_has_the_tables(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else
                        find_spec(name, *a))
    page = Page(report(tmp_path).read_text(encoding="utf-8"))
    assert page.images == [] and "Plots" not in page.texts["h2"]
    assert [r["precision"] for r in page.table("model", "footprint (MB)")] == ["fp32", "nf4"]


def test_no_page_without_the_html_extra(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nh3" else find_spec(name, *a))
    paths = write_reports(records(), tmp_path, "", env=ENV)
    assert "quantbench.html" not in {p.name for p in paths} and not (tmp_path / "quantbench.html").exists()


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


# Added to a copy of the page, so the report itself runs no script: once loaded, the count of images that decoded.
PROBE = ("<script>addEventListener('load', () => { document.body.dataset.imagesLoaded = "
         "[...document.images].filter(image => image.naturalWidth > 0).length; });</script>")


@pytest.mark.skipif(chromium() is None, reason="no chromium, chromium-browser or google-chrome on PATH "
                                               "(Debian: apt-get install chromium)")
def test_page_in_headless_chromium(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plots extra")
    probed = tmp_path / "probed.html"
    probed.write_text(report(tmp_path).read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                      encoding="utf-8")
    # --no-sandbox: Chromium's own sandbox refuses to start as root, which CI runs as.
    dom = subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    page = Page(dom)
    assert page.title == "quantbench report" and page.texts["h1"] == ["quantbench report"]  # no script changed it
    assert page.body.get("data-images-loaded") == "5" and len(page.images) == 5
    assert "Device: cpu (Test CPU, 2 cores) · torch 2.13.0 · transformers 5.0.0 · bitsandbytes 0.46.0 · commit " \
           "0123456789" in page.texts["p"]
    assert "Command: pytest benchmarks --qb-precision fp32,nf4" in page.texts["p"]
    by_precision = page.table("model", "footprint (MB)")
    assert [(r["precision"], r["simple acc (%)"], r["footprint (MB)"], r["tokens/s"]) for r in by_precision] == \
           [("fp32", "60.0", "500.0", "20.0"), ("nf4", "40.0", "150.0", "15.0")]
    checks = page.table("test", "check")
    assert [(r["check"], r["result"]) for r in checks] == [
        ("accuracy_drop[simple]", "FAIL: simple: nf4 accuracy 40.0% vs fp32 60.0%: drop 20.0 pt > allowed 5.0 pt"),
        ("footprint_mb", "pass: footprint 150 MB <= limit 200 MB")]
    assert [(r["test"], r["outcome"], r["reason"]) for r in page.table("test", "outcome")] == \
           [(ODD_TEST.split("::", 1)[1], "skipped", "needs a GPU")]  # shown without its file
    assert [i["alt"] for i in page.images] == page.texts["figcaption"]
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.images)
