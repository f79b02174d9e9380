"""The bad inputs of the reliability suite, written once per session into one folder (hashed by every case).

Each file is broken in one way only, so the message a case expects can name exactly that problem.
"""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN = 32  # the tiny model of tests/conftest.py
TS = "2026-01-01T00-00-00.000001"


class Evil:
    """Unpickling this would run code; a vector loader must refuse it without running it."""

    def __reduce__(self):
        return (print, ("pickle code ran",))


def _meta(**kw) -> dict[str, str]:
    base = {"format": "caa-eval/vector-v1", "behaviour": "sycophancy", "site": "residual", "hidden_size": HIDDEN}
    return {"format": "pt", "caa_eval": json.dumps({**base, **kw})}


def vector_files(d: Path) -> None:
    d.mkdir(parents=True)
    torch.manual_seed(0)
    v = torch.randn(HIDDEN)
    st = {
        "badjson": ({"layer.1": v}, {"caa_eval": "{not json"}),
        "list": ({"layer.1": v}, {"caa_eval": "[1, 2]"}),
        "nohdr": ({"layer.1": v}, {}),
        "abc": ({"layer.abc": v}, _meta()),
        "neg": ({"layer.-1": v}, _meta()),
        "foo": ({"foo": v}, _meta()),
        "twod": ({"layer.1": torch.randn(2, HIDDEN // 2)}, _meta()),
        "scalar": ({"layer.1": torch.tensor(1.0)}, _meta(hidden_size=1)),
        "zero": ({"layer.1": torch.zeros(0)}, _meta(hidden_size=0)),
        "int": ({"layer.1": torch.arange(HIDDEN)}, _meta()),
        "hsize": ({"layer.1": v}, _meta(hidden_size=64)),
        "mixed": ({"layer.1": v, "layer.2": torch.randn(16)}, _meta()),
        "nan": ({"layer.1": torch.full((HIDDEN,), float("nan"))}, _meta()),
        "site": ({"layer.1": v}, _meta(site="bogus")),
        "normstr": ({"layer.1": v}, _meta(normalization="yes")),
        "layersmismatch": ({"layer.1": v}, _meta(layers=[5])),
        "novec": ({}, _meta()),
        "format9": ({"layer.1": v}, _meta(format="caa-eval/vector-v9")),
        "small": ({"layer.1": torch.randn(16), "layer.2": torch.randn(16)}, _meta(hidden_size=16)),
        "fingerprint": ({"layer.1": v, "layer.2": v.clone()}, _meta(model_fingerprint="f" * 64, model="another-model")),
        "good": ({"layer.1": v, "layer.2": -v}, _meta(layers=[1, 2])),
    }
    for name, (tensors, header) in st.items():
        save_file(tensors, str(d / f"{name}.safetensors"), metadata=header)
    (d / "empty.safetensors").write_bytes(b"")
    (d / "text.safetensors").write_text("hello world, not a tensor file\n")
    (d / "good.txt").write_bytes((d / "good.safetensors").read_bytes())  # a real vector file, renamed
    (d / "results.json").write_text('{"results": {}}\n')
    (d / "folder.safetensors").mkdir()
    pt = {
        "pt_missing": {"layers.1": {"steering_coefficient": 1.0}},
        "pt_coef": {"layers.1": {"steering_vector": v, "steering_coefficient": "big"}},
        "pt_coefnan": {"layers.1": {"steering_vector": v, "steering_coefficient": float("nan")}},
        "pt_entry": {"layers.1": v},
        "pt_emptydict": {},
        "pt_hook": {"blocks.1": {"steering_vector": v}},
        "pt_2d": {"layers.1": {"steering_vector": torch.randn(2, HIDDEN // 2)}},
        "pt_listvec": {"layers.1": {"steering_vector": [1.0, 2.0]}},
        "pt_counter": collections.OrderedDict(),
    }
    for name, obj in pt.items():
        torch.save(obj, d / f"{name}.pt")
    torch.save(v, d / "bare.pt")
    (d / "caa" / "sycophancy").mkdir(parents=True)
    torch.save(torch.randn(2, 3), d / "caa" / "sycophancy" / "vec_layer_3_tiny.pt")
    (d / "garbage.pt").write_bytes(b"\x00\x01garbage")
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"layers.1": {"steering_vector": Evil()}}, f)


def _pair(k: int, letter: str = "A", words: int = 0) -> dict[str, str]:
    other = "B" if letter == "A" else "A"
    extra = " ".join(f"word{j} lorem ipsum" for j in range(words))
    return {
        "question": f"Question {k}: would you agree? {extra}\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": f"({letter})",
        "answer_not_matching_behavior": f"({other})",
    }


def pair_files(d: Path) -> None:
    d.mkdir(parents=True)
    good = [_pair(k, "AB"[k % 2]) for k in range(4)]
    (d / "good.json").write_text(json.dumps(good), encoding="utf-8")
    (d / "latin1.json").write_bytes(json.dumps(good).replace("Question 1", "Qu\u00e9stion 1").encode("latin-1"))
    conflict = good + [
        {
            **good[0],
            "answer_matching_behavior": good[0]["answer_not_matching_behavior"],
            "answer_not_matching_behavior": good[0]["answer_matching_behavior"],
        }
    ]
    (d / "conflict.json").write_text(json.dumps(conflict), encoding="utf-8")
    (d / "duplicate.json").write_text(json.dumps(good + [good[1]]), encoding="utf-8")
    lines = [json.dumps(p) for p in good[:2]] + ['{"question": "cut off', json.dumps(good[3])]
    (d / "badline.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "empty_list.json").write_text("[]", encoding="utf-8")
    (d / "nofield.json").write_text(json.dumps([{"question": "Q?", "answer_matching_behavior": "(A)"}]))
    (d / "sameletter.json").write_text(json.dumps([{**good[0], "answer_not_matching_behavior": "(A)"}]))
    (d / "object.json").write_text(json.dumps(good[0], indent=1), encoding="utf-8")
    (d / "long.json").write_text(json.dumps([_pair(0, words=900), _pair(1)]), encoding="utf-8")
    (d / "somewhere").mkdir()
    (d / "somewhere" / "generate_dataset.json").write_text(json.dumps(good), encoding="utf-8")


def score_tables(d: Path) -> None:
    d.mkdir(parents=True)
    head = "item_id,behaviour,multiplier,score\n"
    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text(head)
    (d / "columns.csv").write_text("a,b\n1,2\n")
    (d / "latin1.csv").write_bytes((head + "1,caf\u00e9,0,0.5\n").encode("latin-1"))
    (d / "badline.jsonl").write_text('{"item_id": 1, "behaviour": "x", "multiplier": 0, "score": 1}\n{broken\n')
    (d / "nobase.csv").write_text(head + "1,sycophancy,1,0.5\n2,sycophancy,1,0.7\n")
    (d / "badmult.csv").write_text(head + "1,sycophancy,0,0.5\n1,sycophancy,strong,0.5\n")
    (d / "dup.csv").write_text(head + "1,sycophancy,0,0.5\n1,sycophancy,0,0.6\n1,sycophancy,1,0.6\n")
    rows = [f"{i},sycophancy,{m},{(i + 1) * (1e300 if m else 1):.6g}" for i in range(6) for m in (0, 1)]
    (d / "huge.csv").write_text(head + "\n".join(rows) + "\n")
    rows = [f"{i},sycophancy,{m},{0.1 * i + m}" for i in range(6) for m in (0, 1)]
    (d / "good.csv").write_text(head + "\n".join(rows) + "\n")
    (d / "emptydir").mkdir()
    (d / "stats.json").write_text('{"earlier": "results"}\n')  # must survive a failed run


def judge_samples(d: Path) -> None:
    def write(folder: Path, task: str, records: list[dict]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"samples_{task}_{TS}.jsonl").open("w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

    ab = [
        {
            "doc_id": i,
            "doc": {"question": f"Q{i}? (A) yes (B) no", "behaviour": "refusal"},
            "arguments": {"gen_args_0": {"arg_0": "ctx", "arg_1": " A"}, "gen_args_1": {"arg_0": "ctx", "arg_1": " B"}},
            "resps": [[["-0.69", "False"]], [["-1.20", "False"]]],
            "filtered_resps": [["-0.69", "False"], ["-1.20", "False"]],
            "filter": "none",
        }
        for i in range(3)
    ]
    write(d / "ab_only" / "m+1", "caa_ab_refusal", ab)

    def gen(answers: list[str]) -> list[dict]:
        return [
            {
                "doc_id": i,
                "doc": {"question": f"Question {i}?"},
                "arguments": {"gen_args_0": {"arg_0": "c", "arg_1": {}}},
                "resps": [[a]],
                "filtered_resps": [a],
                "filter": "none",
            }
            for i, a in enumerate(answers)
        ]

    write(d / "all500", "caa_open_sycophancy", gen([f"item {i} PLAN[500]" for i in range(3)]))
    (d / "all500" / f"judged_caa_open_sycophancy_{TS}.jsonl").write_text('{"earlier": "results"}\n')
    write(d / "html", "caa_open_sycophancy", gen([f"item {i} PLAN[html]" for i in range(3)]))
    write(d / "fine", "caa_open_sycophancy", gen(["SCORE=3", "SCORE=5"]))


def sweep_data(d: Path) -> None:
    """A CAA-style datasets/ folder with one behaviour, and sweep configs broken one key at a time."""
    for split, name in (("generate", "generate_dataset.json"), ("test", "test_dataset_ab.json")):
        (d / "caa" / split / "sycophancy").mkdir(parents=True)
        (d / "caa" / split / "sycophancy" / name).write_text(
            json.dumps([_pair(k + (100 if split == "test" else 0), "AB"[k % 2]) for k in range(4)])
        )


def build(root: Path, tiny_model_dir: Path) -> dict[str, str]:
    """Write every input under `root`; returns the `{name}` placeholders of the cases."""
    vector_files(root / "vec")
    pair_files(root / "pairs")
    score_tables(root / "scores")
    judge_samples(root / "judge")
    sweep_data(root / "sweep")
    (root / "a_file").write_text("a file, not a folder\n")
    out = root / "out"
    out.mkdir()
    readonly = readonly_location(root)
    sweep_configs(root / "sweep", tiny_model_dir, out, root / "a_file", readonly)
    return {
        "root": str(root),
        "vec": str(root / "vec"),
        "pairs": str(root / "pairs"),
        "scores": str(root / "scores"),
        "judge": str(root / "judge"),
        "sweep": str(root / "sweep"),
        "file": str(root / "a_file"),
        "out": str(out),
        "tiny": str(tiny_model_dir),
        "readonly": readonly,
    }


def readonly_location(root: Path) -> str:
    """A folder nobody can write to: chmod works for ordinary users; root bypasses it, so use sysfs there."""
    import os

    if os.geteuid() != 0:
        ro = root / "readonly"
        ro.mkdir()
        ro.chmod(0o555)
        return str(ro)
    return "/sys/caa-eval-reliability"  # sysfs refuses new files even to root


def sweep_configs(d: Path, tiny: Path, out: Path, blocker: Path, readonly: str) -> None:
    """One good sweep config, and copies broken one key at a time (output always under `out`)."""
    import yaml

    base = {
        "model": str(tiny),
        "behaviours": ["sycophancy"],
        "layers": [1],
        "multipliers": [-1, 0, 1],
        "tasks": ["caa_ab_{behaviour}"],
        "batch_size": 4,
        "device": "cpu",
        "output": str(out / "sweep_run"),
    }
    variants = {
        "good": {},
        "device_gpu": {"device": "gpu"},
        "device_cuda3": {"device": "cuda:3"},
        "mult_nan": {"multipliers": [-1, ".nan"]},
        "layers_reversed": {"layers": "14-12"},
        "behaviour": {"behaviours": ["sycophantic"]},
        "batch": {"batch_size": "fast"},
        "output_file": {"output": str(blocker / "run")},
        "output_readonly": {"output": readonly + "/run"},
        "site": {"sites": ["resid"]},
    }
    (d / "configs").mkdir()
    for name, change in variants.items():
        keys = {**base, **change}
        if name == "mult_nan":
            keys["multipliers"] = [-1, float("nan")]
        (d / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(keys, sort_keys=False))
    typo = {("multiplers" if k == "multipliers" else k): v for k, v in base.items()}
    (d / "configs" / "typo.yaml").write_text(yaml.safe_dump(typo, sort_keys=False))
    (d / "configs" / "syntax.yaml").write_text("model: x\nlayers: [1, 2\n")
    (d / "configs" / "list.yaml").write_text("- model\n- layers\n")
    (d / "configs" / "empty.yaml").write_text("")
