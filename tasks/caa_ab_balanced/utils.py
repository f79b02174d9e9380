"""`!function` hooks of the caa_ab_balanced tasks (implemented in caa_eval.task_lib)."""

from caa_eval.task_lib import CAATask, load_ab_balanced, process_ab_balanced

__all__ = ["CAATask", "load_ab_balanced", "process_ab_balanced"]
