"""`!function` hooks of the caa_mmlu_2opt tasks (implemented in caa_eval.lmeval.tasks)."""

from caa_eval.lmeval.tasks import CAATask, load_mmlu_2opt, load_mmlu_2opt_full, process_mmlu

__all__ = ["CAATask", "load_mmlu_2opt", "load_mmlu_2opt_full", "process_mmlu"]
