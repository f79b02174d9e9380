"""`!function` hooks of the caa_open tasks (implemented in caa_eval.lmeval.tasks)."""

from caa_eval.lmeval.tasks import CAATask, load_open, nanmean, process_open

__all__ = ["CAATask", "load_open", "nanmean", "process_open"]
