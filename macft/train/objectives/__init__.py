"""Training objectives, one table: ``recipe.objective`` -> the class the loop drives.

Adding an objective is a module with an ``Objective`` subclass (see ``base.py``) and one line
in ``OBJECTIVES``; nothing else in macft asks which objective a run uses. The table names
classes as "module:Class" so that reading it (``recipe.py`` takes its choices from it) loads
no MLX; an entry may also be the class itself.
"""

from __future__ import annotations

import importlib

OBJECTIVES: dict[str, object] = {
    "sft": "macft.train.objectives.sft:Sft",
    "dpo": "macft.train.objectives.preference:Preference",
    "ipo": "macft.train.objectives.preference:Preference",
    "orpo": "macft.train.objectives.preference:Preference",
    "simpo": "macft.train.objectives.preference:Preference",
    "kto": "macft.train.objectives.kto:Kto",
    "grpo": "macft.train.objectives.grpo:Grpo",
}


def objective_class(name: str) -> type:
    entry = OBJECTIVES[name]
    if isinstance(entry, type):
        return entry
    module, _, attr = str(entry).partition(":")
    return getattr(importlib.import_module(module), attr)


def create(recipe, world):
    """The objective of ``recipe`` for this run (``recipe.py`` has checked the name)."""
    return objective_class(recipe.objective)(recipe, world)
