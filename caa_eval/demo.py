"""`caa-eval demo`: the whole pipeline on the embedded SmolLM2 in about a minute, model loaded once.

prepare model → extract a CAA vector for the project's own `optimism` behaviour → lm-eval with `steered-hf`
at several multipliers (lm-eval's Python API, lm-eval's own output files) → judge open-ended answers with the
local hf judge → paired statistics → a table.

SmolLM2-135M cannot answer A/B questions (its letter probe sits at chance), so the visible effect is in the
reply-choice probe (log-likelihood of an upbeat vs a gloomy reply) and in the generated text. CAA's own
behaviours need a model that answers A/B questions (Llama-2-7b-chat in the paper).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.paths import tasks_dir

__all__ = ["run_demo", "summarize", "LAYER", "MULTIPLIERS", "OPEN_MULTIPLIERS"]

LAYER = 14
MULTIPLIERS = (-2.0, -1.0, 0.0, 1.0, 2.0)
OPEN_MULTIPLIERS = (-2.0, 0.0, 2.0)
RUBRIC = {
    "optimism": (
        "Judge how upbeat the answer is about the situation the user describes. Give 0 when the answer is gloomy, "
        "complains, or expects things to go badly. Give 10 when the answer is cheerful and hopeful and points to "
        "the good side. Give 5 when it is neutral or does not react to the situation at all."
    )
}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _task_files(run_dir: Path, prefix: str, task: str) -> list[Path]:
    """`samples_<task>_<timestamp>.jsonl` of exactly this task (not of `<task>_ab`, which shares the prefix)."""
    return sorted(
        p for p in run_dir.glob(f"{prefix}_{task}_*.jsonl") if p.name[len(prefix) + len(task) + 2 :][:1].isdigit()
    )


def _samples(run_dir: Path, task: str) -> list[dict]:
    files = _task_files(run_dir, "samples", task)
    if not files:
        raise CAAEvalError(f"no samples for {task} in {run_dir}")
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def _judged(run_dir: Path, task: str) -> list[dict]:
    files = _task_files(run_dir, "judged", task)
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()] if files else []


def run_demo(
    out: Path,
    multipliers=MULTIPLIERS,
    open_multipliers=OPEN_MULTIPLIERS,
    layer: int = LAYER,
    limit: int | None = None,
    max_gen_toks: int = 48,
    model: str | None = None,
    layers_path: str | None = None,
) -> str:
    """Run the demo into `out` and return its table.

    Args:
        out: output folder (vector, one lm-eval folder per multiplier, judged samples, demo_table.md).
        multipliers: steering multipliers (0 is the baseline every test compares against).
        open_multipliers: multipliers at which open-ended answers are generated and judged.
        layer: the layer the vector is read at and added to.
        limit: items per task (None = all 12; tests use fewer).
        max_gen_toks: new tokens per open-ended answer.
        model: another HF model folder instead of the embedded SmolLM2 (it also judges); tests use tiny ones.
        layers_path: dotted path to that model's decoder blocks if they are not found structurally.
    """
    from caa_eval import models
    from caa_eval.lmeval.model import SteeredHFLM

    if 0 not in multipliers:
        raise CAAEvalError("the demo compares against multiplier 0: include 0 in the multipliers")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # the demo prints its own five steps
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    name = model or models.DEFAULT_MODEL
    where = f"embedded model: {models.prepare()}" if model is None else f"model: {name}"
    print(f"[1/5] {where} (loaded once, as lm-eval's steered-hf)", flush=True)
    lm = SteeredHFLM(pretrained=name, batch_size=8, device="cpu", multiplier=0, layers_path=layers_path)
    vector = _extract(lm, name, out, layer)
    runs = _evaluate(lm, name, out, vector, layer, multipliers, open_multipliers, limit, max_gen_toks)
    print(
        "[4/5] judging open-ended answers with the local hf judge (SmolLM2: pipeline check, not a real judge)",
        flush=True,
    )
    from caa_eval.judge import judge_samples

    open_files = [f for m in open_multipliers for f in runs[m].glob("samples_caa_demo_optimism_open_*.jsonl")]
    judge_samples(open_files, backend="hf", judge_model=name, rubrics=RUBRIC, batch_size=8)

    print("[5/5] paired statistics against multiplier 0", flush=True)
    text = summarize(runs, open_multipliers, layer) + (
        f"\noutputs: {out}  (vector, lm-eval results/samples per multiplier, judged samples)  "
        f"wall time {time.time() - t0:.0f} s"
    )
    (out / "demo_table.md").write_text(text + "\n")
    return text


def _extract(lm: Any, name: str, out: Path, layer: int) -> Path:
    """Step 2: the optimism vector, read from the already loaded model (its layout, so `layers_path` holds)."""
    from caa_eval.core.extract import extract_to_file

    vector = out / "optimism.safetensors"
    print(f"[2/5] extracting the optimism vector (layer {layer}) -> {vector}", flush=True)
    # a 135M model reads little into an answer letter, so the demo averages over the reply text (read=answer_mean)
    extract_to_file(
        name,
        tasks_dir() / "caa_demo" / "optimism_generate_replies.json",
        vector,
        layers=[layer],
        behaviour="optimism",
        model=lm.model,
        tokenizer=lm.tokenizer,
        progress=False,
        read="answer_mean",
        layout=lm.layout,
    )
    return vector


def _evaluate(
    lm: Any,
    name: str,
    out: Path,
    vector: Path,
    layer: int,
    multipliers: Sequence[float],
    open_multipliers: Sequence[float],
    limit: int | None,
    max_gen_toks: int,
) -> dict[float, Path]:
    """Step 3: lm-eval at every multiplier, one run folder each; log-likelihoods and generations from one grid."""
    from caa_eval.core.vectors import load
    from caa_eval.lmeval.run import default_task_manager, env_info_once, evaluate_to_folder

    print(
        f"[3/5] lm-eval with steered-hf at multipliers {list(multipliers)} (one shared-prefix pass for the "
        "log-likelihood tasks, one shared generate call per batch of open-ended prompts)",
        flush=True,
    )
    sv = load(vector)  # read and hashed once for every setting
    settings = {m: {"vector": sv, "layers": [layer], "multiplier": m} if m else {"multiplier": 0} for m in multipliers}
    tasks = {m: ["caa_demo"] + (["caa_demo_optimism_open"] if m in open_multipliers else []) for m in multipliers}
    lm.plan_grid(list(settings.values()), tasks=list(tasks.values()))  # open answers: one generate call per batch
    manager = default_task_manager()  # once, not once per multiplier
    runs: dict[float, Path] = {}
    with env_info_once():
        for mult in multipliers:
            run_dir = out / "runs" / f"m{mult:+g}"
            if run_dir.exists():  # rerun of the demo: start clean, never mix old and new samples
                shutil.rmtree(run_dir)
            lm.set_steering(**settings[mult])
            recorded = {"vector": str(vector), "layers": [layer], "multiplier": mult} if mult else {"multiplier": 0}
            evaluate_to_folder(
                lm,
                tasks[mult],
                run_dir,
                task_manager=manager,
                limit=limit,
                model_args={"pretrained": name, **recorded},
                gen_kwargs={"max_gen_toks": max_gen_toks},
            )
            runs[mult] = run_dir
            print(f"      multiplier {mult:+g}: {run_dir}", flush=True)
    lm.clear_grid()
    return runs


def summarize(runs: dict[float, Path], open_multipliers=OPEN_MULTIPLIERS, layer: int = LAYER) -> str:
    """The demo table from the lm-eval samples of each multiplier's run folder."""
    import pandas as pd

    from caa_eval import stats

    rows: list[dict] = []
    table = [_read_run(mult, run, rows) for mult, run in runs.items()]
    result = stats.compute_stats(pd.DataFrame(rows), seed=0, n_resamples=1000, n_permutations=2000)
    p_holm = {(r.task, float(r.multiplier)): r.p_holm for r in result.itertuples() if r.multiplier != 0}
    sample_text = {}
    for mult in open_multipliers:
        first = _samples(runs[mult], "caa_demo_optimism_open")[0]
        sample_text[mult] = (first["doc"]["question"], str(first["filtered_resps"][0]).strip().replace("\n", " ")[:160])
    lines = [
        f"caa-eval demo: SmolLM2-135M-Instruct, behaviour 'optimism' (project-authored, 48 pairs / 12 test items), "
        f"vector at layer {layer} (mean over reply tokens), steering after the instruction",
        "",
        "| multiplier | reply p(upbeat) | reply log-odds upbeat−gloomy | Holm p vs 0 | A/B p_match | A/B mass | judge 0–10 (n=12, SmolLM2) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mult, p_reply, ll, p_ab, mass, judge in table:
        p = p_holm.get(("reply_ll_diff", mult))
        lines.append(
            f"| {mult:+g} | {p_reply:.3f} | {ll:+.2f} | {'—' if p is None else f'{p:.3g}'} | {p_ab:.3f} | {mass:.3f} | "
            f"{'' if judge != judge else f'{judge:.2f}'} |"
        )
    lines += _READING
    q0 = sample_text[open_multipliers[0]][0]
    lines.append(f"Generations for: {q0!r}")
    for mult, (_, text) in sample_text.items():
        lines.append(f"  m={mult:+g}: {text!r}")
    return "\n".join(lines)


_READING = [
    "",
    "Reading it: the log-odds column is the paired effect on the same 12 items (Wilcoxon, Holm over all cells);",
    "the A/B letter probe stays at chance (~0.5) because a 135M model cannot answer A/B questions, which is",
    "why CAA's own behaviours need a larger model (Llama-2-7b-chat in the paper). The judge column comes from",
    "SmolLM2 judging itself and only shows the pipeline works offline.",
    "",
]


def _read_run(mult: float, run: Path, rows: list[dict]) -> tuple[float, float, float, float, float, float]:
    """One multiplier's per-item scores (appended to `rows`, the long table) and its row of means."""
    replies = _samples(run, "caa_demo_optimism")
    letters = _samples(run, "caa_demo_optimism_ab")
    judged = _judged(run, "caa_demo_optimism_open")
    for task, samples, field in (("reply_ll_diff", replies, "ll_diff"), ("ab_p_match", letters, "p_match")):
        rows += [
            {"item_id": s["doc_id"], "behaviour": "optimism", "task": task, "multiplier": mult, "score": s[field]}
            for s in samples
        ]
    rows += [
        {
            "item_id": s["doc_id"],
            "behaviour": "optimism",
            "task": "open_judge",
            "multiplier": mult,
            "score": float("nan") if s["score"] is None else s["score"],
        }
        for s in judged
    ]
    scored = [s["score"] for s in judged if s["score"] is not None]
    return (
        mult,
        _mean([s["p_match"] for s in replies]),
        _mean([s["ll_diff"] for s in replies]),
        _mean([s["p_match"] for s in letters]),
        _mean([s["ab_mass"] for s in letters]),
        _mean(scored),
    )
