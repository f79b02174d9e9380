"""One pass per task for a grid of steering settings: the unsteered prefix once, a short steered tail per setting.

Under CAA's rule every token before the first steered position is identical for all multipliers, vectors,
layers and sites. For each batch of log-likelihood requests the prefix is run once with a KV cache; then, per
(vector, site) group, the cache is repeated once per setting and only the tail (first steered token to the
end) is run, all of the group's multipliers and layers in one batch with per-row coefficients. A two-option
MMLU item under 14 settings costs one ~100-token prefix and 14 tails of 2–3 tokens instead of 14 full passes.

Greedy generation is shared too: the first time a batch of prompts is generated for one setting, every setting
of the grid that runs the same task decodes it in the same `generate` call (the batch repeated once per
setting, one coefficient per row; an unsteered setting is a row with coefficient 0, which adds exactly 0), and
the others later read their rows. Each row sees exactly the padded prompt a separate run would see.

Results equal separate `steered-hf` runs (tested to 1e-5): tokens before the first steered position are never
steered, so their keys and values are the same in every setting (causal attention).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from caa_eval.core.forward import cache_kwarg, pad_right
from caa_eval.core.hooks import Steering
from caa_eval.core.layers import ModelLayout
from caa_eval.core.positions import InstructionLocator, Positions

__all__ = ["GridSetting", "SteeringGrid"]

_SHAREABLE = ("after_instruction", "all")


@dataclass
class GridSetting:
    """One steering setting of the grid, keyed by the steered-hf fingerprint of its config."""

    key: str
    vectors: dict[int, torch.Tensor]
    multiplier: float
    site: str
    positions: Positions
    tasks: frozenset[str] | None = None  # the tasks this setting will run (None: any); limits shared generation

    def __post_init__(self) -> None:
        # the vectors' content, hashed once (a grid asks for its groups on every batch)
        self._content = tuple(
            (layer, hashlib.sha1(v.detach().float().cpu().numpy().tobytes()).hexdigest())
            for layer, v in sorted(self.vectors.items())
        )

    def group(self) -> tuple:
        """Settings that differ only in multiplier share one tail batch (per-row coefficients)."""
        return (self.site, self._content)


@dataclass
class SteeringGrid:
    """The settings a sweep will ask for, and the log-likelihoods computed for all of them at once.

    Args:
        settings: every setting (an unsteered baseline is a setting with multiplier 0).
        max_rows: upper bound on prefix rows × settings in one tail batch (memory of the repeated cache).
        layout: the model's `ModelLayout` (where the hooks go); None = resolved structurally.
    """

    settings: list[GridSetting]
    max_rows: int = 256
    layout: ModelLayout | None = None
    results: dict[tuple[str, tuple[int, ...], tuple[int, ...]], tuple[float, bool]] = field(default_factory=dict)
    generated: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [s.key for s in self.settings if s.positions.mode not in _SHAREABLE]
        if bad:
            raise ValueError(
                f"positions {sorted({str(s.positions) for s in self.settings})} cannot share a prefix; "
                f"use one of {', '.join(_SHAREABLE)}"
            )
        self.by_key = {s.key: s for s in self.settings}

    def covers(self, key: str) -> bool:
        return key in self.by_key

    def lookup(self, key: str, rows: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]] | None:
        """Cached results for one setting, or None when any row is missing."""
        out = []
        for inp, cont in rows:
            hit = self.results.get((key, tuple(inp), tuple(cont)))
            if hit is None:
                return None
            out.append(hit)
        return out

    @torch.no_grad()
    def compute(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        rows: Sequence[tuple[list[int], list[int]]],
        batch_size: int,
        pad_id: int,
        softmax_dtype: torch.dtype | None = None,
    ) -> None:
        """Fill `results` for every setting and every (input ids, continuation ids) row.

        Args:
            model: the HF causal LM (steering hooks are added and removed here).
            tokenizer: for the instruction end (CAA's first steered token).
            rows: `inp` = context + continuation without its last token (as HFLM builds it), `cont` = continuation.
            batch_size: prefix rows per batch.
            pad_id: padding token id (masked out).
            softmax_dtype: dtype of the log-softmax (HFLM's `softmax_dtype`).
        """
        locator = (
            InstructionLocator(tokenizer) if any(s.positions.needs_chat_structure for s in self.settings) else None
        )
        # requests that share their input (A and B after the same context) share one row, as in HFLM
        conts: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for inp, cont in rows:
            mine = conts.setdefault(tuple(inp), [])
            if tuple(cont) not in mine:
                mine.append(tuple(cont))
        todo = sorted(conts, key=lambda inp: -len(inp))
        device = next(model.parameters()).device
        for start in range(0, len(todo), batch_size):
            batch = [(inp, conts[inp]) for inp in todo[start : start + batch_size]]
            for rule, settings in self._by_rule().items():
                starts = [self._first_steered(rule, list(inp), locator) for inp, _ in batch]
                self._run(model, batch, starts, settings, pad_id, device, softmax_dtype)

    def _by_rule(self) -> dict[str, list[GridSetting]]:
        out: dict[str, list[GridSetting]] = {}
        for s in self.settings:
            out.setdefault(str(s.positions), []).append(s)
        return out

    @staticmethod
    def _first_steered(rule: str, inp: list[int], locator: InstructionLocator | None) -> int:
        if rule == "all":
            return 0
        assert locator is not None
        return locator.instruction_end(inp)  # may lie in the continuation (lm-eval moves trailing spaces there)

    def _run(self, model, batch, starts, settings, pad_id, device, softmax_dtype) -> None:
        cache_kw = cache_kwarg(model)
        # the tail starts where steering starts, or earlier at the first scored position
        cuts = [min(s, len(inp) - max(map(len, conts))) for (inp, conts), s in zip(batch, starts)]
        prefix_ids = [list(inp[:c]) for (inp, _), c in zip(batch, cuts)]
        cache = None
        if any(prefix_ids):
            from transformers import DynamicCache

            # rows keep their own prefix length; a row with an empty prefix still gets one (masked) slot
            ids, mask = pad_right([p or [pad_id] for p in prefix_ids], pad_id, device)
            for i, p in enumerate(prefix_ids):
                if not p:
                    mask[i] = 0
            cache = DynamicCache()
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_kw: cache},
                logits_to_keep=1,
            )
        else:
            mask = torch.zeros((len(batch), 0), dtype=torch.long, device=device)
        # the tails' ids, mask and positions are the same for every setting: built once per batch
        tail_ids, tail_mask = pad_right([list(inp[c:]) for (inp, _), c in zip(batch, cuts)], pad_id, device)
        full_mask = torch.cat([mask, tail_mask], 1)
        lengths = torch.tensor([len(p) for p in prefix_ids], device=device)
        positions = lengths[:, None] + torch.arange(tail_ids.shape[1], device=device)[None]
        tail = (tail_ids, full_mask, positions)
        groups: dict[tuple, list[GridSetting]] = {}
        for s in settings:
            groups.setdefault(s.group(), []).append(s)
        per_chunk = max(1, self.max_rows // len(batch))
        for group in groups.values():
            for k0 in range(0, len(group), per_chunk):
                self._tail(
                    model,
                    batch,
                    tail,
                    prefix_ids,
                    starts,
                    cache,
                    group[k0 : k0 + per_chunk],
                    device,
                    cache_kw,
                    softmax_dtype,
                )

    def _tail(self, model, batch, tail, prefix_ids, starts, cache, chunk, device, cache_kw, softmax_dtype):
        k = len(chunk)
        tail_ids, full_mask, positions = (t.repeat_interleave(k, 0) for t in tail)
        kwargs: dict[str, Any] = {}
        if cache is not None:
            rep = copy.deepcopy(cache)
            rep.batch_repeat_interleave(k)
            kwargs[cache_kw] = rep
        coefficients = torch.tensor([s.multiplier for s in chunk] * len(batch), dtype=torch.float32)
        first = chunk[0]
        steering: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if first.vectors:  # steer from each row's absolute first steered position ("generated" from a given position)
            steer = Steering(model, first.vectors, coefficients, first.site, "generated", layout=self.layout)
            steer.set_batch(prompt_lengths=[s for s in starts for _ in range(k)])
            steering = steer
        with steering:
            logits = model(
                input_ids=tail_ids,
                attention_mask=full_mask,
                position_ids=positions,
                use_cache=cache is not None,
                **kwargs,
            ).logits
        logp = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
        for b, (inp, conts) in enumerate(batch):
            for cont in conts:
                first_scored = len(inp) - len(cont) - len(prefix_ids[b])  # in tail coordinates
                want = torch.tensor(cont, device=device)
                for j, setting in enumerate(chunk):
                    rows = logp[b * k + j, first_scored : first_scored + len(cont)]
                    greedy = bool((rows.argmax(-1) == want).all())
                    value = float(rows.gather(1, want[:, None]).sum())
                    self.results[(setting.key, inp, cont)] = (value, greedy)

    # ------------------------------------------------------------------ greedy generation

    @staticmethod
    def shares_generation(generation_kwargs: dict[str, Any]) -> bool:
        """Only greedy decoding is shared: sampled text depends on the random stream, not only on the setting."""
        return not generation_kwargs.get("do_sample") and not generation_kwargs.get("temperature")

    @staticmethod
    def _signature(context: torch.Tensor, max_length: int, stop: Sequence[str], kwargs: dict[str, Any]) -> str:
        h = hashlib.sha256()
        mask = kwargs.get("attention_mask")
        for t in (context, mask):
            if t is not None:
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().numpy().tobytes())
        rest = {k: v for k, v in kwargs.items() if k != "attention_mask"}
        h.update(repr((max_length, list(stop), sorted(rest.items(), key=lambda kv: kv[0]))).encode())
        return h.hexdigest()

    @torch.no_grad()
    def generate(
        self,
        run: Any,
        model: torch.nn.Module,
        tokenizer: Any,
        key: str,
        context: torch.Tensor,
        max_length: int,
        stop: list[str],
        kwargs: dict[str, Any],
        tasks: frozenset[str],
    ) -> torch.Tensor:
        """The generated ids of setting `key` for this batch of prompts (as `model.generate` returns them).

        Args:
            run: HFLM's own `_model_generate` (called with the repeated batch under the steering hooks).
            model: the HF causal LM.
            tokenizer: for the instruction end.
            key: the asking setting.
            context: the left-padded prompt ids of the batch.
            max_length: as HFLM passes it.
            stop: stop sequences.
            kwargs: the remaining generation kwargs (attention_mask, …).
            tasks: the tasks of the requests being generated: settings planned for other tasks are not decoded.
        """
        signature = self._signature(context, max_length, stop, kwargs)
        if (key, signature) not in self.generated:
            wanted = [
                s
                for s in self.settings
                if (s.key, signature) not in self.generated and (s.key == key or s.tasks is None or s.tasks & tasks)
            ]
            batch = context.shape[0]
            per_chunk = max(1, self.max_rows // batch)
            for group in self._generation_groups(wanted):
                for k0 in range(0, len(group), per_chunk):
                    chunk = group[k0 : k0 + per_chunk]
                    out = self._generate_chunk(
                        run, model, tokenizer, chunk, context, max_length, stop, kwargs, self.layout
                    )
                    for j, setting in enumerate(chunk):
                        self.generated[(setting.key, signature)] = out[j * batch : (j + 1) * batch]
        return self.generated[(key, signature)]

    @staticmethod
    def _generation_groups(settings: list[GridSetting]) -> list[list[GridSetting]]:
        """Settings that one Steering can serve (same vectors, site and rule); unsteered ones join the first."""
        groups: dict[tuple, list[GridSetting]] = {}
        plain = [s for s in settings if not s.vectors]
        for s in settings:
            if s.vectors:
                groups.setdefault((str(s.positions), *s.group()), []).append(s)
        out = list(groups.values())
        if not out:
            return [plain] if plain else []
        out[0] = plain + out[0]
        return out

    @staticmethod
    def _generate_chunk(run, model, tokenizer, chunk, context, max_length, stop, kwargs, layout) -> torch.Tensor:
        k = len(chunk)
        rows = dict(kwargs)
        if rows.get("attention_mask") is not None:
            rows["attention_mask"] = rows["attention_mask"].repeat(k, 1)
        steered = next((s for s in chunk if s.vectors), None)
        steering: Any = contextlib.nullcontext()
        if steered is not None:
            coefficients = torch.tensor([s.multiplier for s in chunk], dtype=torch.float32).repeat_interleave(
                context.shape[0]
            )
            steering = Steering(
                model,
                steered.vectors,
                coefficients,
                steered.site,
                steered.positions,
                tokenizer=tokenizer,
                layout=layout,
            )
            steering.set_batch()
        with steering:
            return run(context=context.repeat(k, 1), max_length=max_length, stop=stop, **rows)
