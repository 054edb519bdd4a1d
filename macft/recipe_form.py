"""The recipe form's model: one field per option, straight from ``recipe.describe()``.

Widgets hold text; ``values_to_recipe`` turns the texts back into the raw nested dict a YAML file
would give and validates it with ``recipe.from_dict``, so the form reports exactly the loader's
one-line messages. No default or help text is copied here.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from macft import recipe as recipe_mod

# The options a person sets for a first run, shown on top of the form in this order; every other
# option waits under "Advanced". The one list of them.
ESSENTIAL = ("name", "model.path", "method", "data.train", "data.valid", "train.steps",
             "train.learning_rate", "lora.rank")


@dataclass(frozen=True)
class FormField:
    key: str
    type: str
    default: Any
    help: str
    choices: tuple | None
    bounds: recipe_mod.Bounds | None = None     # the numbers allowed (the loader checks them)

    @property
    def optional(self) -> bool:
        return "None" in self.type

    @property
    def kind(self) -> str:
        if self.choices:
            return "choice"
        if self.type == "bool":
            return "bool"
        return "list" if self.type == "list" else "text"

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]


def choices_of(key: str, cls=recipe_mod.Recipe) -> tuple | None:
    """The allowed values a recipe field declares in its metadata (None when free)."""
    head, _, rest = key.partition(".")
    f = next(f for f in dataclasses.fields(cls) if f.name == head)
    if rest:
        return choices_of(rest, typing.get_type_hints(cls)[head])
    return f.metadata.get("choices")


def form_fields() -> list[FormField]:
    return [FormField(key, tname, default, help_text, choices_of(key), recipe_mod.bounds_of(key))
            for key, tname, default, help_text in recipe_mod.describe()]


def essential_first(fields: list[FormField]) -> tuple[list[FormField], list[FormField]]:
    """(the ESSENTIAL fields in their order, the others with top-level options first)."""
    by_key = {f.key: f for f in fields}
    rest = [f for f in fields if f.key not in ESSENTIAL]
    return [by_key[k] for k in ESSENTIAL], sorted(rest, key=lambda f: f.section != "")


# Every loader message names its option as ``key 'train.steps'`` (``errors.where``), and a
# check on two options as ``keys 'a' > 'b'``: the first one the form has is the field to fix.
_KEY_IN_MESSAGE = re.compile(r"'([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)'")


def error_key(message: str, keys) -> str | None:
    """The form key an error message names (None when it names none of ``keys``)."""
    first = re.search(r"\bkeys? '", message)
    if first is None:
        return None
    return next((k for k in _KEY_IN_MESSAGE.findall(message[first.start():]) if k in keys),
                None)


def to_text(value: Any) -> str:
    """How a value is shown in a text box (None as empty, lists in YAML flow style)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def from_text(text: str, f: FormField) -> Any:
    """The value a recipe file with this text would give (``recipe.parse_value``)."""
    if f.type in ("str", "str | None"):
        return None if f.optional and text == "" else text
    if f.optional and text.strip() == "":
        return None
    return recipe_mod.parse_value(text)


def nest(values: dict[str, Any]) -> dict:
    """{"train.steps": 3} -> {"train": {"steps": 3}}."""
    raw: dict = {}
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def values_to_recipe(values: dict[str, Any], src: str) -> recipe_mod.Recipe:
    """Validate form values (already parsed with ``from_text``); raises MacftError."""
    return recipe_mod.from_dict(nest(values), src)


def recipe_values(recipe: recipe_mod.Recipe) -> dict[str, Any]:
    return dict(recipe_mod.describe_values(recipe))
