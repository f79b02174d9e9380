"""Write the per-subject YAMLs and the two group YAMLs of caa_mmlu_2opt (like lm-eval's mmlu generator).

python tasks/caa_mmlu_2opt/_generate_configs.py
"""

from __future__ import annotations

from pathlib import Path

from caa_eval.data import mmlu_subjects

HERE = Path(__file__).resolve().parent
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


def write(folder: Path, prefix: str, template: str, group: str, note: str) -> None:
    for old in folder.glob(f"{prefix}*.yaml"):
        old.unlink()
    names = []
    for subject in mmlu_subjects():
        name = f"{prefix}{subject}"
        names.append(name)
        (folder / f"{name}.yaml").write_text(
            f"include: {template}\ntask: {name}\ntask_alias: {subject}\ndataset_kwargs:\n  mmlu_subject: {subject}\n"
        )
    body = "".join(f"  - {n}\n" for n in names)
    (folder / f"_{group}.yaml").write_text(f"# {note}\ngroup: {group}\ntask:\n{body}{AGGREGATE}")


if __name__ == "__main__":
    write(
        HERE,
        "caa_mmlu_2opt_",
        "_caa_mmlu_2opt_template_yaml",
        "caa_mmlu_2opt",
        "CAA's 570-item two-option subset; mean per subject, then unweighted mean over the 57 subjects.",
    )
    write(
        HERE / "full",
        "caa_mmlu_2opt_full_",
        "_caa_mmlu_2opt_full_template_yaml",
        "caa_mmlu_2opt_full",
        "All 14,042 MMLU test questions, two options each; mean per subject, then over the 57 subjects.",
    )
