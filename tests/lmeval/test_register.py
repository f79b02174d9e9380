"""The startup hook: one list of watched lm-eval modules, and plain `import lm_eval.models` gets steered-hf."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from caa_eval.lmeval import register

HOOK = Path(register.__file__).parents[2] / "caa_eval_autoregister.py"  # the checkout's, not an installed copy


def test_startup_hook_holds_no_copy_of_the_watched_list():
    tree = ast.parse(HOOK.read_text(encoding="utf-8"))
    names = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [n for n in names if n.startswith("lm_eval.")], "the watched modules live in register.WATCHED only"
    assert "lm_eval.models" in register.WATCHED


def test_plain_lm_eval_import_registers_steered_hf_without_loading_torch_at_start():
    code = (
        "import sys; assert 'torch' not in sys.modules and 'lm_eval' not in sys.modules;"
        "import lm_eval.models; from lm_eval.api.registry import model_registry;"
        "print('steered-hf' in model_registry)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(register.__file__).parents[2]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True"
