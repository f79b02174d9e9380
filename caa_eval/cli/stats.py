"""`caa-eval stats` (moving here from caa_eval.stats)."""

from caa_eval.stats import configure_cli as configure, run_cli as run  # noqa: F401
