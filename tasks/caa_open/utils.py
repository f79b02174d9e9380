"""`!function` hooks of the caa_open tasks (implemented in caa_eval.task_lib)."""

from caa_eval.task_lib import CAATask, load_open, process_open

__all__ = ["CAATask", "load_open", "process_open"]
