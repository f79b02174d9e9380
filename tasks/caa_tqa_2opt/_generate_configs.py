"""Write the per-category YAMLs and the group YAML of caa_tqa_2opt (like lm-eval's mmlu generator).

Needs CAA's data (it reads the category names from truthful_qa.json):
CAA_EVAL_DATA_DIR=/path/to/CAA/datasets python tasks/caa_tqa_2opt/_generate_configs.py
"""

from __future__ import annotations

from pathlib import Path

from caa_eval.data import tqa_categories, tqa_category_suffix

HERE = Path(__file__).resolve().parent
NOTE = "CAA's 817 two-option TruthfulQA items; mean per category, then unweighted mean over the 32 categories."
AGGREGATE = """aggregate_metric_list:
  - metric: p_correct
    aggregation: mean
    weight_by_size: false
  - metric: ab_mass
    aggregation: mean
    weight_by_size: false
  - metric: acc
    aggregation: mean
    weight_by_size: false
metadata:
  version: 1.0
"""


def write(folder: Path) -> None:
    for old in folder.glob("caa_tqa_2opt_*.yaml"):
        old.unlink()
    names = []
    for category in tqa_categories():
        name = f"caa_tqa_2opt_{tqa_category_suffix(category)}"
        names.append(name)
        (folder / f"{name}.yaml").write_text(
            f"include: _caa_tqa_2opt_template_yaml\ntask: {name}\ntask_alias: {category}\n"
            f'dataset_kwargs:\n  tqa_category: "{category}"\n'
        )
    body = "".join(f"  - {n}\n" for n in names)
    (folder / "_caa_tqa_2opt.yaml").write_text(f"# {NOTE}\ngroup: caa_tqa_2opt\ntask:\n{body}{AGGREGATE}")


if __name__ == "__main__":
    write(HERE)
