"""`caa-eval judge` (moving here from caa_eval.judge)."""

from caa_eval.judge import configure_cli as configure, run_cli as run  # noqa: F401
