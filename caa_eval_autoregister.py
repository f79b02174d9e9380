"""Startup hook (loaded by caa_eval_autoregister.pth): make plain `lm_eval` know caa-eval.

lm-eval 0.4.x has no plugin entry point. This module only installs a tiny import watcher: nothing heavy
is imported at interpreter start. When `lm_eval.models` / `lm_eval.tasks` / the logger have finished
importing, `caa_eval.lmeval.register` adds `steered-hf` (as a lazy placeholder) and the shipped task folder.
"""

import importlib.abc
import importlib.machinery
import sys

_WATCHED = {"lm_eval.models", "lm_eval.tasks", "lm_eval.loggers.evaluation_tracker", "lm_eval.api.model"}


def _watched():
    """The list lives in the package (`register.WATCHED`), so an installed copy of this file never goes stale."""
    try:
        from caa_eval.lmeval import register as _register

        return _register.WATCHED
    except Exception:
        return _WATCHED


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if not name.startswith("lm_eval.") or name not in _watched():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                from caa_eval.lmeval import register as _register

                _register.on_import(name, module)
            except Exception as exc:  # never break lm_eval itself
                print(f"caa-eval: could not register with lm_eval ({exc})", file=sys.stderr)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
        for name in _watched() & set(sys.modules):  # already imported (e.g. hook installed late)
            from caa_eval.lmeval import register as _register

            _register.on_import(name, sys.modules[name])


install()
