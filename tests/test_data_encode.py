"""Formats -> token ids + loss masks: which tokens are trained, overlong handling, errors."""

from __future__ import annotations

import copy
import json

import pytest

from macft.data import (
    EncodeStats,
    Row,
    detect_format,
    encode_row,
    encode_rows,
    load_rows,
    prompt_and_reference,
)
from macft.errors import MacftError
from macft.recipe import DataSpec

SPEC = DataSpec()
CHAT = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello world"},
    {"role": "user", "content": "the answer?"},
    {"role": "assistant", "content": "42."},
]


def row(data: dict, line: int = 1) -> Row:
    return Row(line, data, "data/train.jsonl")


def runs(tok, enc) -> list[tuple[int, str]]:
    """Decode consecutive tokens with the same mask value: [(mask, text), ...]."""
    out: list[tuple[int, list[int]]] = []
    for i, m in zip(enc.ids, enc.mask):
        if out and out[-1][0] == m:
            out[-1][1].append(i)
        else:
            out.append((m, [i]))
    return [(m, tok.decode(ids)) for m, ids in out]


def trained(tok, enc) -> str:
    return tok.decode([i for i, m in zip(enc.ids, enc.mask) if m])


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer):
    """No chat template, and a bos (<|endoftext|>) added by default."""
    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    tok.bos_token = "<|endoftext|>"
    assert tok("hi")["input_ids"] == [0] + ids(tok, "hi")
    return tok


def with_template(tiny_tokenizer, template: str):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = template
    return tok


# --- chat -----------------------------------------------------------------------------------

def test_every_assistant_turn_is_trained_and_nothing_else(tiny_tokenizer):
    enc = encode_row(row({"messages": CHAT}), "chat", tiny_tokenizer, SPEC)
    full = tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert enc.ids == ids(tiny_tokenizer, full)
    assert runs(tiny_tokenizer, enc) == [
        (0, "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n"),
        (1, "hello world<|im_end|>"),
        (0, "\n<|im_start|>user\nthe answer?<|im_end|>\n<|im_start|>assistant\n"),
        (1, "42.<|im_end|>"),
        (0, "\n"),  # the newline after the end-of-turn token is not trained
    ]
    assert trained(tiny_tokenizer, enc) == "hello world<|im_end|>42.<|im_end|>"


def test_train_on_prompt_trains_every_token_but_the_first(tiny_tokenizer):
    spec = DataSpec(train_on_prompt=True)
    enc = encode_row(row({"messages": CHAT}), "chat", tiny_tokenizer, spec)
    assert enc.mask == [0] + [1] * (len(enc.ids) - 1)


def test_system_prompt_is_added_only_when_the_row_has_none(tiny_tokenizer):
    spec = DataSpec(system_prompt="Be brief.")
    enc = encode_row(row({"messages": CHAT[1:3]}), "chat", tiny_tokenizer, spec)
    assert runs(tiny_tokenizer, enc) == [
        (0, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n"),
        (1, "hello world<|im_end|>"),
        (0, "\n"),
    ]
    kept = encode_row(row({"messages": CHAT}), "chat", tiny_tokenizer, spec)
    assert tiny_tokenizer.decode(kept.ids).startswith("<|im_start|>system\nsys<|im_end|>")


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\ntools: {{ tools[0]['function']['name'] }}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}<call>{{ c['function']['name'] }}"
    "</call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tool_calls_and_tools_reach_the_template(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, TOOL_TEMPLATE)
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "4."},
    ]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    enc = encode_row(row({"messages": messages, "tools": tools}), "chat", tok, SPEC)
    assert runs(tok, enc) == [
        (0, "<|im_start|>system\ntools: add<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n"),
        (1, "<call>add</call><|im_end|>"),
        (0, "\n<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n"),
        (1, "4.<|im_end|>"),
        (0, "\n"),
    ]


# Like Qwen3: only the final assistant turn gets an (empty) <think> block, so rendering a
# prefix of the conversation does not give a prefix of the full text.
THINK_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and loop.last %}"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ m['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_template_that_is_not_prefix_stable_falls_back_to_locating_content(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, THINK_TEMPLATE)
    enc = encode_row(row({"messages": CHAT}), "chat", tok, SPEC)
    assert trained(tok, enc) == "hello world<|im_end|><think>\n\n</think>\n\n42.<|im_end|>"


def test_template_that_hides_an_earlier_turn_is_a_clear_error(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, THINK_TEMPLATE.replace(
        "{{ m['content'] }}<|im_end|>\n{% endif %}", "{{ m['content'] | upper }}<|im_end|>\n"
        "{% endif %}"))
    with pytest.raises(MacftError, match=r"^data/train.jsonl:4: cannot find assistant message 2 "):
        encode_row(row({"messages": CHAT}, line=4), "chat", tok, SPEC)


def test_template_errors_are_one_line_with_the_row(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, "{{ raise_exception('Roles must\nalternate') }}")
    with pytest.raises(MacftError) as info:
        encode_row(row({"messages": CHAT}, line=9), "chat", tok, SPEC)
    assert str(info.value) == "data/train.jsonl:9: the chat template failed: Roles must alternate"


def test_an_mlx_lm_tokenizer_wrapper_is_accepted(tiny_tokenizer):
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    plain = encode_row(row({"messages": CHAT}), "chat", tiny_tokenizer, SPEC)
    assert encode_row(row({"messages": CHAT}), "chat", TokenizerWrapper(tiny_tokenizer),
                      SPEC) == plain


# --- completions and text -------------------------------------------------------------------

def test_completions_with_a_chat_template(tiny_tokenizer):
    enc = encode_row(row({"prompt": "hi", "completion": "hello"}), "completions",
                     tiny_tokenizer, SPEC)
    assert runs(tiny_tokenizer, enc) == [
        (0, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
        (1, "hello<|im_end|>"),
        (0, "\n"),
    ]


def test_completions_without_a_template_train_completion_and_eos(bos_tokenizer):
    tok = bos_tokenizer
    enc = encode_row(row({"prompt": "2+2=", "completion": " 4"}), "completions", tok, SPEC)
    head, tail = [0] + ids(tok, "2+2="), ids(tok, " 4") + [tok.eos_token_id]
    assert enc.ids == head + tail
    assert enc.mask == [0] * len(head) + [1] * len(tail)
    assert trained(tok, enc) == " 4<|im_end|>"
    everything = encode_row(row({"prompt": "2+2=", "completion": " 4"}), "completions", tok,
                            DataSpec(train_on_prompt=True))
    assert everything.mask == [0] + [1] * (len(enc.ids) - 1)


def test_text_trains_all_tokens_and_appends_eos(tiny_tokenizer, bos_tokenizer):
    text = "the quick brown fox"
    enc = encode_row(row({"text": text}), "text", tiny_tokenizer, SPEC)
    assert tiny_tokenizer.bos_token_id is None
    assert enc.ids == ids(tiny_tokenizer, text) + [2]
    assert enc.mask == [0] + [1] * (len(enc.ids) - 1)
    with_bos = encode_row(row({"text": text}), "text", bos_tokenizer, SPEC)
    assert with_bos.ids == [0] + ids(tiny_tokenizer, text) + [2]
    assert with_bos.mask == [0] + [1] * (len(with_bos.ids) - 1)


# --- overlong examples and stats ------------------------------------------------------------

def test_truncate_and_drop_with_stats(tiny_tokenizer):
    short = row({"text": "hello"}, 1)                               # 4 with eos
    long = row({"text": "the quick brown fox jumps over"}, 2)       # more than 8
    late = row({"messages": CHAT}, 3)                               # answer after token 8
    n_long = len(encode_row(long, "text", tiny_tokenizer, SPEC).ids)
    assert n_long > 8

    out = encode_rows([short, long], tiny_tokenizer, DataSpec(max_length=8), "d.jsonl")
    assert [len(e.ids) for e in out.examples] == [4, 8]
    assert out.examples[1].ids == encode_row(long, "text", tiny_tokenizer, SPEC).ids[:8]
    assert out.stats == EncodeStats(total=2, kept=2, truncated=1, tokens=12, trained_tokens=10)
    assert out.format == "text"

    dropped = encode_rows([short, long], tiny_tokenizer,
                          DataSpec(max_length=8, overlong="drop"), "d.jsonl")
    assert [e.ids for e in dropped.examples] == [out.examples[0].ids]
    assert dropped.stats == EncodeStats(total=2, kept=1, dropped_overlong=1, tokens=4,
                                        trained_tokens=3)

    chat = encode_rows([late, row({"messages": CHAT[1:3]}, 4)], tiny_tokenizer,
                       DataSpec(max_length=20), "d.jsonl")
    assert chat.stats.truncated == 2 and chat.stats.dropped_no_loss == 1
    assert chat.stats.kept == 1 and chat.stats.dropped == 1
    assert chat.stats.summary() == (
        "1/2 examples, 20 tokens (3 trained), 2 truncated, 1 dropped with no trained token")


def test_auto_format_then_a_row_of_another_format_is_an_error(tiny_tokenizer):
    rows = [row({"text": "hello"}, 1), row({"messages": CHAT}, 5)]
    with pytest.raises(MacftError, match=r"^data/train.jsonl:5: missing key 'text'$"):
        encode_rows(rows, tiny_tokenizer, SPEC, "data/train.jsonl")


# --- formats and row errors -----------------------------------------------------------------

def test_detect_format():
    assert detect_format([row({"messages": CHAT})], "p") == "chat"
    assert detect_format([row({"prompt": "a", "completion": "b"})], "p") == "completions"
    assert detect_format([row({"text": "a", "id": 3})], "p") == "text"
    with pytest.raises(MacftError) as info:
        detect_format([row({"prompt": "a", "answer": "b"}, 2)], "data/train.jsonl")
    assert str(info.value) == (
        "data/train.jsonl:2: cannot tell the data format from the keys (answer, prompt); "
        "expected 'messages' (chat), 'prompt' + 'completion' (completions) or 'text' (text)")


BAD_ROWS = [
    ("chat", {"text": "hi"}, "missing key 'messages'"),
    ("chat", {"messages": "hi"}, "key 'messages' must be a non-empty list"),
    ("chat", {"messages": []}, "key 'messages' must be a non-empty list"),
    ("chat", {"messages": ["hi"]}, "key 'messages[0]' must be an object"),
    ("chat", {"messages": [{"role": "bot", "content": "x"}]},
     "key 'messages[0].role' must be one of system, user, assistant, tool; got 'bot'"),
    ("chat", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]},
     "key 'messages[1].content' must be a string, got NoneType"),
    ("chat", {"messages": [{"role": "user", "content": 3}]},
     "key 'messages[0].content' must be a string, got int"),
    ("completions", {"prompt": "x"}, "missing key 'completion'"),
    ("completions", {"prompt": ["x"], "completion": "y"}, "key 'prompt' must be a string"),
    ("text", {"prompt": "x"}, "missing key 'text'"),
]


@pytest.mark.parametrize(("fmt", "data", "message"), BAD_ROWS)
def test_bad_rows_name_file_line_and_key(tmp_path, tiny_tokenizer, fmt, data, message):
    path = tmp_path / "train.jsonl"
    good = {"chat": {"messages": CHAT}, "completions": {"prompt": "a", "completion": "b"},
            "text": {"text": "a"}}[fmt]
    path.write_text(f"{json.dumps(good)}\n\n{json.dumps(data)}\n")
    rows = load_rows(path)
    with pytest.raises(MacftError) as info:
        encode_rows(rows, tiny_tokenizer, DataSpec(format=fmt), str(path))
    assert str(info.value).startswith(f"{path}:3: {message}")
    assert "\n" not in str(info.value)


def test_chat_rows_need_a_chat_template(bos_tokenizer):
    with pytest.raises(MacftError, match="^data/train.jsonl:1: the tokenizer has no chat template"):
        encode_row(row({"messages": CHAT}), "chat", bos_tokenizer, SPEC)


# --- prompts for evaluation -----------------------------------------------------------------

def test_prompt_and_reference(tiny_tokenizer, bos_tokenizer):
    tok = tiny_tokenizer
    prompt, ref = prompt_and_reference(row({"messages": CHAT}), "chat", tok, SPEC)
    assert tok.decode(prompt) == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello world<|im_end|>\n<|im_start|>user\nthe answer?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert ref == "42."
    spec = DataSpec(system_prompt="Be brief.")
    prompt, ref = prompt_and_reference(row({"prompt": "hi", "completion": "hello"}),
                                       "completions", tok, spec)
    assert tok.decode(prompt) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                  "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert ref == "hello"
    prompt, ref = prompt_and_reference(row({"prompt": "2+2=", "completion": " 4"}),
                                       "completions", bos_tokenizer, SPEC)
    assert (prompt, ref) == ([0] + ids(tok, "2+2="), " 4")
    with pytest.raises(MacftError, match="^data/train.jsonl:1: no assistant message"):
        prompt_and_reference(row({"messages": CHAT[:2]}), "chat", tok, SPEC)
    with pytest.raises(MacftError, match="^data/train.jsonl:1: text rows have no prompt"):
        prompt_and_reference(row({"text": "a"}), "text", tok, SPEC)
