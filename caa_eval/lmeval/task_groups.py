"""Per-subject task YAMLs and their group YAML, written the way lm-eval's own mmlu generator writes them.

Two-option MMLU (per subject) and TruthfulQA (per category) are groups of one small task per part, averaged
unweighted over the parts (CAA's headline: mean per part, then mean over parts). The tasks folders'
`_generate_configs.py` scripts call this one writer, so the two groups cannot drift apart in form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["GroupMember", "write_task_group"]

GroupMember = tuple[str, str, str]
"""(task-name suffix, alias shown in lm-eval's tables, the value of the dataset keyword that selects the part)."""

_AGGREGATED = ("p_correct", "ab_mass", "acc")


def _aggregate() -> str:
    metrics = "".join(f"  - metric: {m}\n    aggregation: mean\n    weight_by_size: false\n" for m in _AGGREGATED)
    return f"aggregate_metric_list:\n{metrics}metadata:\n  version: 1.0\n"


def write_task_group(
    folder: Path, group: str, template: str, dataset_key: str, members: Sequence[GroupMember], note: str
) -> list[Path]:
    """Replace the group's task YAMLs in `folder`: one per member, then `_<group>.yaml` listing them.

    Args:
        folder: the task folder (holds `template`).
        group: the group's task name; members are named `<group>_<suffix>`.
        template: the YAML every member includes.
        dataset_key: the `dataset_kwargs` key that selects a member's part (e.g. `mmlu_subject`).
        members: the parts, in the order the group lists them.
        note: one line saying what the group averages (the group YAML's first comment).
    """
    for old in folder.glob(f"{group}_*.yaml"):
        old.unlink()
    written = []
    for suffix, alias, value in members:
        name = f"{group}_{suffix}"
        path = folder / f"{name}.yaml"
        path.write_text(
            f"include: {template}\ntask: {name}\ntask_alias: {alias}\n"
            f"dataset_kwargs:\n  {dataset_key}: {json.dumps(value)}\n"
        )
        written.append(path)
    listed = "".join(f"  - {group}_{suffix}\n" for suffix, _, _ in members)
    group_file = folder / f"_{group}.yaml"
    group_file.write_text(f"# {note}\ngroup: {group}\ntask:\n{listed}{_aggregate()}")
    return [*written, group_file]
