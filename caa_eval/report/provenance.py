"""Where a report's numbers came from, as (field, value) rows: model and fingerprint, vectors and their
normalisation, library versions, the command. Read from a sweep's manifest.json or a run's results files."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

__all__ = ["provenance_rows"]

_RESULTS = re.compile(r"results_.*\.json$")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sweep_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    cfg = manifest.get("config") or {}
    rows = [("sweep config", str(manifest.get("config_file") or "")), ("model", str(cfg.get("model", "")))]
    for name, model in sorted((manifest.get("models") or {}).items()):
        peft = f" + adapter {model['peft']}" if model.get("peft") else ""
        rows.append((f"model [{name}]", f"{model.get('pretrained')}{peft} · fingerprint {model.get('fingerprint')}"))
    for name, vec in sorted((manifest.get("vectors") or {}).items()):
        rows.append(
            (
                f"vector [{name}]",
                f"{vec.get('file')} · sha256 {str(vec.get('sha256', ''))[:16]}… · {vec.get('n_pairs')} pairs · "
                f"normalisation {json.dumps(vec.get('normalization'))}",
            )
        )
    norm = manifest.get("normalize") or {}
    if norm:
        rows.append(("normalisation", f"{'CAA mean norm' if norm.get('used') else 'raw'} {norm.get('note') or ''}"))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())))
    runs = manifest.get("runs") or []
    if runs:
        rows.append(("command", shlex.join(str(a) for a in runs[-1].get("argv") or [])))
        rows.append(("runs", "; ".join(f"{r.get('started')} {r.get('status')}" for r in runs)))
    return rows


def _run_rows(folder: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for path in sorted(p for p in folder.rglob("*.json") if _RESULTS.match(p.name))[:20]:
        res = _json(path)
        config = res.get("config") or {}
        steering = config.get("steering") or res.get("steering") or {}
        rel = path.relative_to(folder).as_posix()
        rows.append((f"run {rel}", f"{config.get('model')} · {config.get('model_args')}"))
        if steering:
            shown = {k: v for k, v in steering.items() if k != "scale"}
            rows.append((f"steering {rel}", json.dumps(shown, sort_keys=True)))
        versions = {k: res.get(k) for k in ("lm_eval_version", "transformers_version", "git_hash") if res.get(k)}
        if versions:
            rows.append((f"versions {rel}", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def provenance_rows(report: dict[str, Any], folder: Path | None) -> list[tuple[str, str]]:
    """The report's own provenance, then the sweep manifest's or the run results' facts.

    Args:
        report: the report.json document.
        folder: the sweep or run folder the report was built from (None for a long table).
    """
    s = report.get("settings") or {}
    rows = [
        ("input", str(report.get("input"))),
        ("report", f"caa-eval {report.get('caa_eval_version')} · {report.get('created')}"),
        (
            "statistics",
            f"{s.get('primary_test')} test, Holm/BH over {report.get('correction', {}).get('n_tests')} tests, "
            f"α {s.get('alpha')}, {s.get('n_resamples')} bootstrap resamples, seed {s.get('seed')}",
        ),
    ]
    if folder is None:
        return rows + [("source", "a long table: it carries no model or vector provenance")]
    manifest = folder / "manifest.json"
    return rows + (_sweep_rows(_json(manifest)) if manifest.is_file() else _run_rows(folder))
