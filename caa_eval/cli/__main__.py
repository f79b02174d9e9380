"""`python -m caa_eval.cli ...`: the same as the `caa-eval` command (tests run it as a subprocess this way)."""

import sys

from caa_eval.cli import main

__all__: list[str] = []

sys.exit(main())
