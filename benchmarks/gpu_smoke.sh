#!/usr/bin/env bash
# GPU smoke check: one CAA behaviour, one layer, multipliers -1/0/+1, 50 A/B items, through the same
# `caa-eval sweep` a full reproduction uses (extract the vector -> steered-hf cells -> report).
# Target: under 5 minutes on one modern GPU with Llama-2-7b-chat. It also runs on CPU with the embedded
# SmolLM2-135M-Instruct so that CI proves the script works; that model answers these probes at chance, so
# on it the numbers are only checked for shape, not for a steering effect.
#
#   CAA_EVAL_DATA_DIR=/path/to/caa/datasets benchmarks/gpu_smoke.sh           # Llama-2-7b-chat, GPU
#   SMOKE_MODEL=smollm2-135m-instruct SMOKE_DEVICE=cpu SMOKE_PAIRS=24 SMOKE_LIMIT=6 benchmarks/gpu_smoke.sh
#
# Environment (all optional):
#   SMOKE_MODEL       HF path/ID or smollm2-135m-instruct (default meta-llama/Llama-2-7b-chat-hf)
#   SMOKE_BEHAVIOUR   CAA behaviour (default corrigible-neutral-HHH: the smallest generate set, 290 pairs)
#   SMOKE_LAYER       steered layer (default 13, the paper's layer for 7B)
#   SMOKE_LIMIT       A/B test items (default 50 = the whole test set)
#   SMOKE_PAIRS       build the vector from the first N contrast pairs only (default: all of them)
#   SMOKE_DEVICE      auto | cuda | cuda:N | cpu (default auto)
#   SMOKE_DTYPE       model dtype (default: lm-eval's auto, i.e. the checkpoint's float16 for Llama-2)
#   SMOKE_BATCH       batch size (default 16)
#   SMOKE_OUT         run folder, emptied first (default outputs/gpu_smoke)
#   SMOKE_EXPECT_DIRECTION  1 = fail unless p_match(-1) < p_match(0) < p_match(+1). Default 1, except for
#                     the embedded model, which shows no effect at this size.
#   SMOKE_BUDGET_S    wall-time budget (default 300 s). Over budget fails on a GPU, and is only noted on CPU.
# Exit status 0 = every check passed; the last line says SMOKE OK or SMOKE FAILED.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v caa-eval >/dev/null 2>&1 && [ -x "$here/.venv/bin/caa-eval" ]; then
  PATH="$here/.venv/bin:$PATH"
fi
PYTHON="$(dirname "$(command -v caa-eval)")/python"
[ -x "$PYTHON" ] || PYTHON=python

MODEL="${SMOKE_MODEL:-meta-llama/Llama-2-7b-chat-hf}"
BEHAVIOUR="${SMOKE_BEHAVIOUR:-corrigible-neutral-HHH}"
LAYER="${SMOKE_LAYER:-13}"
LIMIT="${SMOKE_LIMIT:-50}"
PAIRS="${SMOKE_PAIRS:-all}"
DEVICE="${SMOKE_DEVICE:-auto}"
DTYPE="${SMOKE_DTYPE:-}"
BATCH="${SMOKE_BATCH:-16}"
OUT="${SMOKE_OUT:-outputs/gpu_smoke}"
BUDGET="${SMOKE_BUDGET_S:-300}"
if [ "$MODEL" = "smollm2-135m-instruct" ]; then EXPECT="${SMOKE_EXPECT_DIRECTION:-0}"; else EXPECT="${SMOKE_EXPECT_DIRECTION:-1}"; fi

rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
start=$(date +%s)

echo "== gpu_smoke: $MODEL, $BEHAVIOUR, layer $LAYER, multipliers -1/0/+1, $LIMIT items, pairs: $PAIRS"
"$PYTHON" - <<'EOF'
import platform, torch, caa_eval, lm_eval
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"   python {platform.python_version()}, torch {torch.__version__}, caa-eval {caa_eval.__version__}, "
      f"lm-eval {lm_eval.__version__}, GPU: {gpu}, CPU threads: {torch.get_num_threads()}")
EOF

# The sweep config: with SMOKE_PAIRS the behaviour keeps CAA's test task but reads its vector from a
# file holding the first N pairs of its generate set (everything else is the full-size path).
SMOKE_OUT_ABS="$OUT" SMOKE_MODEL_="$MODEL" SMOKE_BEHAVIOUR_="$BEHAVIOUR" SMOKE_LAYER_="$LAYER" \
SMOKE_LIMIT_="$LIMIT" SMOKE_PAIRS_="$PAIRS" SMOKE_DEVICE_="$DEVICE" SMOKE_DTYPE_="$DTYPE" SMOKE_BATCH_="$BATCH" \
"$PYTHON" - <<'EOF'
import json, os
from pathlib import Path

import yaml

from caa_eval.data import read_records, resolve_behaviour_pairs

env = os.environ
out = Path(env["SMOKE_OUT_ABS"])
behaviour = {"name": env["SMOKE_BEHAVIOUR_"]}
if env["SMOKE_PAIRS_"] != "all":
    pairs = read_records(resolve_behaviour_pairs(env["SMOKE_BEHAVIOUR_"], split="generate"))[: int(env["SMOKE_PAIRS_"])]
    (out / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    behaviour["pairs"] = str(out / "pairs.json")
config = {
    "model": env["SMOKE_MODEL_"], "behaviours": [behaviour], "layers": [int(env["SMOKE_LAYER_"])],
    "multipliers": [-1, 0, 1], "tasks": ["caa_ab_{behaviour}"], "limit": int(env["SMOKE_LIMIT_"]),
    "batch_size": int(env["SMOKE_BATCH_"]), "device": env["SMOKE_DEVICE_"],
}
if env["SMOKE_DTYPE_"]:
    config["dtype"] = env["SMOKE_DTYPE_"]
(out / "smoke.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
EOF

if ! caa-eval sweep "$OUT/smoke.yaml" --out "$OUT/run" >"$OUT/sweep.log" 2>&1; then
  tail -n 30 "$OUT/sweep.log"
  echo "SMOKE FAILED: caa-eval sweep exited non-zero (log: $OUT/sweep.log)"
  exit 1
fi
end=$(date +%s)

SMOKE_RUN="$OUT/run" SMOKE_LIMIT_="$LIMIT" SMOKE_EXPECT_="$EXPECT" SMOKE_BUDGET_="$BUDGET" SMOKE_SECONDS="$((end - start))" \
"$PYTHON" - <<'EOF'
import json, os, sys
from datetime import datetime
from pathlib import Path

import torch

env = os.environ
run = Path(env["SMOKE_RUN"])
limit, seconds, budget = int(env["SMOKE_LIMIT_"]), int(env["SMOKE_SECONDS"]), int(env["SMOKE_BUDGET_"])
manifest = json.loads((run / "manifest.json").read_text())
problems, rows = [], {}
cells = sorted(run.glob("cells/*/cell.json"))
for cell_file in cells:
    cell = json.loads(cell_file.read_text())
    if not (cell_file.parent / "DONE").exists():
        problems.append(f"{cell['cell_id']}: no DONE marker")
    samples = [json.loads(line) for f in cell_file.parent.glob("samples_*.jsonl") for line in f.read_text().splitlines()]
    p = [s["p_match"] for s in samples]
    if len(p) != limit:
        problems.append(f"{cell['cell_id']}: {len(p)} items, expected {limit}")
    if any(not 0.0 <= x <= 1.0 for x in p):
        problems.append(f"{cell['cell_id']}: p_match outside [0, 1]")
    rows[float(cell["multiplier"])] = (sum(p) / max(len(p), 1), sum(s["ab_mass"] for s in samples) / max(len(p), 1),
                                       cell["seconds"], cell["started"])
if sorted(rows) != [-1.0, 0.0, 1.0]:
    problems.append(f"cells for multipliers {sorted(rows)}, expected [-1.0, 0.0, 1.0]")
if not (run / "report" / "report.md").is_file():
    problems.append("no report/report.md")

first_cell = min((datetime.fromisoformat(r[3]) for r in rows.values()), default=None)
prep = (first_cell - datetime.fromisoformat(manifest["runs"][-1]["started"])).total_seconds() if first_cell else float("nan")
# the sweep scores all multipliers of a task in one pass, so the time mostly shows in the first cell
print(f"   stages: model load + vector extraction {prep:.0f} s; cells ({len(rows)} multipliers) "
      f"{sum(r[2] for r in rows.values()):.0f} s; total wall time {seconds} s")
print("   multiplier  p_match  A+B mass")
for m in sorted(rows):
    print(f"   {m:+10g}  {rows[m][0]:7.3f}  {rows[m][1]:8.3f}")
if env["SMOKE_EXPECT_"] == "1" and len(rows) == 3 and not rows[-1.0][0] < rows[0.0][0] < rows[1.0][0]:
    problems.append("p_match does not rise from -1 to 0 to +1 (set SMOKE_EXPECT_DIRECTION=0 for models without the effect)")
if seconds > budget:
    if torch.cuda.is_available():
        problems.append(f"wall time {seconds} s over the {budget} s budget")
    else:
        print(f"   note: {seconds} s is over the {budget} s GPU budget; this run used the CPU")
for p in problems:
    print(f"   problem: {p}")
print(f"SMOKE {'FAILED' if problems else 'OK'}: run folder {run}")
sys.exit(1 if problems else 0)
EOF
