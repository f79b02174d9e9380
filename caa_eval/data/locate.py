"""Where the CAA datasets and the MMLU test CSVs live: nothing is shipped, they are found at run time.

Lookup order, the same for tasks, CLIs and tests: an explicit folder (task metadata `caa_data_dir` /
`mmlu_dir`, `--metadata`, a CLI flag) > the environment (`CAA_EVAL_DATA_DIR`, `CAA_EVAL_MMLU_DIR`) > the user
cache that `caa-eval data download` fills. A folder given explicitly or by the environment that does not hold
the data is an error, never silently replaced by another copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from caa_eval.errors import CAAEvalError
from caa_eval.paths import cache_dir
from caa_eval.vocab import caa_behaviour

__all__ = [
    "CAA_DATA_ENV",
    "MMLU_DIR_ENV",
    "SPLIT_FILES",
    "FETCH_CAA_HINT",
    "FETCH_MMLU_HINT",
    "DataLocation",
    "default_caa_dir",
    "default_mmlu_dir",
    "locate_caa_data",
    "locate_mmlu",
    "caa_data_file",
    "resolve_behaviour_pairs",
]

CAA_DATA_ENV = "CAA_EVAL_DATA_DIR"
MMLU_DIR_ENV = "CAA_EVAL_MMLU_DIR"
SPLIT_FILES = {
    "generate": "generate/{b}/generate_dataset.json",
    "test": "test/{b}/test_dataset_ab.json",
    "open_ended": "test/{b}/test_dataset_open_ended.json",
}
"""Split name -> file under CAA's datasets/ folder (`{b}` = CAA's behaviour folder name)."""

FETCH_CAA_HINT = (
    f"run `caa-eval data download`, or set {CAA_DATA_ENV} to a folder laid out like CAA's datasets/ (generate/, test/)"
)
FETCH_MMLU_HINT = (
    f"run `caa-eval data download`, or set {MMLU_DIR_ENV} to a folder holding the MMLU test CSVs (<subject>_test.csv)"
)


def default_caa_dir() -> Path:
    """Where `caa-eval data download` puts the CAA datasets by default (the lookup's last step)."""
    return cache_dir() / "data" / "caa"


def default_mmlu_dir() -> Path:
    """Where `caa-eval data download` puts the MMLU test CSVs by default (the lookup's last step)."""
    return cache_dir() / "data" / "mmlu" / "test"


@dataclass(frozen=True)
class DataLocation:
    """A resolved data folder and why it was chosen (shown by `caa-eval tasks` / `caa-eval data status`)."""

    path: Path
    source: str  # "metadata", "env CAA_EVAL_DATA_DIR", "cache"


def _caa_root(path: Path) -> Path | None:
    """Accept CAA's datasets/ folder itself or a checkout of the CAA repository (which holds datasets/)."""
    for cand in (path, path / "datasets"):
        if (cand / "test").is_dir() or (cand / "generate").is_dir():
            return cand
    return None


def _mmlu_root(path: Path) -> Path | None:
    """Accept the folder of `<subject>_test.csv` files or a parent holding `test/` (or `data/test/`)."""
    for cand in (path, path / "test", path / "data" / "test"):
        if cand.is_dir() and any(cand.glob("*_test.csv")):
            return cand
    return None


def _locate(
    explicit: str | Path | None, env: str, default: Path, root: Callable[[Path], Path | None], what: str, how: str
) -> DataLocation:
    if explicit:
        path, source = Path(explicit).expanduser(), "metadata"
    elif os.environ.get(env):
        path, source = Path(os.environ[env]).expanduser(), f"env {env}"
    else:
        path, source = default, "cache"
    found = root(path) if path.is_dir() else None
    if found is None:
        if source == "cache":
            raise CAAEvalError(f"{what} not found (no {env}, nothing in {default}); {how}")
        raise CAAEvalError(f"{what} not found at {path} (from {source}); {how}")
    return DataLocation(found, source)


def locate_caa_data(path: str | Path | None = None) -> DataLocation:
    """CAA's datasets/ folder: `path` > $CAA_EVAL_DATA_DIR > the user cache.

    Args:
        path: an explicit folder (task metadata `caa_data_dir`); a wrong one is an error, not a fallback.
    """
    return _locate(path, CAA_DATA_ENV, default_caa_dir(), _caa_root, "CAA datasets", FETCH_CAA_HINT)


def locate_mmlu(path: str | Path | None = None) -> DataLocation:
    """The folder of MMLU test CSVs: `path` > $CAA_EVAL_MMLU_DIR > the user cache.

    Args:
        path: an explicit folder (task metadata `mmlu_dir`); a wrong one is an error, not a fallback.
    """
    return _locate(path, MMLU_DIR_ENV, default_mmlu_dir(), _mmlu_root, "MMLU test CSVs", FETCH_MMLU_HINT)


def caa_data_file(relative: str, data_dir: str | Path | None = None) -> Path:
    """A file under CAA's datasets/ folder, with an error that says where it looked and how to fix it.

    Args:
        relative: path under datasets/, e.g. `test/refusal/test_dataset_ab.json`.
        data_dir: explicit datasets/ folder (else the environment, then the user cache).
    """
    loc = locate_caa_data(data_dir)
    path = loc.path / relative
    if not path.is_file():
        raise CAAEvalError(
            f"{relative} missing from the CAA data folder {loc.path} (from {loc.source}); {FETCH_CAA_HINT}"
        )
    return path


def resolve_behaviour_pairs(behaviour: str, split: str = "generate", data_dir: str | Path | None = None) -> Path:
    """The file of one of CAA's behaviours by name, or the user's own file passed as a path.

    Args:
        behaviour: a CAA behaviour in any spelling (`sycophancy`, `coordinate_other_ais`), or a `.json` /
            `.jsonl` path, returned as is so that CLIs can take either.
        split: `generate` (vector pairs), `test` (A/B items) or `open_ended`.
        data_dir: explicit datasets/ folder (else the environment, then the user cache).
    """
    if split not in SPLIT_FILES:
        raise CAAEvalError(f"unknown split {split!r}; choose from {', '.join(SPLIT_FILES)}")
    as_path = Path(behaviour).expanduser()
    if as_path.suffix in (".json", ".jsonl"):
        if not as_path.is_file():
            raise CAAEvalError(f"{as_path}: file not found (give a contrast-pair file or a CAA behaviour name)")
        return as_path
    return caa_data_file(SPLIT_FILES[split].format(b=caa_behaviour(behaviour)), data_dir)
