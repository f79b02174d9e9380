"""`!function` hooks of the caa_ab_balanced tasks (implemented in caa_eval.lmeval.tasks)."""

from caa_eval.lmeval.tasks import CAATask, load_ab_balanced, process_ab_balanced

__all__ = ["CAATask", "load_ab_balanced", "process_ab_balanced"]
