"""`caa-eval demo` (moving here from caa_eval.demo)."""

from caa_eval.demo import configure_cli as configure, run_cli as run  # noqa: F401
