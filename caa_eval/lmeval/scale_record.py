"""The scale note steered-hf writes into every results file (§9.1): how big the steering is relative to the
model (its norm as a fraction of the residual stream's, the next-token KL it causes on the shipped neutral
prompts) and what the run's system prompt costs on the same axis (`caa_eval.core.prompt_cost`)."""

from __future__ import annotations

from typing import Any

from caa_eval.core.hooks import Steering
from caa_eval.core.layers import ModelLayout

__all__ = ["ScaleRecorder"]


class ScaleRecorder:
    """One per steered-hf model: the probe's unsteered pass runs once, each setting's scale is measured once."""

    def __init__(self, model: Any, tokenizer: Any, layout: ModelLayout):
        self._model, self._tokenizer, self._layout = model, tokenizer, layout
        self._probe: Any = None  # caa_eval.core.scale.ScaleProbe, built on the first steered results
        self._cache: dict[str, dict[str, Any]] = {}  # steering fingerprint -> steering_scale()
        self.system_prompts: set[str] = set()  # system messages of the current run's requests ("" = none)

    def probe(self) -> Any:
        """The scale probe (neutral prompts' unsteered pass), built once per model."""
        if self._probe is None:
            from caa_eval.core.scale import ScaleProbe

            self._probe = ScaleProbe(self._model, self._tokenizer, layout=self._layout)
        return self._probe

    def steering_scale(self, steering: Steering | None, config: dict[str, Any], fingerprint: str | None) -> dict:
        """The setting's norm fraction and KL, cached per steering fingerprint.

        Args:
            steering: the active steering, None when unsteered.
            config: its resolved setting (`SteeredHFLM.steering_config`).
            fingerprint: its fingerprint, the cache key.
        """
        key = fingerprint or "unsteered"
        if key not in self._cache:
            setting = _setting(steering, config)
            self._cache[key] = self.probe().setting(**setting) if setting else {"norm_fraction": 0.0, "kl": 0.0}
        return self._cache[key]

    def prompt_scale(self, steering: Steering | None, config: dict[str, Any], kl: float) -> dict[str, Any]:
        """KL of the run's system prompt, alone and with the steering; the prompts seen are then forgotten.

        Args:
            steering: the active steering, None when unsteered.
            config: its resolved setting.
            kl: the steering's own KL (the total when no system prompt was seen).
        """
        from caa_eval.core.prompt_cost import prompt_scale

        seen, self.system_prompts = self.system_prompts, set()
        if not any(seen):  # answered without building the probe
            return {"system_prompt_kl": 0.0, "total_kl": kl}
        return prompt_scale(self.probe(), seen, _setting(steering, config), kl)


def _setting(steering: Steering | None, config: dict[str, Any]) -> dict[str, Any]:
    """The steering as the probe's keywords (vectors, multiplier, site, positions); {} when unsteered."""
    if steering is None:
        return {}
    return {
        "vectors": dict(steering.vectors),
        "multiplier": float(config["multiplier"]),
        "site": config["site"],
        "positions": config["positions"],
    }
