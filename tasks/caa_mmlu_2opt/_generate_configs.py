"""Write the per-subject YAMLs and the two group YAMLs of caa_mmlu_2opt (like lm-eval's mmlu generator).

python tasks/caa_mmlu_2opt/_generate_configs.py
"""

from __future__ import annotations

from pathlib import Path

from caa_eval.data import mmlu_subjects
from caa_eval.lmeval.task_groups import write_task_group

HERE = Path(__file__).resolve().parent
SUBSET = "CAA's 570-item two-option subset; mean per subject, then unweighted mean over the 57 subjects."
FULL = "All 14,042 MMLU test questions, two options each; mean per subject, then over the 57 subjects."


def write(root: Path = HERE) -> None:
    members = [(s, s, s) for s in mmlu_subjects()]
    write_task_group(root, "caa_mmlu_2opt", "_caa_mmlu_2opt_template_yaml", "mmlu_subject", members, SUBSET)
    write_task_group(
        root / "full", "caa_mmlu_2opt_full", "_caa_mmlu_2opt_full_template_yaml", "mmlu_subject", members, FULL
    )


if __name__ == "__main__":
    write()
