"""`caa-eval tasks` (moving here from caa_eval.data)."""

from caa_eval.data import configure_tasks_cli as configure, run_tasks_cli as run  # noqa: F401
