"""Registration of caa-eval with lm-eval 0.4.x, called by the startup hook once lm-eval modules load.

- `steered-hf` is registered as a lazy placeholder, so `--model hf` and the other built-ins are untouched
  and torch is not imported until the model is asked for.
- The shipped task folder is added to every TaskManager (so `--tasks caa_ab` works without --include_path).
- Steered runs get their own output folder and their own `--use_cache` database: lm-eval keys both on
  `pretrained` / request text only, which would mix results of different steering configs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from typing import Any

MODEL_NAME = "steered-hf"
MODEL_TARGET = "caa_eval.lmeval.model:SteeredHFLM"


def on_import(name: str, module: Any) -> None:
    if name == "lm_eval.models":
        _register_model()
    elif name == "lm_eval.tasks":
        _patch_task_manager(module)
    elif name == "lm_eval.loggers.evaluation_tracker":
        _patch_tracker(module)
    elif name == "lm_eval.api.model":
        _patch_caching_lm(module)


def _register_model() -> None:
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    _one_line_errors()


def _one_line_errors() -> None:
    """Under the plain `lm_eval` CLI, a bad steering argument prints one line, not a traceback."""
    if getattr(sys.excepthook, "_caa_eval", False):
        return
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        from caa_eval.errors import CAAEvalError

        if isinstance(value, CAAEvalError):
            print(f"caa-eval: error: {value}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    excepthook._caa_eval = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def _wrap_once(cls: Any, name: str, make: Any) -> None:
    """Replace `cls.name` by `make(original)` once (modules can be reloaded; patches must not stack)."""
    original = getattr(cls, name)
    if getattr(original, "_caa_eval", False):
        return
    wrapper = functools.wraps(original)(make(original))
    wrapper._caa_eval = True
    setattr(cls, name, wrapper)


def _patch_task_manager(module: Any) -> None:
    def make(original: Any) -> Any:
        def __init__(self, *args: Any, include_path: Any = None, **kwargs: Any) -> None:
            from caa_eval.paths import tasks_dir

            ours = str(tasks_dir())
            paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
            if ours not in [str(p) for p in paths]:
                paths.insert(0, ours)  # user paths come later and win on name clashes
            original(self, *args, include_path=paths, **kwargs)

        return __init__

    _wrap_once(module.TaskManager, "__init__", make)


def steering_slug(model_args: Any) -> str:
    """A readable, collision-free folder suffix for one steering config."""
    if isinstance(model_args, str):
        from lm_eval.utils import simple_parse_args_string

        model_args = simple_parse_args_string(model_args)
    args = dict(model_args or {})
    keys = ("vector", "layers", "multiplier", "site", "positions", "behaviour")
    shown = {k: args.get(k) for k in keys if args.get(k) is not None}
    digest = hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:8]
    mult = shown.get("multiplier", 0)
    layers = shown.get("layers", "none")
    layers = "-".join(str(x) for x in layers) if isinstance(layers, (list, tuple)) else str(layers)
    return f"steer_L{layers}_m{mult}_{shown.get('site', 'residual')}_{digest}".replace("/", "_").replace(" ", "")


def _patch_tracker(module: Any) -> None:
    def make(original: Any) -> Any:
        def log_experiment_args(self, model_source: str, model_args: Any, *args: Any, **kwargs: Any) -> None:
            original(self, model_source, model_args, *args, **kwargs)
            if model_source == MODEL_NAME:
                self.model_name_sanitized = f"{self.model_name_sanitized}__{steering_slug(model_args)}"

        return log_experiment_args

    _wrap_once(module.GeneralConfigTracker, "log_experiment_args", make)


def _patch_caching_lm(module: Any) -> None:
    def make(original: Any) -> Any:
        def __init__(self, lm: Any, cache_db: str) -> None:
            fingerprint = getattr(lm, "steering_fingerprint", None)
            if fingerprint:
                base, dot, ext = cache_db.rpartition(".")
                cache_db = f"{base}_{fingerprint}.{ext}" if dot else f"{cache_db}_{fingerprint}"
            original(self, lm, cache_db)

        return __init__

    _wrap_once(module.CachingLM, "__init__", make)


def ensure_registered() -> None:
    """For entry points that import lm_eval themselves (CLI wrapper, sweeps, tests)."""
    import caa_eval_autoregister  # noqa: F401  (installs the watcher and patches what is already loaded)
