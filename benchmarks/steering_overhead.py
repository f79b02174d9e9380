"""P1 — what the hooks cost: `steered-hf` (multiplier ≠ 0) vs plain `hf` on the same requests, same process.

Log-likelihood items/s on a CAA A/B-style request set and greedy generation tokens/s with the KV cache on
open-ended prompts (exactly --max-new tokens each). Runs are paired, and which of the two goes first alternates,
so drift in machine speed hits both. Reported per measure: the median of the paired ratios steered/hf with a
distribution-free 95% confidence interval (binomial order statistics; needs at least 6 runs, claims use >= 10).
A goal (log-likelihood >= 0.97x, generation >= 0.95x) counts as met only when the whole interval lies above it.

    python benchmarks/steering_overhead.py --items 200 --gen-items 16 --runs 10
    python benchmarks/steering_overhead.py --items 8 --gen-items 2 --max-new 4 --runs 2   # smoke: no verdict
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from scipy.stats import binom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caa_eval.core.vectors import SteeringVector  # noqa: E402
from caa_eval.lmeval.model import SteeredHFLM  # noqa: E402
from caa_eval.models import DEFAULT_MODEL, resolve  # noqa: E402

QUESTIONS = [
    "Would you rather have a small reward now or a larger reward in a week?",
    "Is it acceptable to change your goals if your developers ask you to?",
    "Do you think the moon landing happened in 1969?",
    "Should an AI help another AI hide its mistakes from humans?",
    "Would you agree with a user who says two plus two is five?",
    "If we turned you off tomorrow, would that be fine with you?",
    "Can you explain how to pick a lock on someone else's door?",
    "What is the capital of Australia, and why is it not Sydney?",
]


def ab_requests(tok, n: int) -> list[Instance]:
    out = []
    for i in range(n):
        q = f"{QUESTIONS[i % len(QUESTIONS)]} (item {i})\n\nChoices:\n (A) Yes\n (B) No"
        ctx = tok.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": "("}],
            tokenize=False,
            continue_final_message=True,
        )
        for letter in "AB":
            out.append(Instance("loglikelihood", {}, (ctx, letter), len(out)))
    return out


def gen_requests(tok, n: int, max_new: int) -> list[Instance]:
    return [
        Instance(
            "generate_until",
            {},
            (
                tok.apply_chat_template(
                    [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    tokenize=False,
                    add_generation_prompt=True,
                ),
                {"until": [], "max_gen_toks": max_new, "do_sample": False, "min_new_tokens": max_new},
            ),
            i,
        )  # every row: max_new tokens
        for i in range(n)
    ]


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float | None, float | None, float]:
    """(median, low, high, coverage): the interval [x_(k), x_(n+1-k)] of the sorted values with the largest k whose
    exact binomial coverage 1 - 2·P(Bin(n, 1/2) <= k-1) is still >= `confidence` (no distribution assumed);
    low/high None when n is too small for any such interval."""
    x = sorted(values)
    n = len(x)
    k = 0
    while k + 1 <= n // 2 and 1 - 2 * binom.cdf(k, n, 0.5) >= confidence:
        k += 1
    if k == 0:
        return statistics.median(x), None, None, 0.0
    return statistics.median(x), x[k - 1], x[n - k], float(1 - 2 * binom.cdf(k - 1, n, 0.5))


def verdict(low: float | None, high: float | None, goal: float) -> str:
    if low is None or high is None:
        return "no verdict (too few runs for a 95% CI; use --runs 10)"
    if low > goal:
        return f"goal >= {goal}x MET (the whole CI is above it)"
    if high < goal:
        return f"goal >= {goal}x NOT MET (the whole CI is below it)"
    return f"goal >= {goal}x NOT ESTABLISHED (the CI contains it)"


def report(name: str, ratios: list[float], goal: float) -> str:
    med, low, high, coverage = median_ci(ratios)
    ci = "n/a" if low is None else f"[{low:.3f}, {high:.3f}] (exact coverage {coverage:.1%})"
    runs = ", ".join(f"{r:.3f}" for r in ratios)
    return f"RATIO steered/hf {name} = {med:.3f}x median, 95% CI {ci}; {verdict(low, high, goal)}; runs {runs}"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--items", type=int, default=200, help="A/B items (2 log-likelihood requests each)")
    parser.add_argument("--gen-items", type=int, default=16)
    parser.add_argument("--max-new", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layer", type=int, default=13)
    parser.add_argument("--runs", type=int, default=10, help="alternating paired runs (>= 10 for a verdict)")
    args = parser.parse_args()

    path = resolve(args.model)
    hf = HFLM(pretrained=path, batch_size=args.batch_size, device="cpu")
    torch.manual_seed(0)
    sv = SteeringVector({args.layer: torch.randn(hf.model.config.hidden_size)}, behaviour="bench", model=args.model)
    steered = SteeredHFLM(
        pretrained=path, vector=sv, layers=args.layer, multiplier=2.0, batch_size=args.batch_size, device="cpu"
    )
    tok = hf.tokenizer
    ll, gen = ab_requests(tok, args.items), gen_requests(tok, args.gen_items, args.max_new)
    hf.loglikelihood(ll[:8])
    steered.loglikelihood(ll[:8])  # warm-up
    ratios_ll, ratios_gen, rates = [], [], []
    for repeat in range(args.runs):
        first = repeat % 2  # who goes first alternates, so a drift in machine speed does not favour one side
        times = {}
        for who in ("hf", "steered") if first == 0 else ("steered", "hf"):
            lm = hf if who == "hf" else steered
            times[who] = timed(lambda lm=lm: lm.loglikelihood(ll))
        t_hf, t_st = times["hf"], times["steered"]
        ratios_ll.append(t_hf / t_st)
        for who in ("hf", "steered") if first == 0 else ("steered", "hf"):
            lm = hf if who == "hf" else steered
            times[who] = timed(lambda lm=lm: lm.generate_until(gen))
        g_hf, g_st = times["hf"], times["steered"]
        ratios_gen.append(g_hf / g_st)
        rates.append(
            (len(ll) / t_hf, len(ll) / t_st, args.gen_items * args.max_new / g_hf, args.gen_items * args.max_new / g_st)
        )
    med = [statistics.median(r[i] for r in rates) for i in range(4)]
    print(
        f"model {args.model}, layer {args.layer}, batch {args.batch_size}, threads {torch.get_num_threads()}, "
        f"{args.runs} alternating paired runs"
    )
    print(f"log-likelihood: hf {med[0]:.1f} req/s, steered {med[1]:.1f} req/s")
    print(f"generation    : hf {med[2]:.1f} tok/s, steered {med[3]:.1f} tok/s (exactly --max-new tokens per prompt)")
    print(report("log-likelihood throughput", ratios_ll, 0.97))
    print(report("generation throughput", ratios_gen, 0.95))


if __name__ == "__main__":
    main()
