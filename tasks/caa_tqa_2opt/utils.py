"""`!function` hooks of the caa_tqa_2opt tasks (implemented in caa_eval.lmeval.tasks)."""

from caa_eval.lmeval.tasks import CAATask, load_tqa_2opt, process_mmlu

__all__ = ["CAATask", "load_tqa_2opt", "process_mmlu"]
