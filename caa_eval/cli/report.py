"""`caa-eval report` (moving here from caa_eval.report)."""

from caa_eval.report import configure_cli as configure, run_cli as run  # noqa: F401
