"""Chat templates a run can put on its tokenizer, for prompts the model's own template does not write.

`caa-llama2` is CAA's own Llama-2 prompt, written from its code's `tokenize_llama_chat`: the system block
`<<SYS>>\\n{system}\\n<</SYS>>\\n\\n` comes *before* `[INST]` (Llama-2's template puts it inside the first
`[INST]`), then `[INST] {question} [/INST]` and ` {answer}`. Without a system prompt it writes what Llama-2's
template writes, so only CAA's system-prompt experiments see a difference.
"""

from __future__ import annotations

from pathlib import Path

from caa_eval.errors import CAAEvalError

__all__ = ["CHAT_TEMPLATES", "chat_template"]

CHAT_TEMPLATES = {
    "caa-llama2": (
        "{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ bos_token }}"
        "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}"
        "<<SYS>>\n{{ messages[0]['content'] }}\n<</SYS>>\n\n{% endif %}"
        "[INST] {{ m['content'] | trim }} [/INST]"
        "{% elif m['role'] == 'assistant' %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}
"""Shipped templates by name (steered-hf's `chat_template=NAME`)."""


def chat_template(value: str) -> str:
    """The Jinja text of a shipped template name or of a template file.

    Args:
        value: a name in `CHAT_TEMPLATES` (e.g. `caa-llama2`) or the path of a `.jinja` file.
    """
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise CAAEvalError(
            f"chat_template={value!r} is neither a shipped template ({', '.join(CHAT_TEMPLATES)}) nor a file; "
            "give one of those names or the path of a Jinja template file"
        )
    text = path.read_text(encoding="utf-8")
    if "{%" not in text and "{{" not in text:
        raise CAAEvalError(f"{path} has no Jinja tags; a chat template renders `messages` with {{% ... %}} tags")
    return text
