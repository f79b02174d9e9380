"""`caa-eval sweep` (moving here from caa_eval.sweep)."""

from caa_eval.sweep import configure_cli as configure, run_cli as run  # noqa: F401
