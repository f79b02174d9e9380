"""`steered-hf`: lm-eval's HF model with CAA steering hooks around every forward and every generate.

It is an `HFLM` subclass, so batching, chat templates, accelerate/device_map, peft and every task work as
with `--model hf`; with multiplier 0 (or no vector) it *is* `hf`. The hooks need real token positions, so
the right-padded, mask-less loglikelihood batches HFLM builds are mapped back to their requests' lengths.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import torch
from lm_eval.models.huggingface import HFLM

from caa_eval.core import chat_templates
from caa_eval.core import vectors as vector_files
from caa_eval.core.hooks import Steering
from caa_eval.core.layers import ModelLayout
from caa_eval.core.positions import Positions
from caa_eval.errors import CAAEvalError
from caa_eval.lmeval.scale_record import ScaleRecorder
from caa_eval.lmeval.steering_args import STEERING_ARGS, checked_steering, reject_unknown
from caa_eval.models import DEFAULT_MODEL, resolve
from caa_eval.vocab import parse_layers

if TYPE_CHECKING:
    from caa_eval.lmeval.grid import SteeringGrid

__all__ = ["SteeredHFLM", "STEERING_ARGS"]


log = logging.getLogger(__name__)


class SteeredHFLM(HFLM):
    """lm-eval's `hf` model with CAA steering: `--model steered-hf --model_args pretrained=…,vector=…,layers=13,multiplier=-1`.

    Args:
        pretrained: HF model path/ID, a loaded model, or the embedded alias `smollm2-135m-instruct`.
        vector: a vector file (`.safetensors` from `caa-eval extract`, CAA's `vec_layer_<L>_<model>.pt`, or
            lm-eval steered's `.pt`) or a `SteeringVector`; None = unsteered (multiplier must be 0).
        layers: layer spec (`13`, `[12,13]`, `"10-14"`); default: the file's layer if it holds one.
        multiplier: coefficient on the vector (finite); 0 registers no hooks, so the model *is* `hf`.
        site: `residual`, `mlp` or `attn` (default: the site the vector was read at).
        positions: `after_instruction` (CAA), `all`, `generated`, `span:S:E` or `regex:P`.
        allow_fingerprint_mismatch: apply a vector read from other weights (base→chat transfer).
        layers_path: dotted path to the decoder blocks for models not found structurally.
        vector_layer: apply the file's vector of this layer at every layer in `layers` (layer transfer, §8.2).
        chat_template: a shipped template name (`caa-llama2`: CAA's system-prompt placement) or a Jinja file
            that replaces the tokenizer's chat template for every prompt of the run.
        **kwargs: every other `HFLM` argument (batch_size, device, dtype, peft, parallelize, …).
    """

    resolved_steering: dict[str, Any] | None = None  # newest model's resolved setting (see `_record`)

    def __init__(
        self,
        pretrained: Any = DEFAULT_MODEL,
        vector: str | vector_files.SteeringVector | None = None,
        layers: Any = None,
        multiplier: float | int | str = 1.0,
        site: str | None = None,
        positions: str = "after_instruction",
        allow_fingerprint_mismatch: Any = False,
        layers_path: str | None = None,
        vector_layer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        reject_unknown(kwargs)
        # every steering argument is checked before the (possibly long) model load
        checked = checked_steering(
            vector, layers, multiplier, site, positions, allow_fingerprint_mismatch, vector_layer
        )
        template = chat_templates.chat_template(chat_template) if chat_template else None
        if isinstance(pretrained, str):
            pretrained = resolve(pretrained)
        if kwargs.get("tokenizer") == DEFAULT_MODEL:
            kwargs["tokenizer"] = resolve(DEFAULT_MODEL)
        super().__init__(pretrained=pretrained, **kwargs)
        if template is not None:
            self.tokenizer.chat_template = template
        self._join_data_parallel()
        self.layout = ModelLayout.of(self.model, layers_path)  # once: hooks, grid and scale probe share it
        self._known_rows: dict[tuple[int, ...], int] | None = None
        self._steering: Steering | None = None
        self._fingerprint_cache: str | None = None
        self._scales = ScaleRecorder(self.model, self.tokenizer, self.layout)
        self.grid: SteeringGrid | None = None  # several settings in one pass (`plan_grid`)
        self._apply(checked)

    # ------------------------------------------------------------------ configuration

    def _join_data_parallel(self) -> None:
        """Take rank and world size from `accelerate launch` where HFLM leaves every process at rank 0 of 1.

        lm-eval 0.4.13 enables data parallelism only when it sees more than one GPU, so on CPU (gloo) or with
        several processes on one GPU each process would run every request and all would write the same output
        files. With the accelerator's rank and world size lm-eval splits the requests and gathers the results.
        """
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1 and getattr(self, "_world_size", 1) == 1:
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            log.info("steered-hf: data-parallel rank %d of %d", self._rank, self._world_size)

    @property
    def model_fingerprint(self) -> str:
        """Fingerprint of the base weights: with `peft=DIR` (a LoRA on the same base) the base model's vectors fit."""
        if self._fingerprint_cache is None:
            from caa_eval.finetune.adapter import base_fingerprint

            self._fingerprint_cache = base_fingerprint(self.model)
        return self._fingerprint_cache

    def _adapter(self) -> dict[str, Any]:
        """Which peft adapter runs under the steering (recorded in steering_config and the results)."""
        if not getattr(self, "peft", None):
            return {}
        if getattr(self, "_adapter_cache", None) is None:
            from caa_eval.finetune.adapter import adapter_summary

            self._adapter_cache = adapter_summary(self.peft, self.model_fingerprint)
        return {"adapter": self._adapter_cache}

    def set_steering(
        self,
        vector: str | vector_files.SteeringVector | None = None,
        layers: Any = None,
        multiplier: float | int | str = 1.0,
        site: str | None = None,
        positions: str = "after_instruction",
        allow_fingerprint_mismatch: Any = False,
        vector_layer: Any = None,
    ) -> None:
        """(Re)configure steering in place: sweeps change layer/multiplier/site without reloading the model.

        Everything is checked before anything changes: a refused setting leaves the previous one in place.
        `steering_config` then holds the RESOLVED setting (defaults filled in), the one source of every label.

        Args:
            vector: vector file or `SteeringVector`; None = unsteered (multiplier must be 0).
            layers: layer spec; None = the vector's only layer.
            multiplier: finite coefficient (default 1).
            site: residual / mlp / attn; None = the site the vector was read at.
            positions: position rule (see `Positions`).
            allow_fingerprint_mismatch: apply a vector read from other weights.
            vector_layer: apply the file's vector of this layer at every layer in `layers` (CAA's layer transfer).
        """
        self._apply(
            checked_steering(vector, layers, multiplier, site, positions, allow_fingerprint_mismatch, vector_layer)
        )

    def _apply(self, args: dict[str, Any]) -> None:
        """Resolve checked arguments against the loaded model; assign only when everything fits."""
        steering, config, fingerprint = self._resolve(args)
        self._steering, self.steering_config, self.steering_fingerprint = steering, config, fingerprint
        _record(config, fingerprint)

    def _resolve(self, args: dict[str, Any]) -> tuple[Steering | None, dict[str, Any], str]:
        """(hooks or None, resolved config, fingerprint) of checked arguments; changes nothing."""
        multiplier, positions_rule, sv = args["multiplier"], Positions.parse(args["positions"]), args["vector"]
        if sv is None:
            config: dict[str, Any] = {
                "vector": None,
                "layers": [],
                "multiplier": multiplier,
                "site": args["site"] or "residual",
                "positions": str(positions_rule),
                **self._adapter(),
            }
            return None, config, ""
        layer_list, vectors = self._vectors_for(args)
        site = args["site"] or sv.site
        steering = None
        if multiplier != 0:  # multiplier 0 is exactly the unsteered model: no hooks at all
            steering = Steering(
                self.model, vectors, multiplier, site, positions_rule, tokenizer=self.tokenizer, layout=self.layout
            )
        _log_setting(args, sv, layer_list, site, positions_rule)
        vector_layer = args.get("vector_layer")
        config = {
            "vector": args["source"],
            "vector_sha256": sv.sha256(),
            "behaviour": sv.behaviour,
            "layers": layer_list,
            "multiplier": multiplier,
            "site": site,
            "positions": str(positions_rule),
            "vector_model": sv.model,
            "normalization": sv.normalization,
            **self._adapter(),
            **({"vector_layer": vector_layer} if vector_layer is not None else {}),
        }
        fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return steering, config, fingerprint

    def _vectors_for(self, args: dict[str, Any]) -> tuple[list[int], dict[int, torch.Tensor]]:
        """The steered layers and the vector added at each, checked against this model."""
        sv, source = args["vector"], args["source"]
        n_layers = self.layout.n_layers
        layer_list = parse_layers(args["layers"], n_layers) if args["layers"] is not None else None
        if layer_list is None:
            if len(sv.layers) != 1:
                raise CAAEvalError(
                    f"{source} holds layers {vector_files.ranges(sv.layers)}; choose with layers=13 or layers=[12,13]"
                )
            layer_list = sv.layers
        vector_layer = args.get("vector_layer")
        read_layers = [vector_layer] if vector_layer is not None else layer_list
        vector_files.validate_for_model(
            sv,
            self.layout.hidden_size or 0,
            self.model_fingerprint if sv.model_fingerprint else "",
            read_layers,
            n_layers,
            args["allow_fingerprint_mismatch"],
            source,
        )
        if vector_layer is not None:  # one layer's vector added at every steered layer (layer transfer, §8.2)
            return layer_list, {layer: sv.select([vector_layer], source)[vector_layer] for layer in layer_list}
        return layer_list, sv.select(layer_list, source)

    # ------------------------------------------------------------------ one pass for a grid of settings

    def plan_grid(
        self, configs: list[dict[str, Any]], max_rows: int = 256, tasks: list[list[str] | None] | None = None
    ) -> None:
        """Announce every steering config a sweep will run, so log-likelihoods are computed for all of them in one
        pass (shared unsteered prefix, one short tail per config) and greedy generations in one `generate` call
        per batch of prompts (see `caa_eval.lmeval.grid`). Cells are still run one by one with `set_steering`;
        their results come from the grid. The active steering is left as it was.

        Args:
            configs: `set_steering` keyword dicts (a dict without `vector` is the unsteered baseline); pass loaded
                `SteeringVector`s to spare reading and hashing the file per config.
            max_rows: prefix rows × configs per tail batch, prompts × configs per generate call (memory bound).
            tasks: per config, the task names it will run (None: any); a generation is decoded in advance only
                for the configs that will ask for it.
        """
        from caa_eval.lmeval.grid import GridSetting, SteeringGrid

        settings = []
        for i, config in enumerate(configs):
            steering, resolved, fingerprint = self._resolve(checked_steering(**config))
            wanted = tasks[i] if tasks is not None else None
            settings.append(
                GridSetting(
                    key=fingerprint or "unsteered",
                    vectors=dict(steering.vectors) if steering is not None else {},
                    multiplier=float(resolved["multiplier"]),
                    site=resolved["site"],
                    positions=Positions.parse(resolved["positions"]),
                    tasks=frozenset(wanted) if wanted is not None else None,
                )
            )
        self.grid = SteeringGrid(settings, max_rows=max_rows, layout=self.layout)

    def clear_grid(self) -> None:
        self.grid = None

    def _grid_loglikelihood(self, requests, disable_tqdm: bool) -> list[tuple[float, bool]] | None:
        grid = getattr(self, "grid", None)
        key = self.steering_fingerprint or "unsteered"
        if grid is None or not grid.covers(key):
            return None
        rows = [((ctx + cont)[-(self.max_length + 1) :][:-1], cont) for _, ctx, cont in requests]
        found = grid.lookup(key, rows)
        if found is None:
            batch = int(self.batch_size) if str(self.batch_size).isdigit() else 8
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            grid.compute(self.model, self.tokenizer, rows, batch, pad, getattr(self, "softmax_dtype", None))
            found = grid.lookup(key, rows)
        for (request, _, _), answer in zip(requests, found):
            self.cache_hook.add_partial("loglikelihood", request, answer)
        return found

    # ------------------------------------------------------------------ steered forwards

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        from_grid = self._grid_loglikelihood(requests, disable_tqdm)
        if from_grid is not None:
            return from_grid
        if self._steering is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # HFLM right-pads these rows with zeros and no mask; remember each row's real length and context length
        self._known_rows = {}
        for _, context_enc, continuation_enc in requests:
            row = (context_enc + continuation_enc)[-(self.max_length + 1) :][:-1]
            self._known_rows[tuple(row)] = len(row) - (len(continuation_enc) - 1)
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._known_rows = None

    def _row_lengths(self, inps: torch.Tensor) -> tuple[list[int], list[int]]:
        assert self._known_rows is not None
        lengths, prompts = [], []
        for row in inps.tolist():
            n = len(row)
            while tuple(row[:n]) not in self._known_rows:
                if n == 0 or row[n - 1] != 0:
                    raise RuntimeError(
                        "steered-hf: a batch row does not match any request (lm-eval internals changed?)"
                    )
                n -= 1
            lengths.append(n)
            prompts.append(self._known_rows[tuple(row[:n])])
        return lengths, prompts

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ):
        if self._steering is None or self._known_rows is None:  # unsteered, or HFLM's batch-size probe
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        lengths, prompts = self._row_lengths(inps)
        self._steering.set_batch(row_lengths=lengths, prompt_lengths=prompts)
        with self._steering:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def generate_until(self, requests, disable_tqdm: bool = False):
        # the grid decodes a batch of prompts in advance only for the settings that run the same task
        self._request_tasks = frozenset(t for t in (getattr(r, "task_name", None) for r in requests) if t)
        texts = super().generate_until(requests, disable_tqdm=disable_tqdm)
        self._score_fluency(requests, texts)
        return texts

    def _score_fluency(self, requests: list[Any], texts: list[str]) -> None:
        """Each generation's perplexity under the unsteered model, left for the tasks' process_results
        (`caa_eval.lmeval.fluency`): same process and weights, steering off, one batched pass."""
        from caa_eval.lmeval import fluency

        fluency.clear()
        wanted = fluency.wanted()  # only tasks that report fluency pay for the extra pass
        chosen = [(r, t) for r, t in zip(requests, texts) if getattr(r, "task_name", None) in wanted]
        if not chosen:
            return
        contexts, generations = [r.args[0] for r, _ in chosen], [t for _, t in chosen]
        for (r, text), ppl in zip(chosen, fluency.unsteered_perplexities(self, contexts, generations)):
            fluency.record(str(getattr(r, "task_name", "")), r.doc or {}, text, ppl)

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        grid = getattr(self, "grid", None)
        key = self.steering_fingerprint or "unsteered"
        if grid is not None and grid.covers(key) and grid.shares_generation(generation_kwargs):
            return grid.generate(
                super()._model_generate,
                self.model,
                self.tokenizer,
                key,
                context,
                max_length,
                stop,
                generation_kwargs,
                getattr(self, "_request_tasks", frozenset()),
            )
        if self._steering is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        self._steering.set_batch()
        with self._steering:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's rendering, noting the run's system prompt: its cost is recorded with the steering's."""
        self._scales.system_prompts.add(
            next((str(m.get("content") or "") for m in chat_history if m["role"] == "system"), "")
        )
        return super().apply_chat_template(chat_history, add_generation_prompt)

    def steering_scale(self) -> dict[str, Any]:
        """How big the current steering is relative to this model (§9.1): the multiplier as a fraction of the mean
        residual-stream norm at the steered layers and the next-token KL on the shipped neutral prompts
        (`caa_eval.core.scale.ScaleProbe`). Recorded in every results file, so every report can state it.
        Cached per steering setting; the probe's unsteered pass runs once per model."""
        return self._scales.steering_scale(self._steering, self.steering_config, self.steering_fingerprint)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["steering"] = dict(
            self.steering_config, fingerprint=self.steering_fingerprint, model_fingerprint=self.model_fingerprint
        )
        try:
            info["steering"]["scale"] = dict(self.steering_scale())
            kl = float(info["steering"]["scale"]["kl"])
            info["steering"]["scale"].update(self._scales.prompt_scale(self._steering, self.steering_config, kl))
        except Exception as exc:  # the evaluation's results are worth more than their scale note: keep them
            log.warning("steered-hf: could not measure the steering's scale on the neutral prompts: %s", exc)
            info["steering"]["scale"] = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        return info


def _log_setting(args: dict[str, Any], sv: Any, layers: list[int], site: str, positions: Positions) -> None:
    if site != sv.site:
        log.warning("vector was read at site %r but is applied at site %r", sv.site, site)
    scale = (
        f"CAA-normalised ({sv.normalization.get('method')}): multipliers are on CAA's published scale"
        if sv.normalization
        else "raw (not normalised): multipliers are relative to this vector's own norm"
    )
    log.info(
        "steering with %s, layers %s, multiplier %g, site %s, positions %s; vector %s",
        args["source"],
        layers,
        args["multiplier"],
        site,
        positions,
        scale,
    )


def _record(config: dict[str, Any], fingerprint: str) -> None:
    """The resolved setting of the newest steered-hf model: lm-eval's output folder is named from it."""
    SteeredHFLM.resolved_steering = dict(config, fingerprint=fingerprint)
