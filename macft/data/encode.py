"""Turn rows (chat, completions, text) into token ids and a per-token loss mask.

``mask[j] == 1`` marks token ``j`` as a trained target: the model is scored on predicting it
from tokens ``< j``. Token 0 is never a target, so ``mask[0]`` is always 0 (this is also what
keeps packed examples from leaking loss across their boundary).

Chat rows are rendered with the tokenizer's chat template. Every assistant turn is trained,
not only the last: its content plus the end-of-turn text the template closes it with (e.g.
``<|im_end|>``). Whitespace the template writes after that marker (ChatML's ``"\\n"``) is not
trained: a generation stops at the end-of-turn token and never produces it. The turn's header
(``<|im_start|>assistant\\n``) and all system, user and tool tokens are not trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from macft.errors import MacftError, where
from macft.data.template_guard import guard
from macft.recipe import DataSpec

FORMATS = ("chat", "completions", "text")
ROLES = ("system", "user", "assistant", "tool")
_EXPECTED = "'messages' (chat), 'prompt' + 'completion' (completions) or 'text' (text)"


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: list[int]


@dataclass
class EncodeStats:
    """Counts for the trainer's log: what was kept, cut and dropped, and why."""

    total: int = 0
    kept: int = 0
    truncated: int = 0         # longer than max_length, cut to it (overlong: truncate)
    dropped_overlong: int = 0  # longer than max_length (overlong: drop)
    dropped_no_loss: int = 0   # no trained token left (possibly after truncation)
    tokens: int = 0            # tokens of the kept examples
    trained_tokens: int = 0    # tokens with mask 1 in the kept examples

    @property
    def dropped(self) -> int:
        return self.dropped_overlong + self.dropped_no_loss

    def summary(self) -> str:
        text = (f"{self.kept}/{self.total} examples, {self.tokens} tokens "
                f"({self.trained_tokens} trained)")
        if self.truncated:
            text += f", {self.truncated} truncated"
        if self.dropped_overlong:
            text += f", {self.dropped_overlong} dropped as too long"
        if self.dropped_no_loss:
            text += f", {self.dropped_no_loss} dropped with no trained token"
        return text


@dataclass(frozen=True)
class EncodedSet:
    examples: list[Encoded]
    stats: EncodeStats
    format: str = ""


# --- formats --------------------------------------------------------------------------------

def detect_format(rows, path) -> str:
    """The format of a data set, from the keys of its first row."""
    if not rows:
        raise MacftError(f"{path}: no rows")
    row = rows[0]
    keys = {k for k, v in row.data.items() if v is not None}
    if "messages" in keys:
        return "chat"
    if "prompt" in keys and "completion" in keys:
        return "completions"
    if "text" in keys:
        return "text"
    found = ", ".join(sorted(map(str, row.data))) or "none"
    raise MacftError(f"{where(path, row.line)}: cannot tell the data format from the keys "
                     f"({found}); expected {_EXPECTED}")


def check_row(row, fmt: str) -> None:
    """Raise MacftError (file:line, key) if ``row`` does not fit ``fmt``."""
    if fmt == "chat":
        _check_messages(row)
    elif fmt == "completions":
        _require_str(row, "prompt")
        _require_str(row, "completion")
    elif fmt == "text":
        _require_str(row, "text")
    else:
        raise MacftError(f"{row.where}: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def _require(row, key: str):
    value = row.data.get(key)
    if value is None:
        raise MacftError(f"{row.where}: missing key '{key}'")
    return value


def _require_str(row, key: str) -> str:
    value = _require(row, key)
    if not isinstance(value, str):
        raise MacftError(f"{row.where}: key '{key}' must be a string, got {type(value).__name__}")
    return value


def _check_messages(row) -> None:
    messages = _require(row, "messages")
    if not isinstance(messages, list) or not messages:
        raise MacftError(f"{row.where}: key 'messages' must be a non-empty list of "
                         "{role, content} objects")
    for n, m in enumerate(messages):
        key = f"messages[{n}]"
        if not isinstance(m, dict):
            raise MacftError(f"{row.where}: key '{key}' must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise MacftError(f"{row.where}: key '{key}.role' must be one of "
                             f"{', '.join(ROLES)}; got {role!r}")
        content = m.get("content")
        if content is None and role == "assistant" and m.get("tool_calls"):
            continue  # a pure tool call: the template renders tool_calls
        if not isinstance(content, str):
            raise MacftError(f"{row.where}: key '{key}.content' must be a string, "
                             f"got {type(content).__name__}")
    if messages[0]["role"] == "assistant":
        raise MacftError(f"{row.where}: the conversation opens with an assistant turn "
                         "(messages[0]); it needs a system or user message before it")


def _has_answer(row, fmt: str) -> bool:
    """Whether a row has any answer text to learn (chat: a non-empty assistant turn)."""
    if fmt != "chat":
        return True
    return any(m["role"] == "assistant" and ((m.get("content") or "").strip()
                                             or m.get("tool_calls"))
               for m in row.data["messages"])


# --- encoding -------------------------------------------------------------------------------

def encode_row(row, fmt: str, tokenizer, spec: DataSpec) -> Encoded:
    """Token ids and loss mask of one row, at full length (``encode_rows`` applies max_length)."""
    tok = unwrap(tokenizer)
    check_row(row, fmt)
    if fmt == "chat":
        enc = _encode_chat(row, _messages(row, spec), tok)
    elif fmt == "completions":
        enc = _encode_completion(row, tok, spec)
    else:
        ids = _bos(tok) + _ids(tok, row.data["text"]) + _eos(tok)
        enc = Encoded(ids, [1] * len(ids))
    if spec.train_on_prompt:
        enc = Encoded(enc.ids, [1] * len(enc.ids))
    return Encoded(enc.ids, [0] + enc.mask[1:] if enc.mask else [])


def encode_rows(rows, tokenizer, spec: DataSpec, path, fmt: str | None = None) -> EncodedSet:
    """Encode a data set, applying ``spec.max_length`` and ``spec.overlong``; count the losses."""
    fmt = fmt or spec.format
    if not rows:
        raise MacftError(f"{path}: no rows")
    if fmt == "auto":
        fmt = detect_format(rows, path)
    stats = EncodeStats(total=len(rows))
    examples = []
    for row in rows:
        enc = encode_row(row, fmt, tokenizer, spec)
        if len(enc.ids) > spec.max_length:
            if spec.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            enc = Encoded(enc.ids[:spec.max_length], enc.mask[:spec.max_length])
            stats.truncated += 1
        if not any(enc.mask):
            stats.dropped_no_loss += 1
            continue
        examples.append(enc)
        stats.kept += 1
        stats.tokens += len(enc.ids)
        stats.trained_tokens += sum(enc.mask)
    return EncodedSet(examples, stats, fmt)


def check_answers(rows, fmt: str, spec: DataSpec, path) -> None:
    """A training file must have some answer to learn: with every assistant turn empty only
    the end-of-turn tokens would carry a loss, and the run would look fine while learning that."""
    if spec.train_on_prompt or fmt != "chat" or any(_has_answer(r, fmt) for r in rows):
        return
    raise MacftError(f"{path}: every assistant turn is empty, so only end-of-turn tokens "
                     "would be trained (fill in the answers, or set data.train_on_prompt)")


def prompt_and_reference(row, fmt: str, tokenizer, spec: DataSpec) -> tuple[list[int], str]:
    """Prompt ids for generation and the reference answer, for evaluation.

    chat: everything before the last assistant message, with the generation prompt; the
    reference is that message's content. completions: the prompt rendered the same way (raw
    prompt tokens without a chat template); the reference is the completion.
    """
    tok = unwrap(tokenizer)
    check_row(row, fmt)
    if fmt == "chat":
        messages = _messages(row, spec)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise MacftError(f"{row.where}: no assistant message to use as the reference")
        text = _render(tok, messages[:last], True, row)
        return _ids(tok, text), messages[last].get("content") or ""
    if fmt == "completions":
        if _has_template(tok):
            messages = _with_system([{"role": "user", "content": row.data["prompt"]}], spec)
            return _ids(tok, _render(tok, messages, True, row)), row.data["completion"]
        return _bos(tok) + _ids(tok, row.data["prompt"]), row.data["completion"]
    raise MacftError(f"{row.where}: text rows have no prompt and reference; "
                     "use chat or completions data for evaluation")


def unwrap(tokenizer):
    """The Hugging Face tokenizer inside an mlx_lm TokenizerWrapper (or the argument itself).

    A PreTrainedTokenizerFast also has ``_tokenizer`` (the raw ``tokenizers.Tokenizer``), so
    only unwrap when the inner object is itself a chat-capable Hugging Face tokenizer.
    """
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if inner is not None and hasattr(inner, "apply_chat_template") else tokenizer


def _messages(row, spec: DataSpec) -> list[dict]:
    return _with_system(list(row.data["messages"]), spec)


def _with_system(messages: list[dict], spec: DataSpec) -> list[dict]:
    if spec.system_prompt and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": spec.system_prompt}] + messages
    return messages


def _encode_completion(row, tok, spec: DataSpec) -> Encoded:
    prompt, completion = row.data["prompt"], row.data["completion"]
    if _has_template(tok):
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion}]
        return _encode_chat(row, _with_system(messages, spec), tok)
    # Tokenised apart, as at generation time where the prompt is encoded on its own.
    head = _bos(tok) + _ids(tok, prompt)
    tail = _ids(tok, completion) + _eos(tok)
    return Encoded(head + tail, [0] * len(head) + [1] * len(tail))


def _encode_chat(row, messages: list[dict], tok) -> Encoded:
    if not _has_template(tok):
        raise MacftError(f"{row.where}: the tokenizer has no chat template, which chat rows "
                         "need (use completions or text data, or a model with a template)")
    full = _render(tok, messages, False, row)
    spans = _assistant_spans(tok, messages, full, row)
    enc = _call(tok, full, row, offsets=True)
    mask = [int(_overlaps(s, e, spans)) for s, e in enc["offset_mapping"]]
    return Encoded(list(enc["input_ids"]), mask)


def _assistant_spans(tok, messages: list[dict], full: str, row) -> list[tuple[int, int]]:
    """Character spans of ``full`` to train: each assistant turn's content + end-of-turn."""
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], True, row)
        upto = _render(tok, messages[:i + 1], False, row).rstrip()
        if full.startswith(before) and full.startswith(upto) and len(upto) >= len(before):
            start, end = len(before), len(upto)
        else:
            # Some templates render earlier turns differently (e.g. Qwen3 drops the empty
            # <think> block of turns before the last user message): find the content instead.
            start, end = _locate(m, i, before, upto, full, cursor, row)
        spans.append((start, end))
        cursor = end
    return spans


def _locate(m: dict, i: int, before: str, upto: str, full: str, cursor: int, row):
    content = (m.get("content") or "").strip()
    if not content and upto.startswith(before):
        # No text (a turn of tool calls only): find the end of its rendering instead.
        content = _rendered_tail(upto[len(before):], full, cursor)
    idx = full.find(content, cursor) if content else -1
    if idx < 0:
        raise MacftError(f"{row.where}: cannot find assistant message {i} in the rendered "
                         "conversation (the chat template does not render it the same way "
                         "in a prefix of the conversation)")
    start = len(before) if full.startswith(before) and cursor <= len(before) <= idx else idx
    end = idx + len(content)
    at = upto.rfind(content)
    closing = upto[at + len(content):] if at >= 0 else ""  # e.g. "<|im_end|>"
    if closing and full.startswith(closing, end):
        end += len(closing)
    return start, end


def _rendered_tail(turn: str, full: str, cursor: int) -> str:
    """The longest end of ``turn`` that ``full`` holds after ``cursor`` ('' if none)."""
    for start in range(len(turn)):
        if full.find(turn[start:], cursor) >= 0:
            return turn[start:].strip()
    return ""


def _overlaps(s: int, e: int, spans) -> bool:
    if s == e:  # a token with an empty character span: inside or not
        return any(a <= s < b for a, b in spans)
    return any(s < b and e > a for a, b in spans)


def _has_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def _render(tok, messages: list[dict], generation: bool, row) -> str:
    guard(tok)      # a template with runaway loops stops after a time limit, in one line
    try:
        # A row's "enable_thinking" reaches templates with a thinking switch (Qwen3): off, the
        # empty <think></think> belongs to the prompt, so it is not trained.
        extra = {"enable_thinking": bool(row.data["enable_thinking"])} \
            if "enable_thinking" in row.data else {}
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                       tools=row.data.get("tools"), **extra)
    except Exception as exc:  # jinja errors (roles must alternate, ...) are the user's data
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise MacftError(f"{row.where}: the chat template failed: {detail}") from None


def _call(tok, text: str, row, offsets: bool = False):
    try:
        return tok(text, add_special_tokens=False, return_offsets_mapping=offsets)
    except NotImplementedError:
        raise MacftError(f"{row.where}: chat loss masks need a fast tokenizer "
                         "(tokenizer.json) with offset mappings") from None


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _bos(tok) -> list[int]:
    """[bos] when the tokenizer adds one by default, else []."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return []
    return [bos] if list(tok("a")["input_ids"][:1]) == [bos] else []


def _eos(tok) -> list[int]:
    eos = getattr(tok, "eos_token_id", None)
    return [] if eos is None else [eos]
