"""Sweep shards: one sweep's cells split over processes or cluster jobs that share one run folder.

`caa-eval sweep CONFIG --shard i/n` (0 <= i < n) runs a fixed, disjoint share of the cells. Under
`accelerate launch` / torchrun, the share comes from RANK / WORLD_SIZE. Shares are made of whole *units*:
cells that load the same model and see the same requests. So the one-pass grid of a task and the model
load are not split. Units go, largest first, to the least-loaded shard. A unit is split only when there
are fewer units than shards. The split is a function of the config and n alone, so a killed shard rerun
with the same `--shard i/n` takes the same cells, and cells already DONE (by anyone) are skipped.

The shards share the folder, so some steps are done under an exclusive lock: vector extraction and
normalisation, each finetune adapter, the merged manifest, and the report. The lock is `flock` on a file
in the run folder; the kernel releases it when its process dies. On a cluster, the shared folder must
support file locks (local disks, NFSv4, Lustre mounted with `flock`, GPFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from caa_eval.errors import CAAEvalError

if TYPE_CHECKING:
    from caa_eval.sweep.config import SweepConfig
    from caa_eval.sweep.plan import Cell

__all__ = [
    "Shard",
    "parse_shard",
    "shard_from_env",
    "assign",
    "shard_cells",
    "folder_lock",
    "shared_step",
    "merge_manifest",
]

T = TypeVar("T")
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """File-name spelling: `0-of-2`."""
        return f"{self.index}-of-{self.count}"


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a process started by `accelerate launch` / torchrun (RANK of WORLD_SIZE), else None.

    Args:
        environ: the environment to read (default `os.environ`).
    """
    env = os.environ if environ is None else environ
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    except ValueError:
        return None
    return Shard(rank, world) if world > 1 and 0 <= rank < world else None


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """`--shard i/n` -> Shard; `auto` -> `shard_from_env` (None when not launched as several processes).

    Args:
        text: the flag's value, or None when it was not given.
        environ: the environment for `auto` (default `os.environ`).
    """
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return shard_from_env(environ)
    match = _SHARD_RE.match(text)
    if not match:
        raise CAAEvalError(f"--shard {text!r} not understood; write --shard i/n with 0 <= i < n, e.g. --shard 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise CAAEvalError(f"--shard {text}: shard numbers run from 0 to n-1; write e.g. --shard 0/{max(count, 2)}")
    return Shard(index, count)


def assign(items: Sequence[T], unit_of: Callable[[T], Hashable], shard: Shard) -> list[T]:
    """The items of one shard: units (items with equal `unit_of`) kept together, balanced by item count.

    Deterministic in (items, their order, shard.count); the shards' shares are disjoint and cover `items`.

    Args:
        items: every item of the plan, in plan order.
        unit_of: the unit key of an item (e.g. model + condition + tasks of a cell).
        shard: which share to return.
    """
    units: dict[Hashable, list[int]] = {}
    for position, item in enumerate(items):
        units.setdefault(unit_of(item), []).append(position)
    groups = list(units.values())
    while len(groups) < shard.count and any(len(g) > 1 for g in groups):
        largest = max(range(len(groups)), key=lambda k: (len(groups[k]), -k))
        g = groups.pop(largest)
        half = (len(g) + 1) // 2
        groups[largest:largest] = [g[:half], g[half:]]
    load = [0] * shard.count
    mine: list[int] = []
    for g in sorted(groups, key=lambda g: (-len(g), g[0])):  # largest first, ties in plan order
        target = min(range(shard.count), key=lambda s: (load[s], s))
        load[target] += len(g)
        if target == shard.index:
            mine.extend(g)
    return [items[p] for p in sorted(mine)]


@contextlib.contextmanager
def folder_lock(path: Path, what: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if needed) for the body; waits for other holders.

    Args:
        path: the lock file (in the shared run folder).
        what: what the lock guards, for the waiting message.
        on_wait: called once with a message if another process holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(f"waiting for another shard ({what})")
            started = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            if on_wait is not None:
                on_wait(f"got the lock for {what} after {time.monotonic() - started:.0f} s")
        except OSError as exc:
            raise CAAEvalError(
                f"{path}: cannot lock a file in the run folder ({exc.strerror}); shards need a "
                "folder with file locks (local disk, NFSv4, Lustre with flock, GPFS)"
            ) from None
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _run_key(run: Mapping[str, object]) -> tuple:
    return run.get("started"), run.get("pid"), run.get("host")


def merge_manifest(on_disk: dict, mine: dict, owned_runs: Sequence[Mapping[str, object]]) -> dict:
    """The one manifest of a folder several shards write: this shard's view merged into the file's.

    Runs of other shards are taken from the file, the runs this shard wrote (its own, and dead runs of its
    shard it marked killed) from `mine`; `models` and `finetunes` are unions; the folder-wide `ended` is
    set only when no run is still running.

    Args:
        on_disk: manifest.json as it is now (empty if absent).
        mine: this shard's manifest data (`Manifest.data`).
        owned_runs: the run entries this shard wrote.
    """
    owned = {_run_key(r): r for r in owned_runs}
    runs = [owned.pop(_run_key(r), r) for r in on_disk.get("runs", [])] + list(owned.values())
    merged = {**on_disk, **mine, "runs": runs}
    for key in ("models", "finetunes"):
        if key in on_disk or key in mine:
            merged[key] = {**on_disk.get(key, {}), **mine.get(key, {})}
    for key in ("vectors", "model_fingerprint"):
        if not mine.get(key) and on_disk.get(key):
            merged[key] = on_disk[key]
    starts = [s for s in (on_disk.get("started"), mine.get("started")) if s]
    merged["started"] = min(starts) if starts else None
    running = any(r.get("status") == "running" for r in runs)
    merged["ended"] = None if running else max((str(r.get("ended")) for r in runs if r.get("ended")), default=None)
    return merged


def shard_cells(cfg: SweepConfig, cells: list[Cell], shard: Shard | None) -> list[Cell]:
    """A shard's cells; units are cells with the same model (a finetune condition's adapter included) and
    the same task list, which share their requests' prompt passes and the model load.

    Args:
        cfg: the sweep config.
        cells: `plan_cells(cfg)`.
        shard: the shard, or None for all cells.
    """
    if shard is None:
        return cells
    from caa_eval.sweep.finetunes import cell_condition

    conds = {c.name: c for c in cfg.conditions}
    return assign(
        cells,
        lambda c: (
            cell_condition(cfg, conds[c.condition], c.behaviour).model_key(cfg.model),
            c.condition,
            tuple(c.tasks),
        ),
        shard,
    )


def shared_step(run_dir: Path, shard: Shard | None, what: str, print_fn: Callable[[str], None]) -> Any:
    """Context for work the shards of one folder do once (extraction, an adapter, the report): a lock when
    sharded, nothing otherwise.

    Args:
        run_dir: the shared run folder (the lock file goes there).
        shard: this process's shard, or None.
        what: the step, for the lock file's name and the waiting message.
        print_fn: where the waiting message goes.
    """
    if shard is None:
        return contextlib.nullcontext()
    name = "".join(ch if ch.isalnum() else "-" for ch in what)
    return folder_lock(run_dir / f".{name}.lock", what, lambda msg: print_fn(f"shard {shard}: {msg}"))
