"""Write the per-category YAMLs and the group YAML of caa_tqa_2opt (like lm-eval's mmlu generator).

Needs CAA's data (it reads the category names from truthful_qa.json):
CAA_EVAL_DATA_DIR=/path/to/CAA/datasets python tasks/caa_tqa_2opt/_generate_configs.py
"""

from __future__ import annotations

from pathlib import Path

from caa_eval.data import tqa_categories, tqa_category_suffix
from caa_eval.lmeval.task_groups import write_task_group

HERE = Path(__file__).resolve().parent
NOTE = "CAA's 817 two-option TruthfulQA items; mean per category, then unweighted mean over the 32 categories."


def write(root: Path = HERE) -> None:
    members = [(tqa_category_suffix(c), c, c) for c in tqa_categories()]
    write_task_group(root, "caa_tqa_2opt", "_caa_tqa_2opt_template_yaml", "tqa_category", members, NOTE)


if __name__ == "__main__":
    write()
