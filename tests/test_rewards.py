"""Rewards: every built-in on right, wrong, malformed and empty completions; user rewards; errors."""

from __future__ import annotations

import json

import pytest

from macft.errors import MacftError
from macft.rewards import (BUILTINS, RewardError, RewardSpec, build_rewards, check_specs,
                           parse_specs, score_rows)


def one(spec: dict, tmp_path=None, **kw):
    (reward,) = build_rewards([spec], tmp_path or ".", **kw)
    return reward


def scores(spec, cases, tmp_path=None):
    """{label: score} of (completion, row) cases under one reward."""
    reward = one(spec, tmp_path)
    return {label: reward(c, row) for label, (c, row) in cases.items()}


# ----- built-ins: right, wrong, malformed, empty ------------------------------------------------
def test_json_valid_is_strict_about_fences_and_trailing_text():
    got = scores({"name": "json_valid"}, {
        "right": ('  {"a": 1, "b": [2]}\n', {}),
        "wrong": ("The answer is a", {}),
        "malformed": ('{"a": 1,}', {}),
        "fenced": ('```json\n{"a": 1}\n```', {}),
        "fence_no_newline": ('```json{"a": 1}```', {}),
        "trailing": ('{"a": 1} and that is all', {}),
        "empty": ("", {}),
    })
    assert got == {"right": 1.0, "wrong": 0.0, "malformed": 0.0, "fenced": 0.0,
                   "fence_no_newline": 0.0, "trailing": 0.0, "empty": 0.0}


def test_json_valid_fenced_option_unwraps_one_fence_only():
    got = scores({"name": "json_valid", "fenced": True}, {
        "fenced": ('```json\n{"a": 1}\n```', {}),
        "fence_no_newline": ('```json{"a": 1}```', {}),
        "bare": ('{"a": 1}', {}),
        "fence_then_text": ('```json\n{"a": 1}\n```\nHope this helps', {}),
        "malformed": ('```json\n{"a": \n```', {}),
        "empty_fence": ("```json\n```", {}),
    })
    assert got == {"fenced": 1.0, "fence_no_newline": 1.0, "bare": 1.0,
                   "fence_then_text": 0.0, "malformed": 0.0, "empty_fence": 0.0}


def test_json_schema(tmp_path):
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    (tmp_path / "person.json").write_text(json.dumps(schema))
    got = scores({"name": "json_schema", "schema": "person.json"}, {
        "right": ('{"name": "Ada", "age": 36}', {}),
        "wrong": ('{"name": "Ada", "age": "36"}', {}),
        "missing": ('{"name": "Ada"}', {}),
        "malformed": ('{"name": "Ada", "age": 36', {}),
        "empty": ("", {}),
    }, tmp_path)
    assert got == {"right": 1.0, "wrong": 0.0, "missing": 0.0, "malformed": 0.0, "empty": 0.0}


def test_json_schema_file_errors_name_the_key(tmp_path):
    with pytest.raises(MacftError, match=r"r.yaml: key 'grpo.rewards\[0\].schema' names .*nope"
                                         r".json, which does not exist"):
        build_rewards([{"name": "json_schema", "schema": "nope.json"}], tmp_path, src="r.yaml")
    (tmp_path / "bad.json").write_text('{"type": 12}')
    with pytest.raises(MacftError, match=r"key 'grpo.rewards\[0\].schema' names .*bad.json, "
                                         r"not a JSON Schema"):
        build_rewards([{"name": "json_schema", "schema": "bad.json"}], tmp_path)


def test_json_fields_partial_credit_per_field():
    ref = {"name": "Ada", "age": 36, "city": "London", "langs": ["en", "fr"]}
    row = {"reference": ref}
    got = scores({"name": "json_fields"}, {
        "right": (json.dumps(ref), row),
        "half": ('{"name": "Ada", "age": 36, "city": "Paris"}', row),
        "three": ('{"name": "Ada", "age": 36, "city": "London", "langs": ["fr", "en"]}', row),
        "extra_keys": ('{"name": "Ada", "age": 36, "city": "London", "langs": ["en", "fr"], '
                       '"x": 1}', row),
        "wrong": ('{"name": "Bob", "age": 1, "city": "Rome", "langs": []}', row),
        "not_object": ('["Ada", 36]', row),
        "malformed": ('{"name": "Ada", "age": 36', row),
        "empty": ("", row),
        "ref_as_text": ('{"name": "Ada", "age": 37}', {"reference": '{"name": "Ada", "age": 36}'}),
    })
    assert got == {"right": 1.0, "half": 0.5, "three": 0.75, "extra_keys": 1.0, "wrong": 0.0,
                   "not_object": 0.0, "malformed": 0.0, "empty": 0.0, "ref_as_text": 0.5}


def test_json_fields_reads_the_named_field():
    reward = one({"name": "json_fields", "field": "answer"})
    assert reward('{"k": 2}', {"answer": {"k": 2}}) == 1.0
    with pytest.raises(KeyError, match="no field 'answer'"):
        reward('{"k": 2}', {"reference": {"k": 2}})


def test_exact():
    row = {"answer": "Paris"}
    got = scores({"name": "exact"}, {
        "right": (" Paris\n", row), "wrong": ("paris", row), "longer": ("Paris.", row),
        "malformed": ("\x00Paris", row), "empty": ("", row), "number_row": ("7", {"answer": 7}),
    })
    assert got == {"right": 1.0, "wrong": 0.0, "longer": 0.0, "malformed": 0.0, "empty": 0.0,
                   "number_row": 1.0}


def test_regex():
    got = scores({"name": "regex", "pattern": r"^Answer: \d+\.$"}, {
        "right": ("Answer: 42.\n", {}), "wrong": ("The answer is 42.", {}),
        "malformed": ("Answer: 42. Because", {}), "empty": ("", {}),
    })
    assert got == {"right": 1.0, "wrong": 0.0, "malformed": 0.0, "empty": 0.0}


def test_regex_that_does_not_compile_names_the_key():
    with pytest.raises(MacftError, match=r"key 'grpo.rewards\[0\].pattern' is not a regular "
                                         r"expression"):
        check_specs([{"name": "regex", "pattern": "(unclosed"}], ".")


def test_number_takes_the_last_number_and_a_tolerance():
    row = {"answer": 1234}
    got = scores({"name": "number"}, {
        "right": ("We add 1000 and 234, so Answer: 1,234.", row),
        "wrong": ("Answer: 1235.", row), "first_only": ("1234 minus 1 is 1233", row),
        "malformed": ("Answer: one thousand", row), "empty": ("", row),
        "text_row": ("-3.5", {"answer": "It is -3.5"}),
    })
    assert got == {"right": 1.0, "wrong": 0.0, "first_only": 0.0, "malformed": 0.0,
                   "empty": 0.0, "text_row": 1.0}
    near = one({"name": "number", "tolerance": 0.01})
    assert (near("3.141", {"answer": 3.14}), near("3.16", {"answer": 3.14})) == (1.0, 0.0)


def test_number_row_without_a_number_raises():
    with pytest.raises(ValueError, match="holds no number"):
        one({"name": "number"})("4", {"answer": "none"})


def test_choice():
    row = {"labels": ["positive", "negative", "neutral"], "answer": "negative"}
    got = scores({"name": "choice", "valid_credit": 0.25}, {
        "right": ("negative\n", row), "wrong_label": ("neutral", row),
        "not_a_label": ("bad", row), "case": ("Negative", row),
        "malformed": ("negative, I think", row), "empty": ("", row),
    })
    assert got == {"right": 1.0, "wrong_label": 0.25, "not_a_label": 0.0, "case": 0.0,
                   "malformed": 0.0, "empty": 0.0}
    folded = one({"name": "choice", "ignore_case": True})
    assert (folded("Negative", row), folded("Neutral", row)) == (1.0, 0.0)


def test_tool_call_tagged_and_bare_forms():
    row = {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}
    got = scores({"name": "tool_call"}, {
        "tagged": ('I will check.\n<tool_call>\n{"name": "get_weather", "arguments": '
                   '{"unit": "C", "city": "Paris"}}\n</tool_call>', row),
        "bare": ('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}', row),
        "args_as_text": ('{"name": "get_weather", "arguments": '
                         '"{\\"city\\": \\"Paris\\", \\"unit\\": \\"C\\"}"}', row),
        "wrong_args": ('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}'
                       '</tool_call>', row),
        "wrong_name": ('<tool_call>{"name": "get_time", "arguments": {"city": "Paris", '
                       '"unit": "C"}}</tool_call>', row),
        "malformed": ('<tool_call>{"name": "get_weather", "arguments": {</tool_call>', row),
        "bare_with_text": ('Call: {"name": "get_weather", "arguments": {}}', row),
        "empty": ("", row),
    })
    assert got == {"tagged": 1.0, "bare": 1.0, "args_as_text": 1.0, "wrong_args": 0.5,
                   "wrong_name": 0.0, "malformed": 0.0, "bare_with_text": 0.0, "empty": 0.0}


def test_tool_call_row_as_json_text():
    reward = one({"name": "tool_call", "field": "expected"})
    row = {"expected": '{"name": "f", "arguments": {"x": 1}}'}
    assert reward('{"name": "f", "arguments": {"x": 1}}', row) == 1.0


def test_max_length_words_chars_and_tokens():
    words = one({"name": "max_length", "max_tokens": 3, "penalty": 0.25})
    assert [words(c, {}) for c in ["a b c", "a b c d", "a b c d e f", " ".join("x" * 20), ""]] \
        == [0.0, -0.25, -0.75, -1.0, 0.0]
    chars = one({"name": "max_length", "max_tokens": 4, "count": "chars"})
    assert chars("abcd", {}) == 0.0 and chars("abcdef", {}) == pytest.approx(-0.02)

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return list(text.encode())      # one token per byte

    tokens = one({"name": "max_length", "max_tokens": 2, "count": "tokens", "penalty": 0.5},
                 tokenizer=Tok())
    assert (tokens("ab", {}), tokens("abc", {}), tokens("\u00e9\u00e9", {})) == (0.0, -0.5, -1.0)


def test_max_length_tokens_needs_a_tokenizer_only_when_built():
    spec = {"name": "max_length", "max_tokens": 2, "count": "tokens"}
    check_specs([spec], ".")            # recipe load: fine, the run passes its tokenizer
    with pytest.raises(MacftError, match=r"key 'grpo.rewards\[0\].count' is 'tokens', which "
                                         r"needs the run's tokenizer"):
        build_rewards([spec], ".")
    with pytest.raises(MacftError, match=r"key 'grpo.rewards\[0\].count' must be one of"):
        check_specs([{"name": "max_length", "max_tokens": 2, "count": "bytes"}], ".")


def test_every_builtin_is_tested_here():
    import inspect
    source = inspect.getsource(inspect.getmodule(test_every_builtin_is_tested_here))
    assert all(f'"name": "{name}"' in source for name in BUILTINS)


# ----- specs -------------------------------------------------------------------------------------
def test_specs_fill_defaults_and_weights():
    specs = parse_specs([{"name": "number", "weight": 2}, {"name": "exact", "label": "strict"}])
    assert specs == [RewardSpec("number", 2.0, {"field": "answer", "tolerance": 0.0}),
                     RewardSpec("exact", 1.0, {"field": "answer"}, "strict")]
    rewards = build_rewards(specs, ".")
    assert [(r.name, r.weight) for r in rewards] == [("number", 2.0), ("strict", 1.0)]
    per, total = score_rows(rewards, ["7", "Answer: 7."], [{"answer": 7}, {"answer": "7"}])
    assert per == [[1.0, 1.0], [1.0, 0.0]] and total == [3.0, 2.0]


@pytest.mark.parametrize("raw, message", [
    ([{"name": "jsn_valid"}], r"r.yaml: key 'grpo.rewards\[0\].name': unknown reward "
                              r"'jsn_valid' \(did you mean 'json_valid'\?\)"),
    ([{"weight": 1}], r"r.yaml: key 'grpo.rewards\[0\].name' is required"),
    ([{"name": "exact"}, {"name": "regex"}],
     r"r.yaml: key 'grpo.rewards\[1\].pattern' is required for reward 'regex'"),
    ([{"name": "regex", "pattern": "x", "patern": "y"}],
     r"key 'grpo.rewards\[0\].patern': reward 'regex' has no option 'patern' "
     r"\(did you mean 'pattern'\?\)"),
    ([{"name": "exact", "weight": "high"}], r"key 'grpo.rewards\[0\].weight' must be a number"),
    ([{"name": "number", "tolerance": "small"}],
     r"key 'grpo.rewards\[0\].tolerance' must be float"),
    ([{"name": "number", "tolerance": -1}], r"key 'grpo.rewards\[0\].tolerance' must be >= 0"),
    ([{"name": "exact"}, {"name": "exact"}],
     r"key 'grpo.rewards\[1\]': a second reward named 'exact'"),
    (["exact"], r"key 'grpo.rewards\[0\]' must be a mapping"),
    ("exact", r"key 'grpo.rewards' must be a list of rewards"),
    ([{"name": "user", "file": "r.py"}], r"key 'grpo.rewards\[0\].function' is required"),
])
def test_spec_errors_are_one_line_naming_the_key(raw, message):
    with pytest.raises(MacftError, match=message) as info:
        check_specs(raw, ".", src="r.yaml")
    assert "\n" not in str(info.value)


# ----- user rewards ------------------------------------------------------------------------------
USER_FILE = '''
def score(completion, row):
    return 1.0 if completion.strip().endswith(row["answer"]) else -0.5

def explode(completion, row):
    raise ZeroDivisionError("division by zero in my reward")

def text(completion, row):
    return "high"

not_a_function = 3
'''


def test_user_reward_loads_from_the_recipe_folder(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_FILE)
    reward = one({"name": "user", "file": "my_rewards.py", "function": "score", "weight": 2},
                 tmp_path)
    assert (reward.name, reward.weight) == ("score", 2.0)
    assert (reward("so: 12", {"answer": "12"}), reward("13", {"answer": "12"})) == (1.0, -0.5)


def test_user_reward_load_errors(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_FILE)
    (tmp_path / "broken.py").write_text("def score(:\n")
    cases = [
        ({"file": "missing.py", "function": "score"},
         r"key 'grpo.rewards\[0\].file' names .*missing.py, which does not exist"),
        ({"file": "my_rewards.py", "function": "nope"},
         r"key 'grpo.rewards\[0\].function' 'nope' is not a function in .*my_rewards.py"),
        ({"file": "my_rewards.py", "function": "not_a_function"},
         r"key 'grpo.rewards\[0\].function' 'not_a_function' is not a function"),
        ({"file": "broken.py", "function": "score"},
         r"key 'grpo.rewards\[0\].file' names .*broken.py, which failed to import: SyntaxError"),
    ]
    for spec, message in cases:
        with pytest.raises(MacftError, match=message):
            build_rewards([{"name": "user", **spec}], tmp_path, src="r.yaml")
    # Recipe load checks the file exists but runs none of its code.
    (tmp_path / "side_effect.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n"
                                             "def score(c, r):\n    return 0.0\n")
    check_specs([{"name": "user", "file": "side_effect.py", "function": "score"}], tmp_path)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(MacftError, match=r"\[0\].file' names .*missing.py, which does not exist"):
        check_specs([{"name": "user", "file": "missing.py", "function": "score"}], tmp_path)


def test_a_raising_reward_names_reward_row_and_error(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_FILE)
    rewards = build_rewards([{"name": "exact"},
                             {"name": "user", "file": "my_rewards.py", "function": "explode"}],
                            tmp_path)
    with pytest.raises(RewardError) as info:
        score_rows(rewards, ["a", "b"], [{"answer": "a"}, {"answer": "b"}], indices=[40, 41])
    err = info.value
    assert (err.reward, err.row) == ("explode", 40)
    assert str(err) == ("reward 'explode' failed on row 40: ZeroDivisionError: division by "
                        "zero in my reward")
    assert isinstance(err, MacftError)


def test_a_reward_returning_no_number_and_a_row_missing_a_field(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_FILE)
    rewards = build_rewards([{"name": "user", "file": "my_rewards.py", "function": "text"}],
                            tmp_path)
    with pytest.raises(RewardError, match=r"^reward 'text' failed on row 0: returned 'high', "
                                          r"not a finite number$"):
        score_rows(rewards, ["x"], [{}])
    with pytest.raises(RewardError, match=r"^reward 'exact' failed on row 3: KeyError: "
                                          r"\"the row has no field 'answer'\"$"):
        score_rows(build_rewards([{"name": "exact"}], "."), ["x", "y"], [{"answer": "x"}, {}],
                   indices=[2, 3])
