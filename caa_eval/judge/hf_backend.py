"""The `hf` judge: a local HF chat model, offline; the score is the expected value of its reply over "0".."10".

Nothing is generated: each of the 11 complete replies is scored by its log-probability after the judge
prompt, so the result is deterministic and independent of batching (see docs/judge.md for the limits of
small local judges).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.judge.backends import Done, Job
from caa_eval.judge.cache import Verdict
from caa_eval.judge.prompt import SCORES, build_messages
from caa_eval.judge.rubrics import Rubric

__all__ = ["DEFAULT_HF_MODEL", "HFBackend"]

DEFAULT_HF_MODEL = "smollm2-135m-instruct"  # the alias resolved by caa_eval.models


class HFBackend:
    """A local HF chat model as judge: the score is the expected value of its reply over "0".."10".

    Each candidate reply is scored as a whole: log p(score tokens + end-of-turn token | prompt). The
    end-of-turn token separates "1" from "10" whatever the tokenizer does with multi-digit numbers. The
    probabilities of the 11 candidates are renormalised; `p_valid` is their total mass before that.
    """

    name = "hf"
    secret: str | None = None

    def __init__(self, model: str | None = None, *, batch_size: int = 8):
        """Configure the backend; the model loads on first use.

        Args:
            model: a local HF chat model folder, a hub id, or the alias smollm2-135m-instruct (default).
            batch_size: prompts per forward pass.
        """
        self.model = model or DEFAULT_HF_MODEL
        if batch_size < 1:
            raise CAAEvalError(f"--batch-size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self._lm: Any = None
        self.forward_passes = 0

    # loading is lazy: a fully cached rerun never pays for the model
    def _load(self) -> None:
        if self._lm is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from caa_eval import models

        path = models.resolve(self.model)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            raise CAAEvalError(
                f"cannot load judge model {self.model!r} ({str(exc).splitlines()[0][:200]}); pass a local HF chat "
                f"model folder or the alias {DEFAULT_HF_MODEL}"
            ) from None
        if not tok.chat_template:
            raise CAAEvalError(f"judge model {self.model!r} has no chat template; use an instruction-tuned chat model")
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._tok, self._lm = tok, lm
        # transformers 5.2x renamed `past_key_values` to `cache` (input and output); 4.57 knows only the old name
        self._cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        self._merge_system = False
        try:
            self._render(build_messages(Rubric("probe", "probe"), "q", "a"))
        except Exception:  # noqa: BLE001 - templates without a system role raise their own error types
            self._merge_system = True
        self._candidates = self._candidate_ids()

    def _render(self, messages: list[dict[str, str]], reply: str | None = None) -> str:
        if self._merge_system and messages and messages[0]["role"] == "system":
            system, first, *rest = messages
            messages = [{"role": "user", "content": system["content"] + "\n\n" + first["content"]}, *rest]
        if reply is not None:
            messages = [*messages, {"role": "assistant", "content": reply}]
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=reply is None))

    def prompt_for(self, rubric: Rubric, question: str, answer: str) -> str:
        """The rendered chat prompt the judge model scores (loads the model on first use).

        Args:
            rubric: the behaviour's rubric.
            question: the question asked.
            answer: the answer graded.
        """
        self._load()
        return self._render(build_messages(rubric, question, answer))

    def _ids(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False).input_ids

    def _candidate_ids(self) -> list[list[int]]:
        """Token ids of each full reply "<score><end of turn>", tokenised in context after the prompt."""
        messages = build_messages(Rubric("probe", "probe"), "q", "a")
        prompt = self._render(messages)
        marker = "Zq9MARKERq9Z"
        full = self._render(messages, marker)
        if not full.startswith(prompt) or marker not in full[len(prompt) :]:
            raise CAAEvalError(
                f"judge model {self.model!r}: its chat template does not put the reply after the generation prompt; "
                "use another judge model"
            )
        tail = full[len(prompt) :]
        before, after = tail.split(marker, 1)
        prompt_ids = self._ids(prompt)
        candidates = []
        for score in SCORES:
            head = prompt + before + str(score)
            head_ids, full_ids = self._ids(head), self._ids(head + after)
            if head_ids[: len(prompt_ids)] != prompt_ids or full_ids[: len(head_ids)] != head_ids:
                raise CAAEvalError(
                    f"judge model {self.model!r}: its tokenizer merges the score with the prompt or the end-of-turn "
                    "marker; use another judge model"
                )
            end = full_ids[len(head_ids) : len(head_ids) + 1] or [self._tok.eos_token_id]
            if end[0] is None:
                raise CAAEvalError(
                    f"judge model {self.model!r}: no end-of-turn token to close a score reply; use another judge model"
                )
            candidates.append(head_ids[len(prompt_ids) :] + end)
        return candidates

    def score_prompts(self, prompts: list[str]) -> list[tuple[float, float, int]]:
        """(expected score, p_valid, prompt tokens) for a batch of rendered prompts (left-padded, one pass).

        Args:
            prompts: chat prompts from prompt_for.
        """
        import torch

        self._load()
        tok, lm = self._tok, self._lm
        enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask = enc.input_ids, enc.attention_mask
        batch = ids.shape[0]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            self.forward_passes += 1
            first = out.logits[:, -1].float().log_softmax(-1)
            cache = out[self._cache_kw]
            logp = torch.empty(batch, len(self._candidates))
            for c, cand in enumerate(self._candidates):
                total = first[:, cand[0]].clone()
                if len(cand) > 1:  # teacher-force the rest of the candidate on the shared prompt cache
                    feed = torch.tensor(cand[:-1]).expand(batch, -1)
                    n = feed.shape[1]
                    step = lm(
                        input_ids=feed,
                        attention_mask=torch.cat([mask, mask.new_ones(batch, n)], dim=1),
                        position_ids=positions[:, -1:] + torch.arange(1, n + 1),
                        use_cache=True,
                        **{self._cache_kw: cache},
                    )
                    self.forward_passes += 1
                    nxt = torch.tensor(cand[1:]).expand(batch, -1).unsqueeze(-1)
                    total += step.logits.float().log_softmax(-1).gather(-1, nxt).squeeze(-1).sum(-1)
                    cache.crop(-n)  # negative = drop the last n tokens, in transformers 4.x and 5.x alike
                logp[:, c] = total
        mass = logp.logsumexp(-1)
        expected = (logp - mass[:, None]).exp() @ torch.tensor(SCORES, dtype=torch.float32)
        n_tokens = mask.sum(-1)
        return [(float(e), float(m.exp()), int(t)) for e, m, t in zip(expected, mass, n_tokens)]

    async def run(self, jobs: Sequence[Job], done: Done) -> None:
        """Score all jobs batch by batch, calling `done` once per job."""
        if not jobs:
            return
        self._load()
        prompts = {job.key: self.prompt_for(job.rubric, job.question, job.answer) for job in jobs}
        ordered = sorted(jobs, key=lambda j: len(prompts[j.key]))  # similar lengths together: less padding
        for start in range(0, len(ordered), self.batch_size):
            batch = ordered[start : start + self.batch_size]
            results = await asyncio.to_thread(self.score_prompts, [prompts[j.key] for j in batch])
            for job, (expected, p_valid, n_tokens) in zip(batch, results):
                done(
                    job,
                    Verdict(
                        score=round(expected, 4),
                        status="ok",
                        p_valid=float(f"{p_valid:.4g}"),
                        prompt_tokens=n_tokens,
                        calls=1,
                    ),
                )
