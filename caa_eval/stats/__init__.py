"""Paired significance statistics for steering effects, from a long table of per-item scores.

The steps, one module each: `table` (the long table: schema, validation, CSV/JSONL loading), `runs` (lm-eval
run folders and sweep folders into that table), `tests` (bootstrap CIs, Wilcoxon / permutation tests, MDE,
Holm/BH), `cells` (each steered cell against its multiplier-0 baseline), `dose` (dose-response over
multipliers), `steerability` (per-item slopes: anti-steerable items, letter bias) and `format` (text and
JSON output). docs/statistics.md defines every column.

    from caa_eval import stats
    table = stats.load_any("RUN_DIR")          # or a .csv / .jsonl long table
    cells = stats.paired_stats(table)          # one row per cell
"""

from __future__ import annotations

from caa_eval.stats.cells import (
    BASELINE_TOLERANCE,
    CELL_COLUMNS,
    NO_BASELINE,
    Baselines,
    MissingBaseline,
    compute_stats,
    paired_stats,
    require_some_baseline,
    warn_no_baseline,
)
from caa_eval.stats.dose import DOSE_COLUMNS, compute_dose_response, multiplier_matrix, per_item_slopes
from caa_eval.stats.format import format_cells, format_dose, format_steerability, stats_json, to_records
from caa_eval.stats.load import load_any
from caa_eval.stats.runs import long_table_from_runs, parse_model_args
from caa_eval.stats.scales import SCALE_COLUMNS, SCALE_KEY, steering_scales
from caa_eval.stats.steerability import Steerability, propensity, steerability
from caa_eval.stats.table import (
    BASELINE_CONFIG,
    BASELINE_KEY,
    CELL_KEY,
    CONFIG_KEY,
    DEFAULT_METRIC,
    GROUP_KEY,
    LETTER_COLUMN,
    OPTIONAL,
    REQUIRED,
    SHARED_BEHAVIOUR,
    cell_label,
    format_layer,
    format_text,
    load_long_table,
    validate_long_table,
)
from caa_eval.stats.tests import (
    NOISE,
    TESTS,
    WILCOXON_EXACT_MAX_N,
    PairedTests,
    adjust_pvalues,
    macro_mean,
    mde_dz,
    mean_ci,
    paired_tests,
    seeded_rng,
    strata,
    wilcoxon_method,
)

__all__ = [
    # the long table
    "REQUIRED",
    "OPTIONAL",
    "LETTER_COLUMN",
    "GROUP_KEY",
    "CELL_KEY",
    "BASELINE_KEY",
    "CONFIG_KEY",
    "BASELINE_CONFIG",
    "SHARED_BEHAVIOUR",
    "DEFAULT_METRIC",
    "format_layer",
    "format_text",
    "cell_label",
    "validate_long_table",
    "load_long_table",
    "load_any",
    "long_table_from_runs",
    "parse_model_args",
    "SCALE_KEY",
    "SCALE_COLUMNS",
    "steering_scales",
    # tests and intervals
    "NOISE",
    "TESTS",
    "WILCOXON_EXACT_MAX_N",
    "PairedTests",
    "seeded_rng",
    "strata",
    "macro_mean",
    "mean_ci",
    "wilcoxon_method",
    "paired_tests",
    "mde_dz",
    "adjust_pvalues",
    # cells and dose-response
    "BASELINE_TOLERANCE",
    "CELL_COLUMNS",
    "NO_BASELINE",
    "Baselines",
    "MissingBaseline",
    "warn_no_baseline",
    "require_some_baseline",
    "compute_stats",
    "paired_stats",
    "per_item_slopes",
    "compute_dose_response",
    "DOSE_COLUMNS",
    "multiplier_matrix",
    # per-item steerability
    "Steerability",
    "propensity",
    "steerability",
    # output
    "to_records",
    "stats_json",
    "format_cells",
    "format_dose",
    "format_steerability",
]
