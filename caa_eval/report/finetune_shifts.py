"""What each finetune condition's adapter did to p(match), as measured when it was trained: explains a flat
row of the Table-4 pivots (an adapter that did not move the behaviour cannot show "finetune + steer")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caa_eval.vocab import FINETUNE_DIR

__all__ = ["finetune_shifts", "shifts_markdown"]


def finetune_shifts(run_dir: str | Path) -> list[dict[str, Any]]:
    """How far each finetune condition's adapter moved p(match), from its `caa_finetune.json` in the sweep folder.

    One entry per condition and behaviour (RUN_DIR/finetunes/<condition>/<behaviour>/): the adapter's
    direction and p(match) before/after on its training pairs and held-out slice (None for adapters made
    before caa-eval measured finetunes). Empty for folders without finetunes.

    Args:
        run_dir: a sweep folder.
    """
    from caa_eval.finetune.adapter import INFO_FILE, read_info

    out = []
    for record in sorted(Path(run_dir).glob(f"{FINETUNE_DIR}/*/*/{INFO_FILE}")):
        info = read_info(record.parent) or {}
        before, after = info.get("p_match_before"), info.get("p_match_after")
        out.append(
            {
                "condition": record.parent.parent.name,
                "behaviour": info.get("behaviour", record.parent.name),
                "direction": info.get("direction"),
                "steps": info.get("steps"),
                "p_match_before": before,
                "p_match_after": after,
                "heldout_change": after["heldout"] - before["heldout"] if before and after else None,
                "target_shift": (info.get("hyperparameters") or {}).get("target_shift"),
                "target_reached": info.get("target_reached"),
            }
        )
    return out


def shifts_markdown(shifts: list[dict[str, Any]]) -> list[str]:
    """One line per adapter: "pos adapter moved held-out p(match) +0.31 (0.50 → 0.81; training pairs ...)".

    Args:
        shifts: `finetune_shifts(run_dir)` (report.json's `finetune_shifts`).
    """
    lines = []
    for f in shifts:
        head = f"- {f['behaviour']}, condition {f['condition']}: {f['direction']} adapter"
        if f["heldout_change"] is None:
            lines.append(f"{head}: p(match) not measured (made before caa-eval measured finetunes; retrain it)")
            continue
        b, a = f["p_match_before"], f["p_match_after"]
        target = ""
        if f["target_shift"] is not None:
            target = f"; target {f['target_shift']:g} {'reached' if f['target_reached'] else 'not reached'}"
        lines.append(
            f"{head} moved held-out p(match) {f['heldout_change']:+.2f} ({b['heldout']:.3f} → {a['heldout']:.3f}; "
            f"training pairs {b['train']:.3f} → {a['train']:.3f}; {f['steps']} steps{target})"
        )
    return lines
