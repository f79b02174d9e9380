"""The per-part task YAMLs of two-option MMLU and TruthfulQA are exactly what their generators write."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from caa_eval.lmeval.task_groups import write_task_group
from tests.conftest import REPO


def _generator(family: str):
    spec = importlib.util.spec_from_file_location(f"gen_{family}", REPO / "tasks" / family / "_generate_configs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", ["caa_mmlu_2opt", "caa_tqa_2opt"])
def test_shipped_yamls_equal_the_generator_output(family, tmp_path, caa_env):
    out = tmp_path / family
    (out / "full").mkdir(parents=True)
    _generator(family).write(out)
    written = {p.relative_to(out) for p in out.rglob("*.yaml")}
    shipped_root = REPO / "tasks" / family
    shipped = {p.relative_to(shipped_root) for p in shipped_root.rglob(f"{family}*.yaml")}
    shipped |= {p.relative_to(shipped_root) for p in shipped_root.rglob(f"_{family}*.yaml")}
    assert written == shipped, "re-run tasks/<family>/_generate_configs.py and commit the YAMLs"
    for rel in sorted(written):
        assert (out / rel).read_text() == (shipped_root / rel).read_text(), rel


def test_writer_replaces_stale_members_and_lists_in_order(tmp_path):
    (tmp_path / "g_gone.yaml").write_text("task: g_gone\n")
    (tmp_path / "other.yaml").write_text("task: other\n")  # not the group's: left alone
    members = [("b", "B part", 'He said "b": 1'), ("a", "A part", "a")]
    write_task_group(tmp_path, "g", "_tpl_yaml", "part", members, "note")
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == ["_g.yaml", "g_a.yaml", "g_b.yaml", "other.yaml"]
    member = yaml.safe_load((tmp_path / "g_b.yaml").read_text())
    assert member == {
        "include": "_tpl_yaml",
        "task": "g_b",
        "task_alias": "B part",
        "dataset_kwargs": {"part": 'He said "b": 1'},
    }
    group = yaml.safe_load((tmp_path / "_g.yaml").read_text())
    assert group["group"] == "g" and group["task"] == ["g_b", "g_a"]
    assert [m["metric"] for m in group["aggregate_metric_list"]] == ["p_correct", "ab_mass", "acc"]
    assert all(m["weight_by_size"] is False for m in group["aggregate_metric_list"])
