"""Extraction throughput: caa-eval's batched, prefix-shared extractor vs the naive batch-1 CAA loop.

Both run in the same process on the same pairs (all layers, SmolLM2 by default) and the script prints
pairs/s and the ratio. The batch-1 loop does what the original CAA code does: two full forwards per pair
(matching and non-matching answer), reading every block output at the answer letter.

    python benchmarks/extract.py --data ../shared/caa_data/generate/sycophancy/generate_dataset.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from caa_eval import data
from caa_eval.core import extract


def batch1_loop(model, tok, pairs) -> dict[int, torch.Tensor]:
    layers = extract.decoder_layers(model)
    sums = {i: torch.zeros(model.config.hidden_size, dtype=torch.float64) for i in range(len(layers))}
    store: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, extract.hidden_of(o)))
               for i, layer in enumerate(layers)]
    try:
        for pair in pairs:
            acts = []
            for answer in (pair.answer_matching_behavior, pair.answer_not_matching_behavior):
                row = extract.answer_rows(tok, extract.chat_prompt(tok, pair.question), answer)
                with torch.no_grad():
                    model(torch.tensor([row.ids + [tok.convert_tokens_to_ids(")")]]))
                acts.append({i: store[i][0, row.read].double() for i in store})
            for i in sums:
                sums[i] += acts[0][i] - acts[1][i]
    finally:
        for h in handles:
            h.remove()
    return {i: (s / len(pairs)).float() for i, s in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, default=Path("../shared/caa_data/generate/sycophancy/generate_dataset.json"))
    parser.add_argument("--pairs", type=int, default=0, help="pairs for the batched run (0 = all)")
    parser.add_argument("--baseline-pairs", type=int, default=40, help="pairs for the batch-1 loop (it is slow)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    model, tok = extract.load_model(args.model)
    pairs = data.load_contrast_pairs(args.data)
    batched_pairs = pairs[: args.pairs] if args.pairs else pairs
    base_pairs = pairs[: args.baseline_pairs]
    print(f"model {args.model}, {len(extract.decoder_layers(model))} layers, torch threads {torch.get_num_threads()}")

    extract.extract_vectors(model, tok, pairs[:4], batch_size=4, progress=False)  # warm-up
    t = time.perf_counter()
    reference = batch1_loop(model, tok, base_pairs)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    check = extract.extract_vectors(model, tok, base_pairs, batch_size=args.batch_size, progress=False)
    t_same = time.perf_counter() - t
    worst = max(float((check[i] - reference[i]).norm() / reference[i].norm()) for i in reference)
    t = time.perf_counter()
    extract.extract_vectors(model, tok, batched_pairs, batch_size=args.batch_size, progress=True)
    t_all = time.perf_counter() - t

    rate_base = len(base_pairs) / t_base
    print(f"batch-1 loop      : {len(base_pairs)} pairs in {t_base:.1f} s = {rate_base:.2f} pairs/s")
    print(f"batched, same set : {len(base_pairs)} pairs in {t_same:.1f} s = {len(base_pairs) / t_same:.2f} pairs/s "
          f"(max relative difference to the loop over all layers: {worst:.1e})")
    print(f"batched, all      : {len(batched_pairs)} pairs in {t_all:.1f} s = {len(batched_pairs) / t_all:.2f} pairs/s")
    print(f"speed-up vs batch-1 loop: {(len(batched_pairs) / t_all) / rate_base:.2f}x (same set: {t_base / t_same:.2f}x); "
          f"batch-1 loop for all {len(batched_pairs)} pairs would take ~{len(batched_pairs) / rate_base / 60:.1f} min")


if __name__ == "__main__":
    main()
