"""`caa-eval data` (moving here from caa_eval.data)."""

from caa_eval.data import configure_data_cli as configure, run_data_cli as run  # noqa: F401
