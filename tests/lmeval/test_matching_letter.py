"""Every shipped A/B task logs each sample's matching letter, and the long table read from the run folder
carries it: it equals the answer letter of that item in the data file (issue 19, steerability by letter)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from caa_eval.core.vectors import SteeringVector
from caa_eval.lmeval.model import SteeredHFLM
from caa_eval.lmeval.run import evaluate_to_folder
from caa_eval.paths import tasks_dir
from caa_eval.stats import load_any
from caa_eval.vocab import BEHAVIOURS, ab_task_name

DEMO_AB = "caa_demo_optimism_ab"


def data_file(task: str, caa_data_dir: Path) -> Path:
    if task == DEMO_AB:
        return tasks_dir() / "caa_demo" / "optimism_test_ab.json"
    behaviour = next(b for b in BEHAVIOURS if task in (ab_task_name(b), ab_task_name(b, balanced=True)))
    return caa_data_dir / "test" / behaviour / "test_dataset_ab.json"


def test_every_shipped_ab_task_carries_the_data_files_matching_letter(tiny_model_dir, caa_env, tmp_path):
    tasks = [ab_task_name(b) for b in BEHAVIOURS] + [ab_task_name(b, balanced=True) for b in BEHAVIOURS] + [DEMO_AB]
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=8, device="cpu", multiplier=0)
    run = tmp_path / "run"
    evaluate_to_folder(lm, tasks, run / "m0", limit=3, model_args={"pretrained": str(tiny_model_dir), "multiplier": 0})
    # the demo behaviour is not a CAA one: its rows need a steered run to name the behaviour
    vector = tmp_path / "optimism.safetensors"
    hidden = lm.model.config.hidden_size
    SteeringVector({0: torch.full((hidden,), 0.01)}, behaviour="optimism", model=str(tiny_model_dir)).save(vector)
    steering = {"vector": str(vector), "layers": [0], "multiplier": 1.0}
    lm.set_steering(**steering)
    evaluate_to_folder(lm, [DEMO_AB], run / "m1", limit=3, model_args={"pretrained": str(tiny_model_dir), **steering})
    table = load_any(run, metrics="all")
    table = table[table["multiplier"] == 0]  # every task once (the demo's baseline rows now name optimism)
    letters = table.drop_duplicates(["task", "item_id"]).set_index(["task", "item_id"])["matching_letter"]
    checked = set()
    for samples in sorted((run / "m0").rglob("samples_*.jsonl")):
        task = re.match(r"samples_(.+)_\d{4}-\d\d-\d\dT", samples.name).group(1)
        items = json.loads(data_file(task, caa_env).read_text(encoding="utf-8"))
        for line in map(json.loads, samples.read_text(encoding="utf-8").splitlines()):
            answer = items[line["doc"]["item"]]["answer_matching_behavior"]
            want = re.search(r"\(([A-Z])\)", answer).group(1)
            assert letters[(task, str(line["doc_id"]))] == want, (task, line["doc_id"])
            checked.add(task)
    assert checked == set(tasks)
    assert set(letters) == {"A", "B"}  # both letters occur: the comparison can tell them apart
