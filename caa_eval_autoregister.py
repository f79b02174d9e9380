"""Startup hook (loaded by caa_eval_autoregister.pth): make plain `lm_eval` know caa-eval.

lm-eval 0.4.x has no plugin entry point. This only installs a tiny import watcher (`caa_eval.lmeval.register`,
which imports nothing heavy): when `lm_eval.models` / `lm_eval.tasks` / the logger have finished importing,
it adds `steered-hf` (as a lazy placeholder) and the shipped task folder.
"""

try:
    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
except Exception:  # a broken or half-removed install must never stop the interpreter from starting
    pass
