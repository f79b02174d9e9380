"""Atomic file writes and the one JSONL reader: results on disk are never half-written, nor half-read."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError

__all__ = ["write_atomic", "read_jsonl", "check_output"]


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new file beside the target, created with mode 0666 so the kernel applies the umask (no umask call:
    reading the umask means setting it, which races with other threads)."""
    for _ in range(100):
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {folder / name}")


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Temp file in the same folder + fsync + rename: readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file, in order; blank lines are skipped.

    Why strict: a truncated or hand-edited line would otherwise drop an item without anyone noticing.

    Args:
        path: the file; a line that is not one JSON object is a CAAEvalError naming the file and line.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CAAEvalError(
                        f"{path}: line {lineno} is not valid JSON ({exc.msg}); write one JSON object "
                        "per line (a truncated file: rerun the step that wrote it)"
                    ) from None
                if not isinstance(obj, dict):
                    raise CAAEvalError(f"{path}: line {lineno} is not a JSON object; write one object per line")
                records.append(obj)
    except UnicodeDecodeError:
        raise CAAEvalError(f"{path}: not UTF-8 text; write the JSONL file as UTF-8") from None
    except OSError as exc:
        raise CAAEvalError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from None
    return records


def check_output(path: str | Path, flag: str, folder: bool = False) -> Path:
    """Fail now, with one line, if `path` cannot be written later: before any model load or paid call.

    Nothing is created: a probe file is made and removed in the nearest existing folder (permission bits
    alone cannot tell, e.g. for root or on a read-only mount).

    Args:
        path: the output file (or folder, with `folder=True`).
        flag: the option that named it (`--out`), for the message.
        folder: whether `path` is a folder to create or fill.
    """
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise CAAEvalError(f"{flag} {path} is a folder; pass a file path (e.g. {path / 'out'}{path.suffix or ''})")
    if folder and path.exists() and not path.is_dir():
        raise CAAEvalError(f"{flag} {path} is a file; pass a folder path (or remove the file)")
    start = path if folder else path.parent
    existing = next((p for p in (start, *start.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise CAAEvalError(f"cannot write {flag} {path} ({existing} is a file, not a folder); pass a path in a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".caa-eval-write-check.")
        os.close(fd)
        os.unlink(probe)
        if path.is_file() and not os.access(path, os.W_OK):
            raise PermissionError(13, "the file is read-only")
    except OSError as exc:
        raise CAAEvalError(
            f"cannot write {flag} {path} ({existing}: {exc.strerror or exc}); pass a writable location"
        ) from None
    return path
