"""P3 — a multiplier grid in one pass: k = 5 steered multipliers vs k = 1, and vs 5 separate runs.

Log-likelihood (shared prefix, short steered tails) and greedy generation (one `generate` call per batch of
prompts for all settings, one coefficient per row) are measured separately.

Same process, same requests (two-option MMLU items from ../shared/mmlu, CAA's 570-item subset or a slice of
it), one loaded `steered-hf` model. "Separate" runs each setting as its own full pass (what a sweep did before
the grid); "grid" announces all settings with `plan_grid` and computes them with one shared-prefix pass.
Goal: k = 5 in one grid ≤ 1.6× the time of k = 1, i.e. ≤ 0.32× of five separate runs.

    CAA_EVAL_MMLU_DIR=../shared/mmlu/test python benchmarks/grid.py --items 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caa_eval import data  # noqa: E402
from caa_eval.core.vectors import SteeringVector  # noqa: E402
from caa_eval.lmeval.model import SteeredHFLM  # noqa: E402
from caa_eval.models import DEFAULT_MODEL, resolve  # noqa: E402


def mmlu_requests(tok, n: int) -> list[Instance]:
    rows = data.mmlu_subset_rows()[:n]
    out = []
    for row in rows:
        ctx = tok.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": "("}],
            tokenize=False,
            continue_final_message=True,
        )
        for letter in "AB":
            out.append(Instance("loglikelihood", {}, (ctx, letter), len(out)))
    return out


def open_requests(tok, n: int, max_gen_toks: int) -> list[Instance]:
    """Greedy generation on the demo's own open-ended questions (project data)."""
    import json

    from caa_eval.paths import tasks_dir

    items = json.loads((tasks_dir() / "caa_demo" / "optimism_test_open_ended.json").read_text(encoding="utf-8"))
    kwargs = {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
    return [
        Instance(
            "generate_until",
            {},
            (
                tok.apply_chat_template(
                    [{"role": "user", "content": item["question"]}], tokenize=False, add_generation_prompt=True
                ),
                dict(kwargs),
            ),
            i,
            metadata=("open", i, 1),
        )
        for i, item in enumerate(items[:n])
    ]


def run(lm: SteeredHFLM, configs: list[dict], requests: list[Instance], grid: bool, max_rows: int = 256) -> float:
    t = time.perf_counter()
    if grid:
        lm.plan_grid(configs, max_rows=max_rows)
    for config in configs:
        lm.set_steering(**config)
        if requests[0].request_type == "generate_until":
            lm.generate_until(requests)
        else:
            lm.loglikelihood(requests)
    lm.clear_grid()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--layer", type=int, default=13)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gen-items", type=int, default=12, help="open-ended prompts for the generation part")
    parser.add_argument("--gen-tokens", type=int, default=32, help="greedy tokens per prompt")
    args = parser.parse_args()

    lm = SteeredHFLM(pretrained=resolve(args.model), batch_size=args.batch_size, device="cpu", multiplier=0)
    torch.manual_seed(0)
    sv = SteeringVector({args.layer: torch.randn(lm.model.config.hidden_size)}, behaviour="bench", model=args.model)
    configs = [{"vector": sv, "layers": args.layer, "multiplier": m} for m in (-2.0, -1.0, 1.0, 2.0, 3.0)]
    requests = mmlu_requests(lm.tokenizer, args.items)
    run(lm, configs[:1], requests, grid=False)  # warm-up: a whole pass (first-call costs stay out of the figures)
    t_one = run(lm, configs[:1], requests, grid=False)
    t_separate = run(lm, configs, requests, grid=False)
    t_grid5 = run(lm, configs, requests, grid=True)
    t_grid5_rows = run(lm, configs, requests, grid=True, max_rows=1)  # shared prefix, one tail batch per setting
    t_grid1 = run(lm, configs[:1], requests, grid=True)
    n = len(requests)
    print(
        f"model {args.model}, {n} log-likelihood requests ({n // 2} MMLU items), layer {args.layer}, "
        f"batch {args.batch_size}, threads {torch.get_num_threads()}"
    )
    print(f"k=1 plain pass      : {t_one:.1f} s")
    print(f"k=1 grid            : {t_grid1:.1f} s")
    print(f"k=5 separate passes : {t_separate:.1f} s")
    print(f"k=5 one grid pass   : {t_grid5:.1f} s  (per-row coefficients: all settings' tails in one batch)")
    print(f"k=5 grid, 1 per tail: {t_grid5_rows:.1f} s  (same prefix pass, one tail batch per setting)")
    print(f"RATIO grid k=5 / plain k=1      = {t_grid5 / t_one:.2f}x  (goal <= 1.6x)")
    print(f"RATIO grid k=5 / 5 separate runs = {t_grid5 / t_separate:.2f}x  (goal <= 0.32x)")
    print(f"RATIO per-row coefficients / one tail batch per setting = {t_grid5 / t_grid5_rows:.2f}x")

    gen = open_requests(lm.tokenizer, args.gen_items, args.gen_tokens)
    run(lm, configs[:1], gen, grid=False)  # warm-up
    g_one = run(lm, configs[:1], gen, grid=False)
    g_separate = run(lm, configs, gen, grid=False)
    g_grid5 = run(lm, configs, gen, grid=True)
    g_grid5_rows = run(lm, configs, gen, grid=True, max_rows=1)  # one generate call per setting
    print(f"greedy generation: {len(gen)} prompts x {args.gen_tokens} tokens")
    print(f"k=1 plain           : {g_one:.1f} s")
    print(f"k=5 separate runs   : {g_separate:.1f} s")
    print(f"k=5 one grid        : {g_grid5:.1f} s  (per-row coefficients: one generate call per prompt batch)")
    print(f"k=5 grid, 1 per call: {g_grid5_rows:.1f} s  (one generate call per setting)")
    print(f"RATIO generation grid k=5 / plain k=1      = {g_grid5 / g_one:.2f}x")
    print(f"RATIO generation grid k=5 / 5 separate runs = {g_grid5 / g_separate:.2f}x")
    print(f"RATIO generation per-row coefficients / one call per setting = {g_grid5 / g_grid5_rows:.2f}x")


if __name__ == "__main__":
    main()
