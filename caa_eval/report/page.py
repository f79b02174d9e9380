"""One page style for every HTML file caa-eval writes (the report, `caa-eval tokens`): self-contained, no
network at view time, readable without JavaScript, colour scales that survive colour-blindness."""

from __future__ import annotations

import base64
import html
from pathlib import Path

__all__ = ["STYLE", "page", "png_data_uri", "esc"]

STYLE = """
:root { --ink: #222; --muted: #555; --rule: #ddd; --accent: #2166ac; --sig: #b35806; }
body { font-family: system-ui, sans-serif; max-width: 80em; margin: 1.5em auto; padding: 0 1em; color: var(--ink);
       line-height: 1.45; }
h1 { font-size: 1.45em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid var(--rule); }
h3 { font-size: 1.05em; } .meta, figcaption, .note { color: var(--muted); font-size: 0.9em; }
nav ol { columns: 2; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 0.86em; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid var(--rule); padding: 0.2em 0.45em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tbody tr:nth-child(even) { background: #fafafa; }
th[aria-sort] { cursor: pointer; } th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.sig { color: var(--sig); font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
.controls { display: flex; gap: 1em; flex-wrap: wrap; margin: 0.5em 0; font-size: 0.9em; }
.controls[hidden] { display: none; }
.answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(16em, 1fr)); gap: 0.6em; }
.answer { border: 1px solid var(--rule); padding: 0.5em; font-size: 0.88em; white-space: pre-wrap; }
.answer h4 { margin: 0 0 0.3em; font-size: 0.95em; }
details { margin: 0.6em 0; } code { font-size: 0.92em; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 0.5em; margin: 1em 0; font-size: 0.9em; }
.legend .bar { display: inline-block; width: 16em; height: 1em; border: 1px solid #999; }
.legend p { flex-basis: 100%; margin: 0.3em 0 0 0; }
.text { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; line-height: 1.9;
        border: 1px solid var(--rule); padding: 1em; }
span.tok { border-radius: 2px; padding: 0.1em 0; }
span.tok.prompt { text-decoration: underline dotted #777; }
"""


def esc(value: object) -> str:
    """HTML-escape any value's text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str, script: str = "") -> str:
    """A whole HTML document in the shared style.

    Args:
        title: the document title.
        body: the body's HTML.
        script: plain JavaScript run at the end of the page (optional; the page must work without it).
    """
    tail = f"<script>\n{script}\n</script>\n" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n{tail}</body>\n</html>\n"
    )


def png_data_uri(path: str | Path) -> str:
    """A PNG file as a data URI (the page must open offline, with no file beside it)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
