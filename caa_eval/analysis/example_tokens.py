"""Per-token views (§8.1) of a report's open-ended examples: each chosen question with its answer at the
highest multiplier, coloured by the cosine of every token's activation with the vector that steered it.

Needs the sweep's model and vectors (read from its manifest), so `caa-eval report --tokens N` loads the model
once; everything else in the report stays model-free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from caa_eval.errors import CAAEvalError
from caa_eval.report.examples import Example
from caa_eval.vocab import format_multiplier, parse_layers

__all__ = ["example_token_views"]


def _manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise CAAEvalError(
            f"--tokens needs a sweep folder (with manifest.json naming the model and vectors); {run_dir} has none"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _vector_file(manifest: dict, behaviour: str, site: str) -> Path:
    info = (manifest.get("vectors") or {}).get(f"{behaviour}/{site}")
    if not info:
        raise CAAEvalError(f"--tokens: the manifest names no {site} vector for {behaviour!r}")
    return Path(info["file"])


def example_token_views(
    run_dir: str | Path, examples: Sequence[Example], n: int, device: str = "cpu"
) -> list[tuple[str, str]]:
    """(title, HTML fragment) for the first `n` examples, in the report's page style.

    Args:
        run_dir: the sweep folder.
        examples: the report's examples (`caa_eval.report.examples.choose_examples`).
        n: how many to draw.
        device: where the model runs.
    """
    from caa_eval.analysis.token_view import tokens_fragment
    from caa_eval.analysis.tokens import token_cosines
    from caa_eval.core.vectors import load
    from caa_eval.models import load_model

    if n <= 0 or not examples:
        return []
    manifest = _manifest(Path(run_dir))
    model, tokenizer = load_model(manifest["config"]["model"], "float32")
    model.to(device)
    views = []
    for ex in list(examples)[:n]:
        layers = parse_layers(ex.layer)
        if not layers:
            continue
        site = ex.site
        sv = load(_vector_file(manifest, ex.behaviour, site))
        top = ex.answers[-1]
        result = token_cosines(
            model, tokenizer, sv.vectors[layers[0]], layers[0], ex.question, site=site, answer=top.answer
        )
        title = (
            f"{ex.behaviour} · item {ex.doc_id} · answer at multiplier {format_multiplier(top.multiplier)} · "
            f"layer {layers[0]} ({site})"
        )
        views.append((title, tokens_fragment(result)))
    return views
