"""Talk to a GGUF through llama.cpp: a REPL, or one answer for scripts (``--prompt``).

llama-cpp-python renders the file's own ``tokenizer.chat_template``, so this is exactly what
another llama.cpp front end would show for the exported file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from macft.export import llamacpp
from macft.generation import MAX_TOKENS

HELP = "empty line or /exit quits, /reset forgets the conversation"


def answer(llm, messages: list[dict], max_tokens: int, temperature: float,
           emit: Callable[[str], None]) -> str:
    """Stream one assistant reply to ``emit``; return it."""
    parts = []
    stream = llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                        temperature=temperature, stream=True)
    for chunk in stream:
        piece = chunk["choices"][0]["delta"].get("content") or ""
        if piece:
            parts.append(piece)
            emit(piece)
    return "".join(parts)


def chat(path: str | Path, prompt: str | None = None, system: str | None = None,
         max_tokens: int = MAX_TOKENS, temperature: float = 0.0, lora: str | Path | None = None,
         n_ctx: int = 4096, read: Callable[[str], str] = input,
         emit: Callable[[str], None] = lambda s: print(s, end="", flush=True)) -> int:
    llm = llamacpp.open_gguf(path, n_ctx=n_ctx, lora=lora)
    history = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        answer(llm, history + [{"role": "user", "content": prompt}], max_tokens, temperature,
               emit)
        emit("\n")
        return 0
    emit(f"{Path(path).name} in llama.cpp ({HELP})\n")
    messages = list(history)
    while True:
        try:
            line = read("> ").strip()
        except EOFError:
            emit("\n")
            return 0
        if line in ("", "/exit", "/quit"):
            return 0
        if line == "/reset":
            messages = list(history)
            continue
        messages.append({"role": "user", "content": line})
        reply = answer(llm, messages, max_tokens, temperature, emit)
        emit("\n")
        messages.append({"role": "assistant", "content": reply})
