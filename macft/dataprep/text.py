"""The text of a row, whatever its format, and the normal form used to compare rows."""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
_KEYS_NOT_TEXT = {"role", "type", "name", "id"}  # labels of structure, not content


def strings(value, key: str = "") -> list[str]:
    """Every string inside a row, depth first, skipping structural labels such as "role"."""
    if isinstance(value, str):
        return [] if key in _KEYS_NOT_TEXT else [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(v, k)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v, key)]
    return []


def row_text(data: dict) -> str:
    return "\n".join(strings(data))


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: two rows equal here are exact duplicates."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def answer(data: dict) -> str | None:
    """The trained answer of a chat or completions row (last assistant message / completion)."""
    if isinstance(data.get("completion"), str):
        return data["completion"]
    messages = data.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "assistant":
                content = m.get("content")
                return content if isinstance(content, str) else None
    return None


def map_strings(value, fn, key: str = ""):
    """A copy of a row with ``fn`` applied to every content string (structure kept)."""
    if isinstance(value, str):
        return value if key in _KEYS_NOT_TEXT else fn(value)
    if isinstance(value, dict):
        return {k: map_strings(v, fn, k) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn, key) for v in value]
    return value
