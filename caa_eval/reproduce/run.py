"""`reproduce run`: an experiment's shipped sweep config, with the run's choices, on the existing sweep runner.

Choices: the run folder, `--limit`, the vectors (extracted by the sweep, the default, or CAA's published
raw files imported into the run folder), and for smoke runs another model and a subset of behaviours.
With another model the shipped `dtype: float16` is dropped (lm-eval's `auto`), since the point of such a
run is the pipeline on a small model, often on a CPU; so is CAA's Llama-2 prompt template (`chat_template:
caa-llama2`) unless the model is a Llama-2 too: another model's prompts are written by its own template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.reproduce.estimate import estimate_lines
from caa_eval.reproduce.experiments import Experiment
from caa_eval.sweep import SweepConfig, config_from_dict, plan_cells, run_sweep

__all__ = ["experiment_config", "import_caa_vectors", "run_experiment"]


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise CAAEvalError(f"{path}: the shipped experiment config is damaged; reinstall caa-eval")
    return raw


def _entry_name(entry: Any) -> str:
    return str(entry["name"] if isinstance(entry, dict) else entry)


def _subset(entries: list[Any], wanted: Sequence[str], exp: Experiment) -> list[Any]:
    from caa_eval import vocab

    names = {vocab.caa_behaviour(w) for w in wanted}
    kept = [e for e in entries if vocab.caa_behaviour(_entry_name(e)) in names]
    if len(kept) != len(names):
        have = ", ".join(_entry_name(e) for e in entries)
        raise CAAEvalError(f"--behaviours: {exp.name} has {have}; choose among them")
    return kept


def experiment_config(
    exp: Experiment,
    out: Path | None = None,
    limit: int | float | None = None,
    model: str | None = None,
    behaviours: Sequence[str] | None = None,
    vectors_dir: Path | None = None,
) -> SweepConfig:
    """The experiment's sweep config with the run's choices applied (checked, nothing loaded).

    Args:
        exp: the experiment.
        out: run folder (default outputs/reproduce/NAME).
        limit: items per task (MMLU: per subject), for a reduced run.
        model: another model (a smoke run); the shipped dtype is dropped with it.
        behaviours: a subset of the experiment's behaviours.
        vectors_dir: a folder of raw vector files to steer with (e.g. CAA's, imported).
    """
    raw = _read_yaml(exp.config_path)
    raw["output"] = str((out or Path("outputs/reproduce") / exp.name).resolve())
    if limit is not None:
        raw["limit"] = limit
    if model is not None:
        raw["model"] = model
        raw.pop("dtype", None)
        if "llama-2" not in model.lower():
            _drop_llama2_template(raw.get("conditions") or [])
    if behaviours:
        raw["behaviours"] = _subset(list(raw["behaviours"]), behaviours, exp)
    if vectors_dir is not None:
        raw["vectors"] = {"dir": str(vectors_dir.resolve())}
    return config_from_dict(raw, source=str(exp.config_path), base=exp.config_path.parent)


def _drop_llama2_template(conditions: list) -> None:
    """Remove `chat_template` from the conditions' model_args: it writes Llama-2's `[INST]` prompt."""
    for cond in conditions:
        args = cond.get("model_args") if isinstance(cond, dict) else None
        if isinstance(args, dict) and args.pop("chat_template", None) is not None and not args:
            del cond["model_args"]


def import_caa_vectors(folder: Path, model: str, run_dir: Path) -> Path:
    """Import CAA's published raw vectors (`vectors/<behavior>/vec_layer_<L>_<model>.pt`) for the model.

    Args:
        folder: CAA's `vectors/` folder (raw: the sweep applies CAA's normalisation itself).
        model: the experiment's model id; its last path part names CAA's files (Llama-2-7b-chat-hf).
        run_dir: the run folder; the files go to RUN_DIR/caa_vectors/<model>/.
    """
    from caa_eval.core.caa_layout import detect_normalized, import_caa_dir, read_caa_dir

    if not folder.is_dir():
        raise CAAEvalError(f"--vectors caa {folder}: no such folder; give CAA's vectors/ folder")
    name = Path(model).name
    found = read_caa_dir(folder)
    if name not in found:
        raise CAAEvalError(
            f"--vectors caa {folder}: no vectors of {name} (found: {', '.join(sorted(found)) or 'none'})"
        )
    if detect_normalized(folder, found[name]) is not False:  # checked before anything is written
        raise CAAEvalError(
            f"--vectors caa {folder}: these are CAA's normalised vectors (or cannot tell); give its raw vectors/ "
            "folder (the sweep rescales them itself)"
        )
    import_caa_dir(folder, run_dir / "caa_vectors", normalized=False)
    return run_dir / "caa_vectors" / name


def run_experiment(
    exp: Experiment,
    *,
    out: Path | None = None,
    limit: int | float | None = None,
    model: str | None = None,
    behaviours: Sequence[str] | None = None,
    caa_vectors: Path | None = None,
    dry_run: bool = False,
    print_fn: Callable[[str], None] = print,
) -> SweepConfig:
    """Plan (dry run: cells, forward passes, memory, time) or run an experiment through the sweep.

    Args:
        exp: the experiment.
        out: run folder (default outputs/reproduce/NAME).
        limit: items per task, for a reduced run.
        model: another model for a smoke run.
        behaviours: a subset of the experiment's behaviours.
        caa_vectors: CAA's raw `vectors/` folder to steer with instead of extracting.
        dry_run: print the plan and the estimate, load nothing, write nothing.
        print_fn: where the lines go.
    """
    cfg = experiment_config(exp, out, limit, model, behaviours)
    if caa_vectors is not None and not dry_run:
        cfg = experiment_config(
            exp, out, limit, model, behaviours, import_caa_vectors(caa_vectors, cfg.model, cfg.output)
        )
    print_fn(f"{exp.name}: {exp.title}")
    if dry_run:
        run_sweep(cfg, dry_run=True, print_fn=print_fn)
        for line in estimate_lines(cfg, plan_cells(cfg), extracting=caa_vectors is None):
            print_fn(line)
        if caa_vectors is not None:
            print_fn(f"vectors: CAA's files from {caa_vectors}, imported into {cfg.output / 'caa_vectors'} when run")
        return cfg
    run_sweep(cfg, progress=True, print_fn=print_fn)
    print_fn(f"verdict: caa-eval reproduce compare {cfg.output} --reference {exp.name}")
    return cfg
