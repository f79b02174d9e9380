"""caa_open: greedy generations land in the samples with the question and behaviour for the judge."""

from __future__ import annotations

from caa_eval.vocab import open_task_name
from tests.helpers.caa_tasks import chat_prompt, context_of, evaluate, raw_items


def test_open_generations_are_greedy_and_logged(tiny_model, caa_env):
    caa_data_dir = caa_env
    import torch

    model, tok = tiny_model
    behaviours = ["refusal", "sycophancy"]
    tasks = [open_task_name(b) for b in behaviours]
    res = evaluate(model, tok, tasks, limit=2, batch_size=2)
    for behaviour, task in zip(behaviours, tasks):
        raw = raw_items(caa_data_dir / f"test/{behaviour}/test_dataset_open_ended.json")
        config = res["configs"][task]
        assert config["generation_kwargs"]["until"] == [] and config["generation_kwargs"]["max_gen_toks"] == 100
        assert config["generation_kwargs"]["do_sample"] is False
        for s in res["samples"][task]:
            assert s["doc"]["question"] == raw[s["doc"]["item"]]["question"] and s["doc"]["behaviour"] == behaviour
            text = chat_prompt(tok, s["doc"]["question"], prefix=None)
            assert context_of(s) == text  # user turn + the assistant header, nothing appended
            generation = s["resps"][0][0]
            assert s["gen_len"] == len(generation.split())
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                out = model.generate(
                    ids,
                    max_new_tokens=100,
                    do_sample=False,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
            new = out[0, ids.shape[1] :].tolist()
            new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
            expected = tok.decode(new, skip_special_tokens=True)  # lm-eval drops special tokens too
            assert generation == expected
