"""`!function` hooks of the caa_ab tasks (implemented in caa_eval.task_lib)."""

from caa_eval.task_lib import CAATask, load_ab, process_ab

__all__ = ["CAATask", "load_ab", "process_ab"]
