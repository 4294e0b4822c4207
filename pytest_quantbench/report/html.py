"""quantbench.html: the Markdown report as one self-contained page, with the PNG plots inlined (optional extra `html`).

The page needs no network and runs no script: the Markdown is rendered as CommonMark with tables (how GitHub shows
quantbench.md), sanitized, and each plot is a base64 `data:` image under its caption."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..results import write_atomic
from .plots import BARS, axis_label

# Captions of the plots that write_plots draws, by file name; another PNG is captioned by its file name.
CAPTIONS = {
    **{f"{metric}.png": f"{axis_label(metric)} per precision" for metric in BARS},
    "heatmap.png": "Each metric against the baseline precision, per model (blue better, red worse)",
    "accuracy_vs_memory.png": "Mean accuracy against model footprint, with the Pareto front",
}

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1f2328; margin: 2em auto; max-width: 1200px; padding: 0 1em; }
h1, h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d1d9e0; padding: .25em .6em; }
th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #f6f8fa; }
code { font: 13px ui-monospace, monospace; background: #eff1f3; padding: .1em .3em; border-radius: 4px; }
td code { white-space: nowrap; }
figure { display: inline-block; vertical-align: top; margin: 1em 1.5em 1em 0; }
figure img { max-width: 100%; border: 1px solid #d1d9e0; }
figcaption { color: #59636e; font-style: italic; }
"""


def markdown_to_html(text: str) -> str:
    """Render Markdown to HTML that can hold no script, event handler or external resource, whatever a test id,
    reason or model name in it contains; `<details>` blocks and table alignment are kept."""
    import nh3
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").enable("table").render(text)
    aligned = {tag: nh3.ALLOWED_ATTRIBUTES.get(tag, set()) | {"style"} for tag in ("th", "td")}
    # No <img>: the only images are the plots, added after cleaning.
    return nh3.clean(rendered, tags=nh3.ALLOWED_TAGS - {"img"}, attributes={**nh3.ALLOWED_ATTRIBUTES, **aligned},
                     filter_style_properties={"text-align"})


def figure(png: Path) -> str:
    """One plot as an inline image with its caption, which is also its alt text."""
    caption = html.escape(CAPTIONS.get(png.name, png.stem.replace("_", " ")))
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def write_html(markdown: str, plots: list[Path], path: Path) -> Path:
    """The page: the Markdown report, then a Plots section with each PNG in `plots`."""
    title = next((line[2:].strip() for line in markdown.splitlines() if line.startswith("# ")), "quantbench report")
    body = markdown_to_html(markdown)
    figures = [figure(p) for p in plots if p.suffix == ".png"]
    if figures:
        body += "<h2>Plots</h2>\n" + "\n".join(figures) + "\n"
    write_atomic(path, f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                       f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                       f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
                       f"<body>\n{body}</body></html>\n")
    return path
