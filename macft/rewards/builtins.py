"""The built-in rewards: each scores one completion against the row it was generated for.

Every reward returns a float; the checks are strict unless an option says otherwise:

- ``json_valid``: 1.0 when the whole completion (surrounding whitespace aside) is one JSON
  value, else 0.0. A completion wrapped in a Markdown fence (```` ```json ... ``` ````) or
  followed by other text scores 0.0: the tasks this is for want bare JSON, and the reward is
  what teaches the model to drop the fence. ``fenced: true`` accepts a single fence around the
  whole completion (trailing text still scores 0.0).
- ``json_schema``: 1.0 when the completion parses as ``json_valid`` does and conforms to the
  JSON Schema in ``schema`` (a file, relative to the recipe's folder), else 0.0.
- ``json_fields``: partial credit, the share of the reference object's top-level fields whose
  value the completion's object has, equal. The reference is ``row[field]`` (default
  ``reference``), a JSON object or its JSON text. A completion that is not a JSON object: 0.0.
- ``exact``: 1.0 when the stripped completion equals ``str(row[field]).strip()`` (default
  field ``answer``), else 0.0.
- ``regex``: 1.0 when ``pattern`` matches the stripped completion (``re.search``: anchor it
  with ``^``/``$`` to match the whole), else 0.0.
- ``number``: 1.0 when the last number in the completion is within ``tolerance`` (absolute,
  default 0) of the row's ``field`` (default ``answer``; a number or text holding one), else
  0.0. "1,234" reads as 1234; a completion with no number scores 0.0.
- ``choice``: 1.0 when the stripped completion is one of ``row["labels"]`` and equals
  ``row[field]`` (default ``answer``), ``valid_credit`` (default 0.0) when it is another of the
  labels, else 0.0. ``ignore_case: true`` compares case-folded.
- ``tool_call``: the call is read from the first ``<tool_call>{...}</tool_call>`` block (the
  Qwen3/Hermes form; text around the block is allowed) or, without one, from the whole
  completion as a bare JSON object ``{"name": ..., "arguments": {...}}`` (``arguments`` may be
  an object or its JSON text). 0.5 when the function name equals that of ``row[field]``
  (default ``tool_call``, the same shape), plus 0.5 when the arguments are equal too; 0.0 for
  no parsable call.
- ``max_length``: 0.0 up to ``max_tokens`` tokens, then ``-penalty`` (default 0.01) per token
  past it, never below -1.0. Tokens are counted by ``count``: ``words`` (whitespace-separated,
  the default: needs no tokenizer), ``chars``, or ``tokens`` (the run's tokenizer, which the
  trainer passes to ``build_rewards``).

A row that lacks the field a reward reads raises (``score_rows`` reports the reward and row).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from macft.errors import MacftError

REQUIRED = object()


@dataclass(frozen=True)
class Option:
    type: type
    default: object
    help: str


@dataclass(frozen=True)
class Builtin:
    make: object            # (options: dict, context: BuildContext) -> (completion, row) -> float
    options: dict           # option name -> Option
    help: str


@dataclass(frozen=True)
class BuildContext:
    base_dir: Path          # the recipe's folder: relative file options resolve against it
    tokenizer: object       # the run's tokenizer, or None (recipe load, tests)
    src: str                # the recipe file, for error lines
    key: str                # this reward's recipe key, e.g. "grpo.rewards[2]"
    checking: bool = False  # at recipe load: no tokenizer yet, and no user code is run

    def error(self, option: str | None, message: str) -> MacftError:
        key = f"{self.key}.{option}" if option else self.key
        return MacftError(f"{self.src}: key '{key}' {message}")


# ----- parsing helpers --------------------------------------------------------------------
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.S)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_MISSING = object()


def json_body(text: str, fenced: bool = False):
    """The JSON value the whole completion holds, or _MISSING."""
    text = text.strip()
    if fenced:
        m = _FENCE.match(text)
        if m:
            text = m.group(1).strip()
    if not text:
        return _MISSING
    try:
        return json.loads(text)
    except ValueError:
        return _MISSING


def _as_json(value, what: str):
    """A row's reference value: the object itself or its JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError(f"{what} is text that is not JSON") from None
    return value


def _field(row: dict, name: str):
    if not isinstance(row, dict) or name not in row:
        raise KeyError(f"the row has no field '{name}'")
    return row[name]


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def parse_tool_call(text: str):
    """(name, arguments) of the completion's call, or None."""
    m = _TOOL_CALL.search(text)
    value = json_body(m.group(1) if m else text)
    return _call_parts(value)


def _call_parts(value):
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        args = json_body(args)
        if args is _MISSING:
            return None
    return value["name"], args


# ----- the rewards ------------------------------------------------------------------------
def _json_valid(o, ctx):
    return lambda c, row: 0.0 if json_body(c, o["fenced"]) is _MISSING else 1.0


def _json_schema(o, ctx):
    import jsonschema

    path = Path(o["schema"])
    path = path if path.is_absolute() else ctx.base_dir / path
    if not path.is_file():
        raise ctx.error("schema", f"names {path}, which does not exist")
    try:
        schema = json.loads(path.read_text())
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except (ValueError, jsonschema.SchemaError) as exc:
        first = str(exc).splitlines()[0]
        raise ctx.error("schema", f"names {path}, not a JSON Schema: {first}") from None
    validator = cls(schema)

    def score(c, row):
        value = json_body(c, o["fenced"])
        return 0.0 if value is _MISSING or not validator.is_valid(value) else 1.0
    return score


def _json_fields(o, ctx):
    def score(c, row):
        ref = _as_json(_field(row, o["field"]), f"row field '{o['field']}'")
        if not isinstance(ref, dict) or not ref:
            raise ValueError(f"row field '{o['field']}' is not a non-empty JSON object")
        got = json_body(c, o["fenced"])
        if not isinstance(got, dict):
            return 0.0
        return sum(1 for k, v in ref.items() if k in got and got[k] == v) / len(ref)
    return score


def _exact(o, ctx):
    return lambda c, row: float(c.strip() == str(_field(row, o["field"])).strip())


def _regex(o, ctx):
    try:
        rx = re.compile(o["pattern"])
    except re.error as exc:
        raise ctx.error("pattern", f"is not a regular expression: {exc}") from None
    return lambda c, row: 0.0 if rx.search(c.strip()) is None else 1.0


def _number(o, ctx):
    if o["tolerance"] < 0:
        raise ctx.error("tolerance", "must be >= 0")

    def score(c, row):
        want = _field(row, o["field"])
        want = float(want) if isinstance(want, (int, float)) else last_number(want)
        if want is None:
            raise ValueError(f"row field '{o['field']}' holds no number")
        got = last_number(c)
        return float(got is not None and math.isfinite(got)
                     and abs(got - want) <= o["tolerance"])
    return score


def _choice(o, ctx):
    fold = (lambda s: str(s).strip().casefold()) if o["ignore_case"] else (lambda s: str(s).strip())

    def score(c, row):
        labels = _field(row, "labels")
        if not isinstance(labels, list) or not labels:
            raise ValueError("row field 'labels' is not a non-empty list")
        got = fold(c)
        if got == fold(_field(row, o["field"])):
            return 1.0
        return float(o["valid_credit"]) if got in {fold(x) for x in labels} else 0.0
    return score


def _tool_call(o, ctx):
    def score(c, row):
        want = _call_parts(_as_json(_field(row, o["field"]), f"row field '{o['field']}'"))
        if want is None:
            raise ValueError(f"row field '{o['field']}' is not a call "
                             "{\"name\": ..., \"arguments\": {...}}")
        got = parse_tool_call(c)
        if got is None or got[0] != want[0]:
            return 0.0
        return 1.0 if got[1] == want[1] else 0.5
    return score


def _max_length(o, ctx):
    limit, penalty, count = o["max_tokens"], o["penalty"], o["count"]
    if limit <= 0:
        raise ctx.error("max_tokens", "must be positive")
    if penalty < 0:
        raise ctx.error("penalty", "must be >= 0")
    if count not in ("words", "chars", "tokens"):
        raise ctx.error("count", f"must be one of words, chars, tokens; got {count!r}")
    if count == "tokens" and ctx.tokenizer is None and not ctx.checking:
        raise ctx.error("count", "is 'tokens', which needs the run's tokenizer here "
                                 "(words or chars need none)")
    length = {"words": lambda c: len(c.split()), "chars": len,
              "tokens": lambda c: len(ctx.tokenizer.encode(c, add_special_tokens=False))}[count]
    return lambda c, row: -min(1.0, penalty * max(0, length(c) - limit))


_FENCED = Option(bool, False, "Accept one Markdown code fence around the whole completion.")
BUILTINS: dict[str, Builtin] = {
    "json_valid": Builtin(_json_valid, {"fenced": _FENCED}, "1 when the completion is JSON."),
    "json_schema": Builtin(_json_schema, {
        "schema": Option(str, REQUIRED, "JSON Schema file, relative to the recipe's folder."),
        "fenced": _FENCED}, "1 when the completion is JSON valid under the schema."),
    "json_fields": Builtin(_json_fields, {
        "field": Option(str, "reference", "Row field holding the reference JSON object."),
        "fenced": _FENCED}, "Share of the reference's fields the completion has equal."),
    "exact": Builtin(_exact, {
        "field": Option(str, "answer", "Row field holding the answer.")},
        "1 when the stripped completion equals the row's answer."),
    "regex": Builtin(_regex, {
        "pattern": Option(str, REQUIRED, "Regular expression searched in the completion.")},
        "1 when the pattern matches."),
    "number": Builtin(_number, {
        "field": Option(str, "answer", "Row field holding the number."),
        "tolerance": Option(float, 0.0, "Largest absolute difference that still counts.")},
        "1 when the completion's last number equals the row's."),
    "choice": Builtin(_choice, {
        "field": Option(str, "answer", "Row field holding the correct label."),
        "ignore_case": Option(bool, False, "Compare labels case-folded."),
        "valid_credit": Option(float, 0.0, "Score of a label that is valid but wrong.")},
        "1 when the completion is the row's correct label."),
    "tool_call": Builtin(_tool_call, {
        "field": Option(str, "tool_call", "Row field holding the expected call.")},
        "0.5 for the right function, 1 with the right arguments too."),
    "max_length": Builtin(_max_length, {
        "max_tokens": Option(int, REQUIRED, "Longest completion without a penalty."),
        "penalty": Option(float, 0.01, "Penalty per token past max_tokens (total >= -1)."),
        "count": Option(str, "words", "How tokens are counted: words, chars or tokens.")},
        "0 up to max_tokens, then a penalty per extra token."),
}
