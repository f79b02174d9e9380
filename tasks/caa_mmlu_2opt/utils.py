"""`!function` hooks of the caa_mmlu_2opt tasks (implemented in caa_eval.task_lib)."""

from caa_eval.task_lib import CAATask, load_mmlu_2opt, load_mmlu_2opt_full, process_mmlu

__all__ = ["CAATask", "load_mmlu_2opt", "load_mmlu_2opt_full", "process_mmlu"]
