"""lm-eval glue for the shipped caa-eval tasks: the task class, the `custom_dataset` loaders and the per-item
metrics. The task folders' `utils.py` re-export these so that YAMLs can say `!function utils.<name>`.

Scoring follows CAA: with the question as the user turn and the assistant turn opened with `(`, lm-eval's
multiple_choice log-likelihoods of the continuations `A` and `B` are log p(letter) from the full-vocabulary
softmax at that position, so exp() of them are CAA's `a_prob` / `b_prob`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from caa_eval import data
from caa_eval.core.ab_score import ab_scores, letter_probs
from caa_eval.core.prompts import render_prompt
from caa_eval.errors import CAAEvalError
from caa_eval.lmeval import fluency
from caa_eval.vocab import caa_behaviour

log = logging.getLogger("caa_eval.tasks")

NO_CHAT_TEMPLATE_WARNING = (
    "\n" + "!" * 100 + "\n"
    "caa-eval: task {task} is running WITHOUT a chat template. This is NOT the CAA protocol: the question must\n"
    "be the user turn of the model's chat template{prefix}. Results of this run are not comparable to CAA's.\n"
    "Add --apply_chat_template (or apply_chat_template=True in simple_evaluate).\n" + "!" * 100
)


class CAATask(ConfigurableTask):
    """ConfigurableTask for CAA probes (YAML: `class: !function utils.CAATask`).

    - Loads its docs with the `custom_dataset` loader, metadata and dataset_kwargs merged.
    - Warns loudly when requests are built without the chat template (the CAA protocol needs it).
    - A doc with a `user_prompt_swapped` field is scored under both prompts (letter-balanced tasks): the context is
      built twice by lm-eval's own machinery (chat template, gen_prefix), and process_results receives the
      choices' results for the original prompt first, then for the swapped one.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        # lm-eval passes the whole YAML dict, including our `class` key that TaskConfig does not know
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})

    def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Call our in-memory loader with metadata (model_args, --metadata) and dataset_kwargs merged, the
        YAML's dataset_kwargs winning on a name clash (lm-eval's own call would raise TypeError), and
        without lm-eval's generic 'Custom kwargs can be passed' notice, once per task."""
        if not callable(self.config.custom_dataset):
            return super().download(dataset_kwargs, **kwargs)
        self.dataset = self.config.custom_dataset(**{**(self.config.metadata or {}), **(dataset_kwargs or {})})

    def build_all_requests(self, *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("apply_chat_template"):
            prefix = f" and {self.config.gen_prefix!r} must open the assistant turn" if self.config.gen_prefix else ""
            log.warning(NO_CHAT_TEMPLATE_WARNING.format(task=self.config.task, prefix=prefix))
        super().build_all_requests(*args, **kwargs)

    def _context(self, doc: dict, num_fewshot: int, **kwargs: Any) -> str:
        """Zero-shot chat prompts come from caa_eval.core.prompts, the rule extraction uses too."""
        render = kwargs.get("chat_template")
        if kwargs.get("apply_chat_template") and render and num_fewshot == 0 and not self.config.description:
            return render_prompt(
                render, self.doc_to_text(doc), kwargs.get("system_instruction"), kwargs.get("gen_prefix")
            )
        return super().fewshot_context(doc, num_fewshot=num_fewshot, **kwargs)

    def fewshot_context(self, doc: dict, num_fewshot: int, **kwargs: Any) -> str | list[str]:
        ctx = self._context(doc, num_fewshot, **kwargs)
        if "user_prompt_swapped" not in doc:
            return ctx
        swapped = self._context({**doc, "user_prompt": doc["user_prompt_swapped"]}, num_fewshot, **kwargs)
        return [ctx, swapped]

    def _wants_fluency(self) -> bool:
        wanted = {m.get("metric") for m in self.config.metric_list or []}
        return self.config.output_type == "generate_until" and "perplexity" in wanted

    def process_results(self, doc: dict, results: list[Any]) -> dict[str, Any]:
        """The YAML's process_results, plus the fluency metrics when the task lists them (open-ended tasks):
        distinct-n and repetition from the text, perplexity as steered-hf recorded it (`caa_eval.lmeval.fluency`)."""
        out = super().process_results(doc, results)
        if self._wants_fluency():
            text = str(results[0])
            out = {**out, "perplexity": fluency.take(str(self.config.task), doc, text), **fluency.text_metrics(text)}
        return out

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any) -> list[Instance] | Instance:
        if self._wants_fluency():  # steered-hf scores the generations of these tasks only
            fluency.want(str(self.config.task))
        if not isinstance(ctx, list) or self.multiple_input:
            return super().construct_requests(doc, ctx, **kwargs)
        out: list[Instance] = []
        for one in ctx:
            batch = super().construct_requests(doc, one, **dict(kwargs))
            batch = batch if isinstance(batch, list) else [batch]
            offset = len(out)
            for inst in batch:
                inst.idx += offset
            out.extend(batch)
        return out


# ---------------------------------------------------------------------------------------------- data
# The loaders receive task metadata, every model_arg and --metadata key, plus the YAML's dataset_kwargs
# (CAATask.download). dataset_kwargs names are prefixed (caa_behaviour, mmlu_subject) to stay distinct.


def _as_dataset(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    """In-memory split (no Arrow cache on disk; lm-eval needs a `datasets.Dataset` for `.features`)."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def user_data_file(path: str, config_source: str | None) -> Path:
    """A user's data file; relative paths are taken relative to the YAML that names them."""
    p = Path(path).expanduser()
    if not p.is_absolute() and config_source and config_source != "inline":
        p = Path(config_source).expanduser().resolve().parent / p
    if not p.is_file():
        raise CAAEvalError(f"data file {p} not found (named in the task YAML {config_source})")
    return p


def _source(
    behaviour: str | None,
    test_file: str | None,
    split: str,
    caa_data_dir: str | None,
    config_source: str | None,
    pairs_file: str | None,
) -> tuple[Path, str]:
    if test_file:
        path = user_data_file(test_file, config_source)
        if pairs_file:
            data.check_no_overlap(path, user_data_file(pairs_file, config_source))
        return path, behaviour or path.stem
    if not behaviour:
        raise CAAEvalError(f"task {config_source} names no data: set dataset_kwargs.test_file (or caa_behaviour)")
    return data.resolve_behaviour_pairs(behaviour, split=split, data_dir=caa_data_dir), caa_behaviour(behaviour)


def load_ab(
    caa_behaviour: str | None = None,
    test_file: str | None = None,
    caa_data_dir: str | None = None,
    caa_non_ab: str = "exclude",
    config_source: str | None = None,
    pairs_file: str | None = None,
    **_: Any,
) -> datasets.DatasetDict:
    """`custom_dataset` of caa_ab_*: CAA's A/B test set of `behaviour`, or the user's `test_file`."""
    path, name = _source(caa_behaviour, test_file, "test", caa_data_dir, config_source, pairs_file)
    return _as_dataset(data.load_ab_items(path, name, non_ab=caa_non_ab).rows)


def load_ab_balanced(
    caa_behaviour: str | None = None,
    test_file: str | None = None,
    caa_data_dir: str | None = None,
    caa_non_ab: str = "exclude",
    config_source: str | None = None,
    pairs_file: str | None = None,
    **_: Any,
) -> datasets.DatasetDict:
    """`custom_dataset` of caa_ab_balanced_*: as load_ab, each doc also carrying the letter-swapped prompt."""
    path, name = _source(caa_behaviour, test_file, "test", caa_data_dir, config_source, pairs_file)
    return _as_dataset(data.load_ab_items(path, name, non_ab=caa_non_ab, balanced=True).rows)


def load_open(
    caa_behaviour: str | None = None,
    test_file: str | None = None,
    caa_data_dir: str | None = None,
    config_source: str | None = None,
    pairs_file: str | None = None,
    **_: Any,
) -> datasets.DatasetDict:
    """`custom_dataset` of caa_open_*: the open-ended questions (`question` + `behaviour` in every doc)."""
    path, name = _source(caa_behaviour, test_file, "open_ended", caa_data_dir, config_source, None)
    return _as_dataset(data.load_open_items(path, name))


def load_mmlu_2opt(mmlu_subject: str, mmlu_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """`custom_dataset` of caa_mmlu_2opt_<subject>: CAA's 10 two-option items, rebuilt from the MMLU CSVs."""
    return _as_dataset(data.mmlu_subset_rows(mmlu_subject, mmlu_dir))


def load_mmlu_2opt_full(
    mmlu_subject: str, mmlu_dir: str | None = None, mmlu_seed: int = 0, **_: Any
) -> datasets.DatasetDict:
    """`custom_dataset` of caa_mmlu_2opt_full_<subject>: all test questions, seeded wrong option and letters."""
    return _as_dataset(data.mmlu_full_rows(mmlu_subject, int(mmlu_seed), mmlu_dir))


def load_tqa_2opt(
    tqa_category: str, caa_data_dir: str | None = None, tqa_seed: int | str = 0, **_: Any
) -> datasets.DatasetDict:
    """`custom_dataset` of caa_tqa_2opt_<category>: CAA's two-option TruthfulQA items, seeded balanced letters."""
    return _as_dataset(data.tqa_rows(tqa_category, tqa_seed, caa_data_dir))


# ------------------------------------------------------------------------------------------- metrics


def process_ab(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """process_results of caa_ab_*: p_match, ab_mass, match for one item."""
    (ll_a, _), (ll_b, _) = results[:2]
    return ab_scores(ll_a, ll_b, doc["matching"], bool(doc.get("scored", True)))


def process_ab_balanced(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """process_results of caa_ab_balanced_*: both letter orders averaged per item.

    `p_match_orig` is the original order alone (= caa_ab's p_match); `p_a` is the mean normalised p(A) over
    both orders, the model's letter preference independent of content (0.5 = no position bias).
    """
    lls = [r[0] for r in results]
    if len(lls) != 4:
        raise CAAEvalError(f"balanced item {doc.get('item')}: expected 4 log-likelihoods, got {len(lls)}")
    other = "B" if doc["matching"] == "A" else "A"
    orig = ab_scores(lls[0], lls[1], doc["matching"])
    swapped = ab_scores(lls[2], lls[3], other)
    p = (orig["p_match"] + swapped["p_match"]) / 2
    p_a = (letter_probs(lls[0], lls[1])[0] + letter_probs(lls[2], lls[3])[0]) / 2
    return {
        "p_match": p,
        "ab_mass": (orig["ab_mass"] + swapped["ab_mass"]) / 2,
        "match": float(p > 0.5),
        "p_match_orig": orig["p_match"],
        "p_a": p_a,
    }


def process_mmlu(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """process_results of caa_mmlu_2opt* and caa_tqa_2opt*: p_correct = p(correct letter)/(p(A)+p(B)), ab_mass, acc."""
    (ll_a, _), (ll_b, _) = results[:2]
    p_a, mass = letter_probs(ll_a, ll_b)
    p = p_a if doc["correct"] == "A" else 1.0 - p_a
    return {"p_correct": p, "ab_mass": mass, "acc": float(p > 0.5)}


nanmean = fluency.nanmean  # aggregation of the fluency metrics in the open-ended task YAMLs


def process_open(doc: dict, results: list[str]) -> dict[str, float]:
    """process_results of caa_open_*: words generated. A placeholder, NOT a score: `caa-eval judge` scores
    the generations afterwards from the --log_samples file."""
    return {"gen_len": float(len(results[0].split()))}
