"""`!function` hooks of the caa_ab tasks (implemented in caa_eval.lmeval.tasks)."""

from caa_eval.lmeval.tasks import CAATask, load_ab, process_ab

__all__ = ["CAATask", "load_ab", "process_ab"]
