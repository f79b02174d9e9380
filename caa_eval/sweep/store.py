"""The run folder: its lock, its manifest and the build-then-rename life of a cell.

Written results are never lost: a cell is built in `RUN_DIR/.partial/<id>/`, renamed into `cells/<id>/` when
complete, and `DONE` is written last. Anything without DONE is half-built and is wiped on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import sys
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from caa_eval import __version__
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic
from caa_eval.sweep.config import SweepConfig, caa_behaviours, normalize_warning
from caa_eval.sweep.plan import Cell

__all__ = [
    "FORMAT",
    "RunLock",
    "Manifest",
    "now",
    "sha",
    "to_json",
    "cleanup",
    "is_done",
    "new_stage",
    "commit_cell",
]

FORMAT = "caa-eval/sweep-v1"
log = logging.getLogger(__name__)


def now() -> str:
    """UTC time stamp for manifests and cell files."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha(obj: Any) -> str:
    """Stable hash of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def to_json(obj: Any) -> str:
    """Indented JSON text with a final newline."""
    return json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n"


def _lock_holder(path: Path, other_hosts_alive: bool = False) -> str | None:
    """`pid@host` of a lock file whose process may still run; None for a dead process's (or no) lock.

    Args:
        path: the lock file.
        other_hosts_alive: a lock from another host cannot be checked: count it as alive (True) or stale.
    """
    if not path.exists():
        return None
    holder = path.read_text(encoding="utf-8").strip()
    pid, _, host = holder.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return holder if other_hosts_alive and host else None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return holder
    return holder if int(pid) != os.getpid() else None


class RunLock:
    """RUN_DIR/.lock holding pid@host: two sweeps writing one folder would wipe each other's cells.

    A shard (`--shard i/n`, caa_eval.sweep.shard) holds `.lock.shard-i-of-n` instead: shards of one split
    share the folder; a whole sweep, or a shard of another split, is refused while one of them runs.
    """

    def __init__(self, run_dir: Path, shard: Any = None):
        self.shard = shard
        self.path = run_dir / (".lock" if shard is None else f".lock.shard-{shard.label}")
        self.owned = False

    def __enter__(self) -> RunLock:
        holder = _lock_holder(self.path)
        if holder:
            pid = holder.partition("@")[0]
            raise CAAEvalError(
                f"{self.path.parent}: another sweep (pid {pid}) is writing this folder; wait for it "
                f"or stop it (a stale lock from a dead process is taken over automatically)"
            )
        for other in sorted(self.path.parent.glob(".lock*")):
            holder = _lock_holder(other, other_hosts_alive=True) if other != self.path else None
            split = re.fullmatch(r"\.lock\.shard-(\d+)-of-(\d+)", other.name)
            if not holder or (split and self.shard is not None and int(split[2]) == self.shard.count):
                continue
            gone = f"(if that process is gone, delete {other})"
            if split is None:
                raise CAAEvalError(
                    f"{self.path.parent}: a sweep without --shard ({holder}) is writing this folder; wait for it {gone}"
                )
            if self.shard is None:
                raise CAAEvalError(
                    f"{self.path.parent}: shard {split[1]}/{split[2]} ({holder}) is running in this "
                    f"folder; run the missing shards with --shard i/{split[2]}, or wait {gone}"
                )
            raise CAAEvalError(
                f"{self.path.parent}: this folder is being swept split into {split[2]} shards "
                f"({holder}); use --shard i/{split[2]} {gone}"
            )
        write_atomic(self.path, f"{os.getpid()}@{socket.gethostname()}\n")
        self.owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            with contextlib.suppress(OSError):
                self.path.unlink()


def is_done(run_dir: Path, cell_id: str) -> bool:
    """A cell is finished exactly when its DONE file exists."""
    return (run_dir / "cells" / cell_id / "DONE").exists()


def cleanup(run_dir: Path, only: Collection[str] | None = None) -> list[str]:
    """Remove half-built cells: everything in .partial/, and cells/ folders without DONE; for the whole run
    (no shard) also the temporary files of writes a kill interrupted (`.manifest.json.*.tmp`). Returns their names.

    Args:
        run_dir: the run folder.
        only: a shard's cell ids: leave the other shards' (possibly in-progress) cells alone.
    """
    wiped = []
    partial = run_dir / ".partial"
    if partial.is_dir():
        for p in partial.iterdir():
            if only is not None and p.name not in only:
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            wiped.append(p.name)
    cells = run_dir / "cells"
    if cells.is_dir():
        for p in cells.iterdir():
            if only is not None and p.name not in only:
                continue
            if p.is_dir() and not (p / "DONE").exists():
                shutil.rmtree(p, ignore_errors=True)
                wiped.append(p.name)
    if only is None:  # under the run's lock no other process writes here; a shard leaves them to their writers
        for p in run_dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            wiped.append(p.name)
    return wiped


def new_stage(run_dir: Path, cell_id: str) -> Path:
    """An empty RUN_DIR/.partial/<id>/ to build a cell in."""
    stage = run_dir / ".partial" / cell_id
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def commit_cell(run_dir: Path, stage: Path, cell_id: str) -> Path:
    """Move a complete stage folder to cells/<id>/ and write DONE, last and atomically."""
    final = run_dir / "cells" / cell_id
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # a folder without DONE from an earlier crash
        shutil.rmtree(final)
    os.replace(stage, final)
    write_atomic(final / "DONE", now() + "\n")
    return final


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"caa-eval": __version__}
    for dist in ("lm_eval", "torch", "transformers", "peft", "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    out["python"] = platform.python_version()
    return out


class Manifest:
    """RUN_DIR/manifest.json: the resolved config, versions, normalisation, models, vector files, one entry
    per run (status running/complete/interrupted/failed/killed) and the cell list with what is done."""

    def __init__(self, run_dir: Path, cfg: SweepConfig, cells: list[Cell], skipped: list[str], shard: Any = None):
        self.run_dir, self.cells = run_dir, cells
        self.shard = None if shard is None else str(shard)  # shards merge into one file (caa_eval.sweep.shard)
        self.path = run_dir / "manifest.json"
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            with contextlib.suppress(OSError, ValueError):
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
        self.run: dict[str, Any] = {
            "started": now(),
            "ended": None,
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "argv": sys.argv,
            "config_sha256": sha(cfg.to_dict()),
            "cells_run": [],
            "cells_skipped": sorted(skipped),
        }
        self.data.update(
            {
                "format": FORMAT,
                "config": cfg.to_dict(),
                "config_file": cfg.source,
                "versions": _versions(),
                "platform": platform.platform(),
                "started": self.data.get("started") or self.run["started"],
                "ended": None,
                "normalize": {
                    "used": cfg.normalize,
                    "by_default": cfg.normalize_by_default,
                    "caa_behaviours": caa_behaviours(cfg.behaviours),
                    "note": normalize_warning(cfg),
                },
            }
        )
        self.data.setdefault("models", {})
        if self.shard is not None:
            self.run["shard"] = self.shard
        self.owned_runs = [self.run]
        for old_run in self.data.get("runs", []):
            # we hold the lock (of our shard): that process died without cleaning up
            if old_run.get("status") == "running" and (self.shard is None or old_run.get("shard") == self.shard):
                old_run["status"] = "killed"
                self.owned_runs.append(old_run)
        self.data["runs"] = list(self.data.get("runs", [])) + [self.run]

    def save(self) -> None:
        """Write the manifest (atomically) with the current done-state of every cell."""
        self.data["cells"] = [
            {
                "id": c.id,
                "condition": c.condition,
                "behaviour": c.behaviour,
                "layer": c.layer,
                "site": c.site,
                "positions": c.positions,
                "multiplier": c.multiplier,
                "tasks": c.tasks,
                "done": is_done(self.run_dir, c.id),
            }
            for c in self.cells
        ]
        if self.shard is None:
            write_atomic(self.path, to_json(self.data))
            return
        from caa_eval.sweep.shard import folder_lock, merge_manifest

        with folder_lock(self.run_dir / ".manifest.lock", "the manifest"):
            on_disk: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                on_disk = json.loads(self.path.read_text(encoding="utf-8"))
            write_atomic(self.path, to_json(merge_manifest(on_disk, self.data, self.owned_runs)))

    def finish(self, status: str, error: BaseException | None = None) -> None:
        """Record how this run ended and save (never raises: the run's own error matters more)."""
        self.run["status"] = status
        if error is not None:
            self.run["error"] = f"{type(error).__name__}: {error}"
        self.run["ended"] = self.data["ended"] = now()
        with contextlib.suppress(Exception):
            self.save()
