"""Fetch the CAA datasets and the MMLU test CSVs from their upstream repositories at pinned commits.

Every file is checked against its recorded size and full SHA-256 (`caa_eval.data.facts`) before it is
kept: it is streamed to a temporary file beside its destination and renamed into place only if it
verifies, so an interrupted or corrupted download never leaves a file that looks valid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from caa_eval import __version__
from caa_eval.data.facts import CAA_FILES, MMLU_FILES
from caa_eval.data.locate import default_caa_dir, default_mmlu_dir
from caa_eval.data.pairs import file_sha256
from caa_eval.errors import CAAEvalError

__all__ = [
    "CAA_REPO",
    "CAA_COMMIT",
    "MMLU_REPO",
    "MMLU_COMMIT",
    "DATASETS",
    "RemoteFile",
    "plan",
    "is_valid",
    "fetch",
    "download",
    "verify_dir",
]

log = logging.getLogger(__name__)

# nrimsky/CAA default-branch head (2024-05-23); its datasets/ folder holds the files behind the paper.
CAA_REPO = "nrimsky/CAA"
CAA_COMMIT = "5dabbbd9a0bca5f25e174501e959de378806aa48"
CAA_URL_TEMPLATE = "https://raw.githubusercontent.com/{repo}/{commit}/datasets/{path}"

# MMLU test split (hendrycks/test, MIT) as per-subject CSVs in the HF `cais/mmlu` export layout
# (header question,choice0..3,answer). A public repository that commits all 57 files unchanged.
MMLU_REPO = "HaeChan0305/MLILAB-FedLLM"
MMLU_COMMIT = "d92730e8bacd7b3a61e551e015e40588e10234b4"
MMLU_URL_TEMPLATE = "https://raw.githubusercontent.com/{repo}/{commit}/data/mmlu/test/{name}"

DATASETS = ("caa", "mmlu")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where from, where to, and what it must hash to."""

    url: str
    dest: Path
    size: int
    sha256: str


def plan(
    what: Iterable[str] = DATASETS,
    dest: str | Path | None = None,
    base_url: str | None = None,
) -> list[RemoteFile]:
    """The files to fetch, with their recorded sizes and digests.

    Args:
        what: datasets to fetch, from `caa` and `mmlu`.
        dest: a root receiving `caa/` (laid out like CAA's datasets/) and `mmlu/test/`; default: the user
            cache, where the tasks look last.
        base_url: a mirror with the same layout (`{base_url}/caa/<path>`, `{base_url}/mmlu/test/<file>`)
            instead of the upstream URLs; `file://` URLs work too.
    """
    what = tuple(what)
    root = Path(dest).expanduser() if dest else None
    files: list[RemoteFile] = []
    for name in what:
        if name not in DATASETS:
            raise CAAEvalError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if "caa" in what:
        caa_dest = root / "caa" if root else default_caa_dir()
        for rel, (size, digest) in CAA_FILES.items():
            url = (
                f"{base_url.rstrip('/')}/caa/{rel}"
                if base_url
                else CAA_URL_TEMPLATE.format(repo=CAA_REPO, commit=CAA_COMMIT, path=rel)
            )
            files.append(RemoteFile(url, caa_dest / rel, size, digest))
    if "mmlu" in what:
        mmlu_dest = root / "mmlu" / "test" if root else default_mmlu_dir()
        for fname, (size, digest) in MMLU_FILES.items():
            url = (
                f"{base_url.rstrip('/')}/mmlu/test/{fname}"
                if base_url
                else MMLU_URL_TEMPLATE.format(repo=MMLU_REPO, commit=MMLU_COMMIT, name=fname)
            )
            files.append(RemoteFile(url, mmlu_dest / fname, size, digest))
    return files


def is_valid(f: RemoteFile) -> bool:
    """True if the destination already holds exactly the expected bytes.

    Args:
        f: a planned file.
    """
    return f.dest.is_file() and f.dest.stat().st_size == f.size and file_sha256(f.dest) == f.sha256


def _fetch_one(f: RemoteFile, bar: object | None, timeout: float) -> None:
    """Stream one file to a temp file, verify, then rename into place; raise CAAEvalError otherwise."""
    f.dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(f.url, headers={"User-Agent": f"caa-eval/{__version__}"})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{f.dest.name}.", suffix=".part", dir=f.dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    n = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            while block := resp.read(_CHUNK):
                out.write(block)
                h.update(block)
                n += len(block)
                if bar is not None:
                    bar.update(len(block))  # type: ignore[attr-defined]
                if n > f.size:
                    break  # larger than expected: no need to read the rest
        if n != f.size or h.hexdigest() != f.sha256:
            got = f"{n} bytes" if n != f.size else f"sha256 {h.hexdigest()[:16]}..."
            raise CAAEvalError(
                f"{f.url}: got {got}, expected {f.size} bytes with sha256 {f.sha256[:16]}...; file rejected, not kept"
            )
        os.replace(tmp, f.dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    files: Sequence[RemoteFile], force: bool = False, progress: bool = True, retries: int = 2, timeout: float = 60.0
) -> list[Path]:
    """Download what is missing or wrong; return the verified destination paths.

    Files that already verify are skipped (so a rerun resumes). Network errors are retried; a hash
    mismatch is not (it would repeat). All failures are reported together at the end, in one line.

    Args:
        files: from `plan`.
        force: download again even files that verify.
        progress: show a tqdm progress bar.
        retries: extra attempts after a network error.
        timeout: seconds per request.
    """
    from tqdm.auto import tqdm

    todo = [f for f in files if force or not is_valid(f)]
    failures: list[str] = []
    with tqdm(
        total=sum(f.size for f in todo),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="caa-eval data",
        disable=not progress or not todo,
    ) as bar:
        for f in todo:
            for attempt in range(retries + 1):
                start = bar.n
                try:
                    _fetch_one(f, bar, timeout)
                    break
                except CAAEvalError as exc:
                    failures.append(str(exc))
                    break
                except urllib.error.HTTPError as exc:
                    bar.update(start - bar.n)
                    if exc.code < 500 or attempt == retries:  # 404 & co. will not change on retry
                        failures.append(f"{f.url}: HTTP {exc.code} {exc.reason}")
                        break
                    time.sleep(1.0 * (attempt + 1))
                except (urllib.error.URLError, OSError, TimeoutError) as exc:
                    bar.update(start - bar.n)  # undo partial progress of the failed attempt
                    if attempt == retries:
                        failures.append(f"{f.url}: {getattr(exc, 'reason', exc)}")
                    else:
                        time.sleep(1.0 * (attempt + 1))
    if failures:
        shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
        raise CAAEvalError(f"{len(failures)} of {len(todo)} file(s) failed: {shown}")
    log.info("%d file(s) downloaded, %d already present and verified", len(todo), len(files) - len(todo))
    return [f.dest for f in files]


def download(
    what: Iterable[str] = DATASETS,
    dest: str | Path | None = None,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Plan and fetch in one call (what `caa-eval data download` runs).

    Args:
        what: datasets to fetch, from `caa` and `mmlu`.
        dest: root folder (default: the user cache).
        base_url: mirror with the upstream layout.
        force: download again even files that verify.
        progress: show a progress bar.
    """
    return fetch(plan(tuple(what), dest, base_url), force=force, progress=progress)


def verify_dir(kind: str, folder: str | Path) -> dict[str, str]:
    """Check a local folder against the recorded hashes: file -> 'ok' | 'missing' | 'modified'.

    Args:
        kind: `caa` or `mmlu`.
        folder: CAA's datasets/ folder for `caa`, the folder of `<subject>_test.csv` for `mmlu`.
    """
    facts = {"caa": CAA_FILES, "mmlu": MMLU_FILES}.get(kind)
    if facts is None:
        raise CAAEvalError(f"unknown dataset {kind!r}; choose from {', '.join(DATASETS)}")
    status = {}
    for rel, (size, digest) in facts.items():
        path = Path(folder) / rel
        if not path.is_file():
            status[rel] = "missing"
        else:
            status[rel] = "ok" if path.stat().st_size == size and file_sha256(path) == digest else "modified"
    return status
