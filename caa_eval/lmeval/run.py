"""One lm-eval run of a loaded (steered) model into a folder, in lm-eval's own file formats.

The sweep and the demo load the model once and call this per steering setting; the folder then holds exactly
what `lm_eval --output_path … --log_samples` writes (`results_<date>.json`, `samples_<task>_<date>.jsonl`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError

__all__ = ["evaluate_to_folder", "default_task_manager", "env_info_once"]


def default_task_manager(metadata: dict[str, Any] | None = None) -> Any:
    """lm-eval's TaskManager with caa-eval's tasks registered. Indexing every task folder takes seconds: build it
    once and pass it to each `evaluate_to_folder` call of a process.

    Args:
        metadata: task metadata lm-eval hands to every task (e.g. `{"caa_data_dir": ...}`).
    """
    from lm_eval.tasks import TaskManager

    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
    return TaskManager(metadata=metadata) if metadata else TaskManager()


def evaluate_to_folder(
    lm: Any,
    tasks: list[str],
    folder: Path,
    *,
    task_manager: Any = None,
    model_args: dict[str, Any] | None = None,
    **evaluate_kwargs: Any,
) -> tuple[dict[str, Any], list[Path]]:
    """`lm_eval.simple_evaluate` with the chat template and samples, saved by lm-eval's EvaluationTracker.

    Args:
        lm: a loaded lm-eval model (e.g. `SteeredHFLM` after `set_steering`).
        tasks: lm-eval task names.
        folder: where the results and samples files go (created).
        task_manager: lm-eval TaskManager (default: one that knows caa-eval's tasks).
        model_args: recorded in the results as lm-eval records `--model_args`.
        **evaluate_kwargs: passed to `simple_evaluate` (limit, batch_size, system_instruction, gen_kwargs, …).

    Returns:
        lm-eval's results (without samples) and the files written (results first, then one samples file per task).
    """
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
    if task_manager is None:
        task_manager = default_task_manager()
    folder.mkdir(parents=True, exist_ok=True)
    tracker = EvaluationTracker(output_path=str(folder / "results.json"))  # -> folder/results_<date>.json
    results = lm_eval.simple_evaluate(
        model=lm,
        model_args=model_args or {},
        tasks=list(tasks),
        task_manager=task_manager,
        apply_chat_template=True,
        log_samples=True,
        evaluation_tracker=tracker,
        **evaluate_kwargs,
    )
    if results is None:
        raise CAAEvalError(f"{folder}: lm-eval returned no results (non-zero rank?)")
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"]:
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    # the tracker only logs write failures: check that every file is there before anyone calls the run done
    expected = [folder / f"results_{tracker.date_id}.json"] + [
        folder / f"samples_{t}_{tracker.date_id}.jsonl" for t in results["configs"]
    ]
    absent = [p.name for p in expected if not p.is_file()]
    if absent:
        raise CAAEvalError(f"{folder}: lm-eval did not write {', '.join(absent)} (disk full or not writable?)")
    return results, expected


@contextlib.contextmanager
def env_info_once() -> Iterator[None]:
    """lm-eval adds torch's collect_env report to every results file; it spawns subprocesses (~1-5 s per
    call) and cannot change within one process, so compute it once and reuse it for every run inside."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info
    cached: dict[str, Any] = {}

    def add_env_info(storage: dict[str, Any]) -> None:
        if not cached:
            original(cached)
        storage.update(cached)

    evaluator.add_env_info = add_env_info
    try:
        yield
    finally:
        evaluator.add_env_info = original
