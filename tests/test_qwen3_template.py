"""Qwen3's chat format: thinking on and off, <think> blocks, reasoning_content, tool calls.

``QWEN3`` renders what Qwen3's own template renders (written here from its documented
behaviour): reasoning shown only for assistant turns after the last user message, an empty
<think></think> on the final answer, the empty block in the generation prompt when thinking
is off, tools listed in the system turn, calls as <tool_call> JSON, tool results as
<tool_response> inside a user turn. Masks are pinned token by token (runs of equal mask).
"""

from __future__ import annotations

import json

from macft.data import Row, encode_row
from macft.recipe import DataSpec

from test_data_encode import runs

SPEC = DataSpec()
QWEN3 = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{% endif %}"
    "# Tools\n\n<tools>"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\\n' }}</tools><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% set ns = namespace(last_query=messages|length - 1, found=false) %}"
    "{% for m in messages[::-1] %}{% set i = messages|length - 1 - loop.index0 %}"
    "{% if m.role == 'user' and not ns.found %}"
    "{% set ns.last_query = i %}{% set ns.found = true %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m.role == 'user' or (m.role == 'system' and not loop.first) %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'assistant' %}"
    "{% set content = m.content or '' %}{% set reasoning = m.reasoning_content or '' %}"
    "{% if not reasoning and '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "<|im_start|>assistant\n"
    "{% if loop.index0 > ns.last_query and (loop.last or reasoning) %}"
    "<think>\n{{ reasoning.strip('\\n') }}\n</think>\n\n{% endif %}"
    "{{ content }}"
    "{% for call in m.tool_calls or [] %}"
    "{% if loop.first and content %}{{ '\\n' }}{% endif %}"
    "<tool_call>\n{\"name\": \"{{ call.function.name }}\", \"arguments\": "
    "{{ call.function.arguments | tojson }}}\n</tool_call>{% endfor %}"
    "<|im_end|>\n"
    "{% elif m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n' }}<tool_response>\n{{ m.content }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def qwen3_tokenizer(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = QWEN3
    return tok


def row(data: dict) -> Row:
    return Row(1, data, "data/train.jsonl")


def test_thinking_on_trains_the_reasoning_of_the_final_answer(tiny_tokenizer):
    tok = qwen3_tokenizer(tiny_tokenizer)
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "reasoning_content": "say hello"},
                {"role": "user", "content": "the answer?"},
                {"role": "assistant", "content": "42.", "reasoning_content": "it is 42"}]
    enc = encode_row(row({"messages": messages}), "chat", tok, SPEC)
    # The first answer lost its reasoning (before the last user turn): only "hello" is trained.
    assert runs(tok, enc) == [
        (0, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
        (1, "hello<|im_end|>"),
        (0, "\n<|im_start|>user\nthe answer?<|im_end|>\n<|im_start|>assistant\n"),
        (1, "<think>\nit is 42\n</think>\n\n42.<|im_end|>"),
        (0, "\n"),
    ]


def test_think_block_inside_content_is_the_same_as_reasoning_content(tiny_tokenizer):
    tok = qwen3_tokenizer(tiny_tokenizer)
    inline = [{"role": "user", "content": "the answer?"},
              {"role": "assistant", "content": "<think>\nit is 42\n</think>\n\n42."}]
    split = [{"role": "user", "content": "the answer?"},
             {"role": "assistant", "content": "42.", "reasoning_content": "it is 42"}]
    a = encode_row(row({"messages": inline}), "chat", tok, SPEC)
    b = encode_row(row({"messages": split}), "chat", tok, SPEC)
    assert (a.ids, a.mask) == (b.ids, b.mask)


def test_thinking_off_puts_the_empty_think_block_in_the_prompt(tiny_tokenizer):
    tok = qwen3_tokenizer(tiny_tokenizer)
    messages = [{"role": "user", "content": "the answer?"},
                {"role": "assistant", "content": "42."}]
    on = encode_row(row({"messages": messages}), "chat", tok, SPEC)
    off = encode_row(row({"messages": messages, "enable_thinking": False}), "chat", tok, SPEC)
    assert on.ids == off.ids
    assert runs(tok, on) == [
        (0, "<|im_start|>user\nthe answer?<|im_end|>\n<|im_start|>assistant\n"),
        (1, "<think>\n\n</think>\n\n42.<|im_end|>"),
        (0, "\n"),
    ]
    assert runs(tok, off) == [
        (0, "<|im_start|>user\nthe answer?<|im_end|>\n<|im_start|>assistant\n<think>\n\n"
            "</think>\n\n"),
        (1, "42.<|im_end|>"),
        (0, "\n"),
    ]


def test_tool_calls_and_responses_mask_per_token(tiny_tokenizer):
    tok = qwen3_tokenizer(tiny_tokenizer)
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2}}}
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "4"},
                {"role": "assistant", "content": "4."}]
    enc = encode_row(row({"messages": messages, "tools": tools}), "chat", tok, SPEC)
    tool_json = json.dumps(tools[0])
    assert runs(tok, enc) == [
        (0, f"<|im_start|>system\n# Tools\n\n<tools>\n{tool_json}\n</tools><|im_end|>\n"
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"),
        (1, '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call><|im_end|>'),
        (0, "\n<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n"),
        (1, "<think>\n\n</think>\n\n4.<|im_end|>"),
        (0, "\n"),
    ]
    # Token by token: every trained token lies inside an assistant turn's span.
    pieces = tok.convert_ids_to_tokens(enc.ids)
    assert pieces[[i for i, m in enumerate(enc.mask) if m][0]] == "<"
    assert sum(enc.mask) == len(tok(
        '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call><|im_end|>',
        add_special_tokens=False)["input_ids"]) + len(tok(
            "<think>\n\n</think>\n\n4.<|im_end|>", add_special_tokens=False)["input_ids"])
