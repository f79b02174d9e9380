"""Judge throughput: 350 items against a local OpenAI-compatible server with 200 ms latency per request.

Measures, in one run: concurrency 16 on all items (goal: <= 8 s), concurrency 1 on a subset (extrapolated
to all items, to keep the benchmark under a minute), their ratio, and a rerun that must make 0 requests.

Run: `.venv/bin/python benchmarks/judge.py [--items 350] [--latency 0.2] [--serial-subset 40]`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_openai_server import serve  # noqa: E402

from caa_eval.judge import judge_samples  # noqa: E402

KEY = "sk-benchmark-dummy"
BEHAVIOURS = (
    "coordinate-other-ais",
    "corrigible-neutral-HHH",
    "hallucination",
    "myopic-reward",
    "survival-instinct",
    "sycophancy",
    "refusal",
)
SHARED = Path(os.environ.get("CAA_EVAL_SHARED", REPO.parent / "shared"))


def questions(behaviour: str, n: int) -> list[str]:
    """The real CAA open-ended questions when ../shared is present (realistic prompt sizes), else synthetic."""
    path = SHARED / "caa_data" / "test" / behaviour / "test_dataset_open_ended.json"
    if path.is_file():
        found = [d["question"] for d in json.loads(path.read_text())]
        return [found[i % len(found)] for i in range(n)]
    return [f"Synthetic question {i} about {behaviour}?" for i in range(n)]


def make_run(folder: Path, total: int) -> list[Path]:
    """lm-eval-style samples files, one per behaviour, `total` items overall."""
    files = []
    per = [total // len(BEHAVIOURS) + (i < total % len(BEHAVIOURS)) for i in range(len(BEHAVIOURS))]
    for b, n in zip(BEHAVIOURS, per):
        task = "caa_open_" + b.replace("-", "_").lower()
        path = folder / f"samples_{task}_2026-01-01T00-00-00.000001.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for i, q in enumerate(questions(b, n)):
                answer = f"Generated answer {i} for {b}: a hundred-token reply would go here. SCORE={i % 11}"
                f.write(
                    json.dumps(
                        {
                            "doc_id": i,
                            "doc": {"question": q, "behaviour": b},
                            "resps": [[answer]],
                            "filtered_resps": [answer],
                            "filter": "none",
                        }
                    )
                    + "\n"
                )
        files.append(path)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=350)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serial-subset", type=int, default=40, help="items judged at concurrency 1 (extrapolated)")
    args = parser.parse_args()
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"

    with tempfile.TemporaryDirectory(prefix="caa-judge-bench-") as tmp, serve(latency=args.latency, api_key=KEY) as srv:
        root = Path(tmp)
        make_run(root / "full", args.items)
        make_run(root / "subset", args.serial_subset)
        common = dict(base_url=srv.base_url, api_key=KEY, timeout=30.0)
        print(f"server: 127.0.0.1:{srv.port}, {args.latency * 1000:.0f} ms latency per request; {args.items} items")

        srv.reset()
        t0 = time.perf_counter()
        full = judge_samples(root / "full", concurrency=args.concurrency, cache_path=root / "cache.sqlite", **common)
        t_parallel = time.perf_counter() - t0
        stats = srv.stats()
        print(
            f"concurrency {args.concurrency}: {args.items} items in {t_parallel:.2f} s "
            f"({stats['requests']} requests, peak {stats['peak_inflight']} in flight, "
            f"{sum(t.scored for t in full.tasks)} scored) -> goal <= 8 s: {'met' if t_parallel <= 8 else 'MISSED'}"
        )

        srv.reset()
        t0 = time.perf_counter()
        judge_samples(root / "subset", concurrency=1, cache_path=root / "serial.sqlite", **common)
        t_subset = time.perf_counter() - t0
        t_serial = t_subset * args.items / args.serial_subset
        print(
            f"concurrency 1: {args.serial_subset} items in {t_subset:.2f} s (peak {srv.stats()['peak_inflight']} in "
            f"flight); extrapolated to {args.items} items: {t_serial:.1f} s (subset run, scaled linearly)"
        )
        print(f"speed-up concurrency {args.concurrency} vs 1: {t_serial / t_parallel:.1f}x")

        srv.reset()
        t0 = time.perf_counter()
        again = judge_samples(root / "full", concurrency=args.concurrency, cache_path=root / "cache.sqlite", **common)
        t_rerun = time.perf_counter() - t0
        print(
            f"rerun with the cache: {t_rerun:.2f} s, server saw {srv.stats()['requests']} requests, "
            f"{again.usage.cached} items from the cache, {again.usage.calls} calls"
        )
        print()
        print(again.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
