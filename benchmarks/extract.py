"""P2 — extraction throughput: caa-eval's batched, prefix-shared extractor vs CAA's batch-1 loop and vs the
bare forward pass over the same tokens (the ceiling), with peak memory above the weights.

All three run in one process on the same pairs (all layers, SmolLM2 by default), so the ratios are measured
against baselines of the same run. The batch-1 loop is tests/helpers/caa_reference.py (two full forwards per pair,
block outputs at index -2, as CAA's code does). The ceiling runs the decoder without hooks, without the LM head,
over exactly the token rows the extractor builds (each pair's shared prefix once, both letters as one step).

    python benchmarks/extract.py --data ../shared/caa_data/generate/sycophancy/generate_dataset.json --pairs 200
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from caa_reference import caa_loop, chat_encoder  # noqa: E402

from caa_eval import data  # noqa: E402
from caa_eval.core import extract  # noqa: E402
from caa_eval.core.forward import cache_kwarg, decoder_base, pad_right  # noqa: E402
from caa_eval.core.layers import decoder_layers  # noqa: E402
from caa_eval.core.read_rows import build_rows  # noqa: E402
from caa_eval.models import load_model  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def bare_forward(model, tok, pairs, batch_size: int) -> None:
    """The same rows as the extractor, sorted the same way, through the decoder with no hooks: the ceiling."""
    rows = build_rows(tok, pairs)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0].ids))
    base = decoder_base(model)
    pad = tok.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        ids, mask = pad_right([pos.ids[:-1] for pos, _ in batch], pad, model.device)
        from transformers import DynamicCache

        cache = DynamicCache()
        base(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_kwarg(base): cache})
        cache.batch_repeat_interleave(2)
        letters = torch.tensor([[row.ids[-1]] for pair in batch for row in pair])
        mask2 = torch.cat([mask.repeat_interleave(2, 0), torch.ones(len(letters), 1, dtype=mask.dtype)], 1)
        base(input_ids=letters, attention_mask=mask2, use_cache=True, **{cache_kwarg(base): cache})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/caa_data/generate/sycophancy/generate_dataset.json")
    )
    parser.add_argument("--pairs", type=int, default=200, help="pairs for the batched run and the ceiling (0 = all)")
    parser.add_argument("--baseline-pairs", type=int, default=40, help="pairs for the batch-1 loop (it is slow)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    model, tok = load_model(args.model)
    weights_rss = rss_mb()
    pairs = data.load_contrast_pairs(args.data)
    batched_pairs = pairs[: args.pairs] if args.pairs else pairs
    base_pairs = pairs[: args.baseline_pairs]
    print(
        f"model {args.model}, {len(decoder_layers(model))} layers, torch threads {torch.get_num_threads()}, "
        f"RSS after loading {weights_rss:.0f} MB"
    )

    extract.extract_vectors(model, tok, pairs[:4], batch_size=4, progress=False)  # warm-up
    t = time.perf_counter()
    reference = caa_loop(model, decoder_layers(model), chat_encoder(tok), [vars(p) for p in base_pairs])
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    check = extract.extract_vectors(model, tok, base_pairs, batch_size=args.batch_size, progress=False)
    t_same = time.perf_counter() - t
    worst = max(float((check[i].double() - reference[i]).norm() / reference[i].norm()) for i in reference)
    t = time.perf_counter()
    bare_forward(model, tok, batched_pairs, args.batch_size)
    t_bare = time.perf_counter() - t
    t = time.perf_counter()
    extract.extract_vectors(model, tok, batched_pairs, batch_size=args.batch_size, progress=False)
    t_all = time.perf_counter() - t
    peak = rss_mb() - weights_rss

    n = len(batched_pairs)
    rate_base, rate_all, rate_bare = len(base_pairs) / t_base, n / t_all, n / t_bare
    print(f"batch-1 CAA loop  : {len(base_pairs)} pairs in {t_base:.1f} s = {rate_base:.2f} pairs/s")
    print(
        f"batched, same set : {len(base_pairs)} pairs in {t_same:.1f} s (max relative difference to the loop: {worst:.1e})"
    )
    print(f"bare forward      : {n} pairs in {t_bare:.1f} s = {rate_bare:.2f} pairs/s (ceiling)")
    print(f"batched extraction: {n} pairs in {t_all:.1f} s = {rate_all:.2f} pairs/s")
    print(f"RATIO extraction / batch-1 loop = {rate_all / rate_base:.2f}x   (goal >= 10x)")
    print(f"RATIO extraction / bare forward = {rate_all / rate_bare:.2f}x   (goal >= 0.8x)")
    print(f"peak RSS above the weights: {peak:.0f} MB   (goal <= 1536 MB)")


if __name__ == "__main__":
    main()
