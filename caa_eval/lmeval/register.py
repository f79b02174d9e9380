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
import importlib.abc
import importlib.machinery
import json
import sys
from typing import Any

MODEL_NAME = "steered-hf"
MODEL_TARGET = "caa_eval.lmeval.model:SteeredHFLM"
# lm-eval modules patched once they have finished importing (the one list; the startup hook asks `ensure_registered`)
WATCHED = frozenset(
    {"lm_eval.models", "lm_eval.tasks", "lm_eval.loggers.evaluation_tracker", "lm_eval.api.model", "lm_eval._cli.utils"}
)


def on_import(name: str, module: Any) -> None:
    if name == "lm_eval.models":
        _register_model()
    elif name == "lm_eval.tasks":
        _patch_task_manager(module)
    elif name == "lm_eval.loggers.evaluation_tracker":
        _patch_tracker(module)
    elif name == "lm_eval.api.model":
        _patch_caching_lm(module)
    elif name == "lm_eval._cli.utils":
        _patch_model_args_parser(module)


def _register_model() -> None:
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    _one_line_errors()


def _debugging() -> bool:
    """lm_eval's own debug switches (`--verbosity DEBUG`, $LMEVAL_LOG_LEVEL=DEBUG) keep full tracebacks."""
    import logging
    import os

    argv = [a.upper() for a in sys.argv]
    flag = any(a in ("-V", "--VERBOSITY") and argv[i + 1 : i + 2] == ["DEBUG"] for i, a in enumerate(argv))
    return (
        flag
        or "--VERBOSITY=DEBUG" in argv
        or os.environ.get("LMEVAL_LOG_LEVEL", "").upper() == "DEBUG"
        or logging.getLogger("lm_eval").isEnabledFor(logging.DEBUG)
    )


def _one_line_errors() -> None:
    """Under the plain `lm_eval` CLI, a bad steering argument prints one line and exits 2, not a traceback."""
    if getattr(sys.excepthook, "_caa_eval", False):
        return
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        from caa_eval.errors import CAAEvalError

        if isinstance(value, CAAEvalError) and not _debugging():
            print(f"caa-eval: error: {value}", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(2)  # bad input, as argparse and `caa-eval` report it
        previous(kind, value, traceback)

    excepthook._caa_eval = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def _list_hint(text: str, bare: str) -> str:
    """`layers=3,14` reaches lm-eval's parser as `layers=3` and a bare `14`: say how to write a list."""
    from lm_eval._cli.utils import split_top_level

    items = split_top_level(text)
    i = items.index(bare) if bare in items else -1
    j = i
    while j > 0 and "=" not in items[j - 1]:
        j -= 1
    if j <= 0:
        return ""
    key, _, first = items[j - 1].partition("=")
    values = [first, *items[j : i + 1]]
    k = i + 1
    while k < len(items) and "=" not in items[k]:
        values.append(items[k])
        k += 1
    if not all(v.strip().lstrip("+-").replace(".", "", 1).isdigit() for v in values):
        return ""  # not a list of numbers (layers, multipliers): no guess
    return f"; a list needs brackets: write {key}=[{','.join(values)}]"


def _patch_model_args_parser(module: Any) -> None:
    original = module.key_val_to_dict
    if getattr(original, "_caa_eval", False):
        return

    @functools.wraps(original)
    def key_val_to_dict(args: str) -> dict[str, Any]:
        try:
            return original(args)
        except ValueError as exc:
            bare = str(exc).rpartition("got ")[2].strip("'\"")
            hint = _list_hint(args, bare) if "key=value" in str(exc) else ""
            raise ValueError(f"{exc}{hint}") from None

    key_val_to_dict._caa_eval = True  # type: ignore[attr-defined]
    module.key_val_to_dict = key_val_to_dict


def _wrap_once(cls: Any, name: str, make: Any) -> None:
    """Replace `cls.name` by `make(original)` once (modules can be reloaded; patches must not stack)."""
    original = getattr(cls, name)
    if getattr(original, "_caa_eval", False):
        return
    wrapper: Any = functools.wraps(original)(make(original))
    wrapper._caa_eval = True
    setattr(cls, name, wrapper)


def _patch_task_manager(module: Any) -> None:
    def make(original: Any) -> Any:
        def __init__(self, *args: Any, include_path: Any = None, **kwargs: Any) -> None:
            from caa_eval.paths import tasks_dir

            ours = str(tasks_dir())
            paths = (
                []
                if include_path is None
                else list(include_path)
                if isinstance(include_path, (list, tuple))
                else [include_path]
            )
            if ours not in [str(p) for p in paths]:
                paths.insert(0, ours)  # user paths come later and win on name clashes
            original(self, *args, include_path=paths, **kwargs)

        return __init__

    _wrap_once(module.TaskManager, "__init__", make)


def steering_slug(config: dict[str, Any] | None, model_args: Any = None) -> str:
    """A readable, collision-free folder suffix for one RESOLVED steering config.

    Why resolved: raw `--model_args` leave defaults out (a vector without a multiplier is steered at x1), so a
    label built from them can name the wrong setting. The label comes from what the model applies.

    Args:
        config: `SteeredHFLM.steering_config` (plus its `fingerprint`), as the model resolved it; None when no
            steered-hf model recorded one (then the label says so instead of guessing).
        model_args: the raw arguments, only hashed for the unresolved label.
    """
    if config is None:
        digest = hashlib.sha256(json.dumps(model_args, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"steer_unresolved_{digest}"
    digest = (
        config.get("fingerprint")
        or hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    )[:8]
    layers = "+".join(str(x) for x in config.get("layers") or []) or "none"
    mult = f"{float(config.get('multiplier', 0)):g}"
    site = config.get("site") or "residual"
    return f"steer_L{layers}_m{mult}_{site}_{digest}".replace("/", "_").replace(" ", "")


def resolved_steering() -> dict[str, Any] | None:
    """The resolved setting of the newest steered-hf model in this process (None if none was built)."""
    module = sys.modules.get("caa_eval.lmeval.model")  # loaded whenever a steered-hf model exists
    return getattr(getattr(module, "SteeredHFLM", None), "resolved_steering", None)


def _patch_tracker(module: Any) -> None:
    def make(original: Any) -> Any:
        def log_experiment_args(self, model_source: str, model_args: Any, *args: Any, **kwargs: Any) -> None:
            original(self, model_source, model_args, *args, **kwargs)
            if model_source == MODEL_NAME:
                slug = steering_slug(resolved_steering(), model_args)
                self.model_name_sanitized = f"{self.model_name_sanitized}__{slug}"

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


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `on_import` once a WATCHED lm-eval module has finished importing (never before: registering before
    `lm_eval.models` is complete breaks the built-in models)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            try:
                on_import(name, module)
            except Exception as exc:  # never break lm_eval itself
                print(f"caa-eval: could not register with lm_eval ({exc})", file=sys.stderr)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def ensure_registered() -> None:
    """Install the import watcher and patch the lm-eval modules already loaded (called by the startup hook
    `caa_eval_autoregister` at interpreter start, and by entry points that import lm_eval themselves)."""
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
        for name in WATCHED & set(sys.modules):  # already imported (e.g. hook installed late)
            on_import(name, sys.modules[name])
