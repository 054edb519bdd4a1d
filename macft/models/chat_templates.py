"""Chat templates for base models that carry none: built-in turn formats, or a .jinja file.

A base model's file often has no ``tokenizer.chat_template`` (Gemma 3 270M's GGUF has none),
yet chat rows need one. ``model.chat_template`` in a recipe names a built-in format or a
Jinja file; without it, a model of a family whose turn format is known gets that format when
its tokenizer has no template of its own. The template's end-of-turn token joins the
tokenizer's stop tokens, so generation ends where training put the loss.
"""

from __future__ import annotations

from pathlib import Path

from macft.errors import MacftError

# Gemma's turns: no system role (a system message opens the first user turn), the assistant
# is "model", content trimmed, <end_of_turn> closes every turn.
GEMMA = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Gemma turns must alternate user/assistant') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') "
    "+ m['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

BUILTIN = {"gemma": GEMMA, "chatml": CHATML}
END_OF_TURN = {"gemma": "<end_of_turn>", "chatml": "<|im_end|>"}
# mlx-lm model_type -> the built-in format its base models use when the file has none.
FAMILY_DEFAULT = {"gemma3_text": "gemma", "gemma3": "gemma"}


def resolve(value: str) -> tuple[str, str | None]:
    """(template text, end-of-turn token or None) for a recipe's ``model.chat_template``."""
    if value in BUILTIN:
        return BUILTIN[value], END_OF_TURN[value]
    path = Path(value).expanduser()
    if path.suffix == ".jinja" or path.exists():
        try:
            return path.read_text(encoding="utf-8"), None
        except OSError as exc:
            raise MacftError(f"recipe: key 'model.chat_template': {path}: cannot read "
                             f"({exc.strerror})") from None
    raise MacftError(f"recipe: key 'model.chat_template': '{value}' is neither a built-in "
                     f"template ({', '.join(BUILTIN)}) nor a .jinja file")


def _hf(tokenizer):
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if inner is not None and hasattr(inner, "apply_chat_template") else tokenizer


def apply(tokenizer, config: dict, choice: str | None = None) -> str | None:
    """Give ``tokenizer`` the chosen template, or its family's when it has none; return the
    template's name (or path) when one was set, None when the tokenizer keeps its own."""
    hf = _hf(tokenizer)
    if choice is None:
        if getattr(hf, "chat_template", None):
            return None
        choice = FAMILY_DEFAULT.get(config.get("model_type", ""))
        if choice is None:
            return None
    template, end = resolve(choice)
    hf.chat_template = template
    if hf is not tokenizer:
        tokenizer.has_chat_template = True
    if end is not None and hasattr(tokenizer, "add_eos_token"):
        if end in hf.get_vocab():
            tokenizer.add_eos_token(end)
    return choice
