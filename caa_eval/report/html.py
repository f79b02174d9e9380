"""report.html: the whole report as one self-contained page (figures inline, no network, usable without JS).

The page is built from what the report already wrote, so every section report.md has (pivots, Table 4,
figures, scale, steerability, costs, …) appears here too, in report.md's order: provenance and an interactive
headline table come first, then report.md's sections, then the open-ended examples and any per-token views.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from caa_eval.files import write_atomic
from caa_eval.report.examples import Example, choose_examples
from caa_eval.report.page import esc, page, png_data_uri
from caa_eval.report.provenance import provenance_rows
from caa_eval.vocab import format_multiplier

__all__ = ["write_html", "render_html", "HEADLINE_COLUMNS"]

HEADLINE_COLUMNS: list[tuple[str, str, str]] = [  # (label, report.json cell key, type)
    ("behaviour", "behaviour", "text"),
    ("task", "task", "text"),
    ("metric", "metric", "text"),
    ("layer", "layer", "text"),
    ("site", "site", "text"),
    ("positions", "positions", "text"),
    ("condition", "condition", "text"),
    ("multiplier", "multiplier", "num"),
    ("n", "n", "num"),
    ("mean", "mean", "num"),
    ("95% CI", "ci", "text"),
    ("diff vs 0", "diff_vs_0", "num"),
    ("diff 95% CI", "diff_ci", "text"),
    ("p", "p", "num"),
    ("p Holm", "p_holm", "num"),
    ("p BH", "p_bh", "num"),
    ("mark", "mark", "text"),
]

_SCRIPT = """
(function () {
  var table = document.getElementById('headline-table');
  if (!table) return;
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  function key(row, i, num) {
    var v = row.cells[i].getAttribute('data-value');
    if (v === null) v = row.cells[i].textContent;
    if (!num) return v;
    var x = parseFloat(v);
    return isNaN(x) ? Infinity : x;
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.setAttribute('aria-sort', 'none');
    th.tabIndex = 0;
    function sort() {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      var num = th.getAttribute('data-type') === 'num';
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, i, num), y = key(b, i, num);
        var c = num ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      Array.prototype.forEach.call(heads, function (h) { h.setAttribute('aria-sort', 'none'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    }
    th.addEventListener('click', sort);
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter') sort(); });
  });
  var selects = document.querySelectorAll('select[data-filter]');
  function filter() {
    Array.prototype.forEach.call(body.rows, function (r) {
      var show = true;
      Array.prototype.forEach.call(selects, function (s) {
        if (s.value && r.getAttribute('data-' + s.getAttribute('data-filter')) !== s.value) show = false;
      });
      r.hidden = !show;
    });
  }
  Array.prototype.forEach.call(selects, function (s) { s.addEventListener('change', filter); });
  var controls = document.getElementById('headline-controls');
  if (controls) controls.hidden = false;
})();
"""


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and 0 < abs(value) < 10 ** (-digits):
        return f"{value:.1e}"
    return f"{float(value):.{digits}f}"


def _cell_value(cell: dict[str, Any], key: str, primary_test: str, alpha: float) -> tuple[str, str | None]:
    """(shown text, sort value) of one headline column."""
    if key == "ci":
        return f"[{_num(cell.get('ci_low'))}, {_num(cell.get('ci_high'))}]", None
    if key == "diff_ci":
        if cell.get("is_baseline"):
            return "—", None
        return f"[{_num(cell.get('diff_ci_low'))}, {_num(cell.get('diff_ci_high'))}]", None
    if key == "mark":
        return ("*" if cell.get("significant") else ("†" if (cell.get("p_bh") or 1) < alpha else "")), None
    if key == "p":
        value = cell.get(f"p_{primary_test}")
    elif key == "multiplier":
        return format_multiplier(float(cell["multiplier"])), str(cell["multiplier"])
    else:
        value = cell.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        shown = str(value) if isinstance(value, int) or key == "layer" else _num(value, 4 if key.startswith("p") else 3)
        return shown, "" if isinstance(value, float) and math.isnan(value) else repr(value)
    return ("" if value is None else str(value)), None


def _headline(report: dict[str, Any]) -> str:
    """Every cell with its CI and paired test: sortable by any column, filterable by behaviour and task."""
    cells = report.get("cells") or []
    test, alpha = report["settings"]["primary_test"], float(report["settings"].get("alpha", 0.05))
    heads = "".join(f'<th scope="col" data-type="{kind}">{esc(label)}</th>' for label, _, kind in HEADLINE_COLUMNS)
    rows = []
    for cell in cells:
        tds = []
        for _, key, kind in HEADLINE_COLUMNS:
            shown, value = _cell_value(cell, key, test, alpha)
            attr = f' data-value="{esc(value)}"' if value is not None else ""
            cls = ' class="num"' if kind == "num" else (' class="sig"' if key == "mark" and shown else "")
            tds.append(f"<td{cls}{attr}>{esc(shown)}</td>")
        rows.append(
            f'<tr data-behaviour="{esc(cell["behaviour"])}" data-task="{esc(cell["task"])}">{"".join(tds)}</tr>'
        )
    controls = "".join(
        f'<label>{name} <select data-filter="{name}" aria-label="filter by {name}"><option value="">all</option>'
        + "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in sorted({str(c[name]) for c in cells}))
        + "</select></label>"
        for name in ("behaviour", "task")
    )
    n_sig = sum(1 for c in cells if c.get("significant"))
    return (
        '<section id="headline"><h2>Headline: every cell against multiplier 0</h2>'
        f"<p>{n_sig} of {report['correction']['n_tests']} steered cells differ significantly from multiplier 0 "
        f"(two-sided {esc(test)} test on paired items, Holm over all of them; <span class=sig>*</span> = Holm, "
        "† = Benjamini–Hochberg only). Click a column header to sort.</p>"
        f'<div class="controls" id="headline-controls" hidden>{controls}</div>'
        f'<div class="scroll"><table id="headline-table"><caption class="meta">{len(cells)} cells</caption>'
        f"<thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _markdown_sections(markdown: str) -> list[tuple[str, str]]:
    """report.md cut at its `## ` headings: [(heading, text)], the title block first with heading ''."""
    parts = re.split(r"(?m)^## ", markdown)
    out = [("", parts[0])]
    for part in parts[1:]:
        heading, _, text = part.partition("\n")
        out.append((heading.strip(), text))
    return out


def _renderer(out_dir: Path, figures: Sequence[dict[str, Any]]) -> MarkdownIt:
    """markdown-it with tables, raw HTML off, and images inlined as data URIs with the figure's title as alt."""
    titles = {f["file"]: f"{f.get('kind', 'figure').replace('_', ' ')}: {f.get('title', '')}" for f in figures}
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        src = str(tokens[idx].attrGet("src") or "")
        alt = titles.get(src) or tokens[idx].content or src
        path = out_dir / src
        if "/" in src or not path.is_file():
            return f"<em>[figure {esc(src)} not found]</em>"
        return f'<img src="{png_data_uri(path)}" alt="{esc(alt)}">'

    md.add_render_rule("image", image)
    return md


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"


def _examples_html(examples: Sequence[Example]) -> str:
    if not examples:
        return ""
    blocks = []
    for ex in examples:
        answers = "".join(
            f'<div class="answer"><h4>multiplier {esc(format_multiplier(a.multiplier))} · judge score '
            f"{esc(_num(a.score, 1))}</h4>{esc(a.answer)}</div>"
            for a in ex.answers
        )
        links = " · ".join(f'<a href="{esc(s)}">{esc(Path(s).name)}</a>' for s in ex.sources)
        blocks.append(
            f'<article class="example"><h3>{esc(ex.behaviour)} · {esc(ex.task)} · item {esc(ex.doc_id)} '
            f"({esc(ex.why)})</h3><p class=meta>{esc(ex.setting)}</p><p><strong>Question.</strong> "
            f'{esc(ex.question)}</p><div class="answers">{answers}</div><p class=meta>Full samples: {links}</p>'
            "</article>"
        )
    return (
        '<section id="examples"><h2>Examples: the same question at each multiplier</h2><p>Chosen '
        "deterministically per behaviour: the items whose judge score changed most and least between the lowest "
        "and the highest multiplier.</p>" + "".join(blocks) + "</section>"
    )


def _tokens_html(token_views: Sequence[tuple[str, str]]) -> str:
    if not token_views:
        return ""
    parts = "".join(f"<article><h3>{esc(title)}</h3>{fragment}</article>" for title, fragment in token_views)
    return (
        '<section id="tokens"><h2>Per-token similarity to the steering vector (§8.1)</h2>'
        "<p>Each token of the steered answer, coloured by the cosine of its activation with the vector at the "
        "steered layer.</p>" + parts + "</section>"
    )


def render_html(
    report: dict[str, Any],
    markdown: str,
    out_dir: Path,
    provenance: Sequence[tuple[str, str]] = (),
    examples: Sequence[Example] = (),
    token_views: Sequence[tuple[str, str]] = (),
) -> str:
    """The page: title, contents, provenance, headline table, report.md's sections, examples, token views.

    Args:
        report: the report.json document.
        markdown: report.md's text (its sections become the page's middle).
        out_dir: the report folder (figures are read from it and inlined).
        provenance: (field, value) rows.
        examples: open-ended examples (`caa_eval.report.examples.choose_examples`).
        token_views: (title, HTML fragment) per-token views (`caa_eval.analysis.token_view.tokens_fragment`).
    """
    md = _renderer(out_dir, report.get("figures") or [])
    sections, methods = [], ""
    for heading, text in _markdown_sections(markdown)[1:]:
        if heading == "All cells":
            continue  # the headline table shows them, sortable
        body = f'<section id="{_slug(heading)}"><h2>{esc(heading)}</h2>{md.render(text)}</section>'
        if heading.startswith("How the numbers"):
            methods = f"<details><summary>How the numbers were computed</summary>{md.render(text)}</details>"
        else:
            sections.append((heading, body))
    prov = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in provenance)
    toc_items = [("provenance", "Provenance"), ("headline", "Headline table")]
    toc_items += [(_slug(h), h) for h, _ in sections]
    toc_items += [("examples", "Examples")] if examples else []
    toc_items += [("tokens", "Per-token views")] if token_views else []
    toc = "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t in toc_items)
    body = (
        f'<header><h1>CAA steering report</h1><p class="meta">{esc(report["input"])} · caa-eval '
        f"{esc(report['caa_eval_version'])} · {esc(report['created'])} · {report['n_rows']} per-item scores</p>"
        f'<nav aria-label="contents"><ol>{toc}</ol></nav></header><main>'
        f'<section id="provenance"><h2>Provenance</h2><table><tbody>{prov}</tbody></table>{methods}</section>'
        + _headline(report)
        + "".join(b for _, b in sections)
        + _examples_html(examples)
        + _tokens_html(token_views)
        + "</main>"
    )
    return page(f"CAA steering report — {report['input']}", body, _SCRIPT)


def write_html(
    report: dict[str, Any],
    out_dir: str | Path,
    source: str | Path | None = None,
    token_views: Sequence[tuple[str, str]] = (),
    examples_per_behaviour: int = 2,
    page_dir: str | Path | None = None,
) -> Path:
    """Write OUT_DIR/report.html from report.json's content and report.md beside it.

    Args:
        report: the report.json document.
        out_dir: the report folder holding report.md and the PNG figures.
        source: the run or sweep folder (provenance and examples come from it; None for a long table).
        token_views: per-token views to include (see `render_html`).
        examples_per_behaviour: open-ended examples per behaviour (largest and smallest score change).
        page_dir: the folder the page will be read from, if not out_dir (links to samples are relative to it).
    """
    out = Path(out_dir)
    markdown = (out / "report.md").read_text(encoding="utf-8")
    folder = Path(source) if source is not None and Path(source).is_dir() else None
    link_dir = Path(page_dir) if page_dir is not None else out
    examples = choose_examples(report, folder, link_dir, examples_per_behaviour) if folder is not None else []
    html = render_html(report, markdown, out, provenance_rows(report, folder), examples, token_views)
    return write_atomic(out / "report.html", html)
