"""Ollama's Modelfile for an exported GGUF: the model's turn format as a Go template, its stops.

Ollama does not run the Jinja chat template a GGUF carries; it renders the Modelfile's TEMPLATE,
a Go ``text/template``. A Jinja template cannot be translated in general, so the model's own
template is recognised instead: a probe conversation is rendered with it and with each built-in
turn format of ``models.chat_templates``, and the format that renders the same text gives its
Go twin below. A template macft does not recognise is refused in one line rather than guessed.

The templates use only what Ollama passes: ``.Messages`` (with ``.Role`` and ``.Content``) for
chat, ``.System``/``.Prompt``/``.Response`` for the plain generate API. No BOS token: llama.cpp
adds it itself when the GGUF says ``tokenizer.ggml.add_bos_token``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from macft.errors import MacftError
from macft.models import chat_templates

CHATML_GO = (
    '{{- if .Messages }}\n'
    '{{- range .Messages }}<|im_start|>{{ .Role }}\n'
    '{{ .Content }}<|im_end|>\n'
    '{{ end }}<|im_start|>assistant\n'
    '{{ else }}\n'
    '{{- if .System }}<|im_start|>system\n'
    '{{ .System }}<|im_end|>\n'
    '{{ end }}\n'
    '{{- if .Prompt }}<|im_start|>user\n'
    '{{ .Prompt }}<|im_end|>\n'
    '{{ end }}<|im_start|>assistant\n'
    '{{ .Response }}<|im_end|>\n'
    '{{ end }}'
)

# Gemma has no system turn: the system text opens the first user turn (as chat_templates.GEMMA).
# Ollama keeps system messages in .Messages and joins them into .System; the range skips them.
GEMMA_GO = (
    '{{- if .Messages }}\n'
    '{{- $first := true }}\n'
    '{{- range .Messages }}\n'
    '{{- if eq .Role "user" }}<start_of_turn>user\n'
    '{{ if $first }}{{ if $.System }}{{ $.System }}\n\n{{ end }}{{ end }}'
    '{{ .Content }}<end_of_turn>\n'
    '{{ $first = false }}\n'
    '{{- else if eq .Role "assistant" }}<start_of_turn>model\n'
    '{{ .Content }}<end_of_turn>\n'
    '{{ end }}\n'
    '{{- end }}<start_of_turn>model\n'
    '{{ else }}<start_of_turn>user\n'
    '{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n'
    '<start_of_turn>model\n'
    '{{ .Response }}<end_of_turn>\n'
    '{{ end }}'
)


@dataclass(frozen=True)
class TurnFormat:
    name: str          # the built-in of chat_templates whose Go twin this is
    template: str      # Ollama TEMPLATE
    end: str           # the token that closes a turn: a stop


FORMATS = (TurnFormat("chatml", CHATML_GO, chat_templates.END_OF_TURN["chatml"]),
           TurnFormat("gemma", GEMMA_GO, chat_templates.END_OF_TURN["gemma"]))

# Two turns, a system message, ending where Ollama asks the model to answer.
PROBE = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "Another one?"}]


@dataclass(frozen=True)
class Modelfile:
    gguf: str                  # the FROM file, relative to the Modelfile
    format: TurnFormat
    system: str | None         # the model's default system message, when its template has one
    stops: tuple[str, ...]

    def text(self) -> str:
        lines = [f"FROM ./{self.gguf}", f'TEMPLATE """{self.format.template}"""']
        if self.system:
            lines.append(f'SYSTEM """{self.system}"""')
        lines += [f'PARAMETER stop "{s}"' for s in self.stops]
        return "\n".join(lines) + "\n"


def render(tokenizer, messages: list[dict], template: str | None = None,
           generation: bool = True) -> str:
    """``messages`` through the tokenizer's chat template (or ``template``), as text."""
    hf = chat_templates._hf(tokenizer)
    kwargs = {"chat_template": template} if template is not None else {}
    return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                  **kwargs)


def _default_system(tokenizer, fmt: TurnFormat) -> str | None:
    """The system message the model's template adds when a conversation has none (SmolLM2's)."""
    plain = PROBE[1:]
    own = render(tokenizer, plain)
    if own == render(tokenizer, plain, chat_templates.BUILTIN[fmt.name]):
        return None
    if fmt.name == "chatml":
        found = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", own, re.S)
        if found:
            with_it = [{"role": "system", "content": found.group(1)}] + plain
            if own == render(tokenizer, with_it, chat_templates.BUILTIN[fmt.name]):
                return found.group(1)
    raise MacftError(f"ollama export: the model's chat template adds text to a conversation "
                     f"without a system message that macft cannot carry into a Modelfile "
                     f"(it looks like {fmt.name} otherwise)")


def turn_format(tokenizer) -> TurnFormat:
    """The built-in format the tokenizer's chat template renders like; MacftError otherwise."""
    if not getattr(chat_templates._hf(tokenizer), "chat_template", None):
        raise MacftError("ollama export: the model has no chat template (set model.chat_template "
                         f"in the recipe to one of {', '.join(chat_templates.BUILTIN)})")
    own = render(tokenizer, PROBE)
    for fmt in FORMATS:
        if own == render(tokenizer, PROBE, chat_templates.BUILTIN[fmt.name]):
            return fmt
    raise MacftError("ollama export: the model's chat template is none of the turn formats "
                     f"macft can write as an Ollama TEMPLATE ({', '.join(f.name for f in FORMATS)})")


def stop_tokens(tokenizer, fmt: TurnFormat) -> tuple[str, ...]:
    """The turn's end token, then every other end-of-sequence token the tokenizer knows."""
    hf = chat_templates._hf(tokenizer)
    ids = sorted(getattr(tokenizer, "eos_token_ids", None) or [])
    names = [fmt.end] + [hf.convert_ids_to_tokens(int(i)) for i in ids]
    return tuple(dict.fromkeys(n for n in names if n))


def modelfile(tokenizer, gguf_name: str) -> Modelfile:
    fmt = turn_format(tokenizer)
    return Modelfile(gguf_name, fmt, _default_system(tokenizer, fmt), stop_tokens(tokenizer, fmt))


def create_line(name: str, folder: Path) -> str:
    return f"ollama create {name} -f {folder / 'Modelfile'}"
