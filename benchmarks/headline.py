"""P5 — CAA's headline experiment on the embedded model: all 7 `caa_ab` tasks + `caa_mmlu_2opt` at multipliers
−1/0/+1 (layer 13, CAA-normalised vectors given), as one `caa-eval sweep`, against one plain evaluation of the
same 8 tasks measured in the same run. Goal: the sweep ≤ 10 min on 2 cores.

Vectors are extracted once beforehand (not timed; `--pairs` per behaviour) into `--vectors`.

    CAA_EVAL_DATA_DIR=../shared/caa_data CAA_EVAL_MMLU_DIR=../shared/mmlu/test python benchmarks/headline.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caa_eval import data, sweep  # noqa: E402
from caa_eval.core.extract import extract_vectors  # noqa: E402
from caa_eval.core.vectors import SteeringVector  # noqa: E402
from caa_eval.lmeval.model import SteeredHFLM  # noqa: E402
from caa_eval.lmeval.run import evaluate_to_folder  # noqa: E402
from caa_eval.models import DEFAULT_MODEL  # noqa: E402
from caa_eval.vocab import BEHAVIOURS, ab_task_name  # noqa: E402


def ensure_vectors(folder: Path, layer: int, pairs: int, lm: SteeredHFLM) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for b in BEHAVIOURS:
        out = folder / f"{b}.safetensors"
        if out.is_file():
            continue
        subset = data.load_contrast_pairs(data.resolve_behaviour_pairs(b, split="generate"))[:pairs]
        vectors = extract_vectors(lm.model, lm.tokenizer, subset, layers=[layer], progress=False)
        SteeringVector(vectors, behaviour=b, model=DEFAULT_MODEL, n_pairs=len(subset)).save(out)
        print(f"extracted {b} from {len(subset)} pairs -> {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=13)
    parser.add_argument("--pairs", type=int, default=100, help="generate pairs per behaviour for the given vectors")
    parser.add_argument("--vectors", type=Path, default=Path("outputs/bench_vectors"))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    lm = SteeredHFLM(pretrained=DEFAULT_MODEL, batch_size=args.batch_size, device="cpu", multiplier=0)
    ensure_vectors(args.vectors, args.layer, args.pairs, lm)
    tasks = [ab_task_name(b) for b in BEHAVIOURS] + ["caa_mmlu_2opt"]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        evaluate_to_folder(lm, tasks, Path(tmp) / "plain", batch_size=args.batch_size)
        t_one = time.perf_counter() - t
        del lm
        config = sweep.config_from_dict(
            {
                "model": DEFAULT_MODEL,
                "behaviours": list(BEHAVIOURS),
                "layers": [args.layer],
                "multipliers": [-1, 0, 1],
                "tasks": ["caa_ab_{behaviour}", "caa_mmlu_2opt"],
                "vectors": {"dir": str(args.vectors.resolve())},
                "batch_size": args.batch_size,
                "device": "cpu",
                "output": str(Path(tmp) / "sweep"),
            }
        )
        t = time.perf_counter()
        result = sweep.run_sweep(config, progress=False, print_fn=lambda _: None)
        t_sweep = time.perf_counter() - t
        shutil.rmtree(Path(tmp) / "sweep", ignore_errors=True)
    print(f"{len(result.cells)} cells ({sum(not c.is_baseline for c in result.cells)} steered), tasks {len(tasks)}")
    print(f"one plain evaluation of the 8 tasks: {t_one / 60:.1f} min")
    print(f"the whole sweep (incl. report)    : {t_sweep / 60:.1f} min   (goal <= 10 min)")
    print(f"RATIO sweep / one plain evaluation = {t_sweep / t_one:.2f}x  (15 evaluations' worth of cells)")


if __name__ == "__main__":
    main()
