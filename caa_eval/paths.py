"""Where caa-eval keeps shipped and cached files (works for wheel and editable installs)."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def tasks_dir() -> Path:
    """The shipped lm-eval task folder: inside the wheel, or `tasks/` beside the package in a checkout."""
    for candidate in (_PKG / "tasks", _PKG.parent / "tasks"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("caa-eval task folder not found; reinstall caa-eval")


def cache_dir() -> Path:
    """User cache root (`CAA_EVAL_CACHE`, else `$XDG_CACHE_HOME/caa-eval`, else `~/.cache/caa-eval`)."""
    root = os.environ.get("CAA_EVAL_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "caa-eval"
