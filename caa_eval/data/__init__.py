"""Data for CAA: contrast-pair files, test items, MMLU, and where the upstream datasets live.

Nothing here ships data: the CAA datasets and MMLU are found at run time (task metadata / explicit folder >
environment > the user cache filled by `caa-eval data download`, see `locate`). Only facts about the upstream
files (sizes, SHA-256, CAA's MMLU subset index) are recorded, in `facts`.

Modules, in import order (no cycles): records (the one JSON/JSONL reader) · pairs (contrast pairs and their
checks) · locate (data folders) · items (A/B and open-ended docs) · facts · mmlu · tqa · download · catalog (the
shipped tasks). `download` is imported on use: `from caa_eval.data import download`.
"""

from __future__ import annotations

from caa_eval.data.catalog import TEMPLATES, TaskInfo, list_tasks, template_path
from caa_eval.data.items import NON_AB_POLICIES, ABItems, load_ab_items, load_open_items, swap_ab
from caa_eval.data.locate import (
    CAA_DATA_ENV,
    MMLU_DIR_ENV,
    SPLIT_FILES,
    DataLocation,
    caa_data_file,
    default_caa_dir,
    default_mmlu_dir,
    locate_caa_data,
    locate_mmlu,
    resolve_behaviour_pairs,
)
from caa_eval.data.mmlu import (
    MMLU_PROMPT,
    MMLUQuestion,
    mmlu_full_rows,
    mmlu_subjects,
    mmlu_subset_rows,
    mmlu_subset_size,
    read_mmlu_subject,
)
from caa_eval.data.pairs import (
    PAIR_FIELDS,
    ContrastPair,
    check_no_overlap,
    check_unique,
    file_sha256,
    load_contrast_pairs,
)
from caa_eval.data.records import read_records, read_text
from caa_eval.data.tqa import TQA_FILE, tqa_categories, tqa_category_suffix, tqa_rows
from caa_eval.vocab import BEHAVIOURS

__all__ = [
    "BEHAVIOURS",
    "read_records",
    "read_text",
    "PAIR_FIELDS",
    "ContrastPair",
    "load_contrast_pairs",
    "check_unique",
    "check_no_overlap",
    "file_sha256",
    "CAA_DATA_ENV",
    "MMLU_DIR_ENV",
    "SPLIT_FILES",
    "DataLocation",
    "default_caa_dir",
    "default_mmlu_dir",
    "locate_caa_data",
    "locate_mmlu",
    "caa_data_file",
    "resolve_behaviour_pairs",
    "NON_AB_POLICIES",
    "ABItems",
    "swap_ab",
    "load_ab_items",
    "load_open_items",
    "MMLU_PROMPT",
    "MMLUQuestion",
    "mmlu_subjects",
    "mmlu_subset_size",
    "read_mmlu_subject",
    "mmlu_subset_rows",
    "mmlu_full_rows",
    "TQA_FILE",
    "tqa_categories",
    "tqa_category_suffix",
    "tqa_rows",
    "TEMPLATES",
    "TaskInfo",
    "template_path",
    "list_tasks",
]
