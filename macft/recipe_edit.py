"""Write changed options into the person's own recipe file, keeping its comments and key order.

Reading recipes stays ``recipe.parse_yaml`` (a SafeLoader) into the dataclasses; this module only
edits the text document with ruamel.yaml's round-trip mode, which keeps comments, key order,
quoting and flow lists. Only keys whose value changed are written: a default the file never named
stays out of it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from macft.errors import MacftError


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096                        # never re-wrap a long prompt
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _load(text: str):
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    try:
        doc = _yaml().load(text) if text.strip() else None
    except YAMLError as exc:
        raise MacftError(f"recipe: cannot edit the file as YAML ({exc})") from None
    return CommentedMap() if doc is None else doc


def _plain(value: Any):
    """A form value as ruamel writes it: lists in flow style, as recipes write them."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(value, (list, tuple)):
        seq = CommentedSeq(list(value))
        seq.fa.set_flow_style()
        return seq
    return value


def _set(doc, key: str, value: Any) -> None:
    from ruamel.yaml.comments import CommentedMap

    *parents, leaf = key.split(".")
    node = doc
    for part in parents:
        child = node.get(part)
        if isinstance(child, str) and part == "model":   # `model: NAME` is short for model.path
            if [leaf] == ["path"] and len(parents) == 1:
                node[part] = value
                return
            child = CommentedMap([("path", child)])
            node[part] = child
        elif not isinstance(child, dict):
            child = CommentedMap()
            node[part] = child
        node = child
    if isinstance(node.get(leaf), list) and isinstance(value, list) \
            and list(node[leaf]) == list(value):
        return
    node[leaf] = _plain(value)


def edited_text(original: str, changes: dict[str, Any], header: str | None = None) -> str:
    """``original`` (a recipe's text, or "") with ``changes`` ({"train.steps": 150}) applied;
    ``header`` (a comment line) opens a document that had no text."""
    doc = _load(original)
    for key, value in changes.items():
        _set(doc, key, value)
    out = io.StringIO()
    _yaml().dump(doc, out)
    text = out.getvalue()
    if not original.strip() and header:
        text = f"# {header}\n{text}"
    return text


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``after`` whose value differs from ``before``, in ``after``'s order."""
    return {k: v for k, v in after.items() if before.get(k) != v}


def save(source: Path | None, target: Path, changes: dict[str, Any],
         header: str | None = None) -> Path:
    """Apply ``changes`` to ``source``'s text (a new document when None, opened by the comment
    ``header``) and write ``target`` atomically; returns ``target``."""
    from macft import runs

    original = Path(source).read_text(encoding="utf-8") if source is not None else ""
    text = edited_text(original, changes, header=header)
    target.parent.mkdir(parents=True, exist_ok=True)
    return runs.atomic_write(target, text)
