"""Reward specs from a recipe, the reward callables built from them, and scoring rows."""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from macft.errors import MacftError
from macft.rewards import user
from macft.rewards.builtins import BUILTINS, REQUIRED, BuildContext

COMMON = ("name", "weight", "label")      # keys every reward takes
USER_KEYS = ("file", "function")


@dataclass(frozen=True)
class RewardSpec:
    """One entry of a recipe's reward list, validated."""

    name: str                           # a built-in's name, or "user"
    weight: float = 1.0
    options: dict = field(default_factory=dict)   # the built-in's options, defaults filled in
    label: str = ""                     # the name metrics use (default: name, or the function)

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        return self.options["function"] if self.name == "user" else self.name


class RewardError(MacftError):
    """A reward raised (or returned no number) on a row: ends the run with this one line."""

    def __init__(self, reward: str, row: int, error: BaseException | str):
        self.reward, self.row, self.error = reward, row, error
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"reward '{reward}' failed on row {row}: {text}")


class Reward:
    """A callable ``reward(completion, row) -> float`` with its ``name`` and ``weight``."""

    def __init__(self, name: str, weight: float, fn, spec: RewardSpec):
        self.name, self.weight, self.fn, self.spec = name, weight, fn, spec

    def __call__(self, completion: str, row: dict) -> float:
        return self.fn(completion, row)

    def __repr__(self) -> str:
        return f"Reward({self.name!r}, weight={self.weight})"


def _type_ok(value, tp):
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _parse_one(raw, i: int, src: str, key: str) -> RewardSpec:
    here = f"{key}[{i}]"
    if not isinstance(raw, dict):
        raise MacftError(f"{src}: key '{here}' must be a mapping like {{name: exact, weight: 1}}")
    name = raw.get("name")
    if name is None:
        raise MacftError(f"{src}: key '{here}.name' is required (one of "
                         f"{', '.join([*BUILTINS, 'user'])})")
    if name != "user" and name not in BUILTINS:
        hint = difflib.get_close_matches(str(name), [*BUILTINS, "user"], n=1, cutoff=0.6)
        tip = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise MacftError(f"{src}: key '{here}.name': unknown reward {name!r}{tip}")
    weight = raw.get("weight", 1.0)
    if not _type_ok(weight, float) or not math.isfinite(weight):
        raise MacftError(f"{src}: key '{here}.weight' must be a number, got {weight!r}")
    label = raw.get("label", "")
    if not isinstance(label, str):
        raise MacftError(f"{src}: key '{here}.label' must be text, got {label!r}")
    declared = ({k: None for k in USER_KEYS} if name == "user"
                else BUILTINS[name].options)
    options = {}
    for k, v in raw.items():
        if k in COMMON:
            continue
        if k not in declared:
            hint = difflib.get_close_matches(str(k), [*declared, *COMMON], n=1, cutoff=0.6)
            tip = f" (did you mean '{hint[0]}'?)" if hint else ""
            known = ", ".join(declared) or "none"
            raise MacftError(f"{src}: key '{here}.{k}': reward '{name}' has no option {k!r}"
                             f"{tip}; its options: {known}")
        tp = str if name == "user" else declared[k].type
        if not _type_ok(v, tp):
            raise MacftError(f"{src}: key '{here}.{k}' must be {tp.__name__}, got {v!r}")
        options[k] = float(v) if tp is float else v
    for k, opt in declared.items():
        if k in options:
            continue
        if opt is None or opt.default is REQUIRED:
            raise MacftError(f"{src}: key '{here}.{k}' is required for reward '{name}'")
        options[k] = opt.default
    return RewardSpec(name, float(weight), options, label)


def parse_specs(raw, src: str = "<recipe>", key: str = "grpo.rewards") -> list[RewardSpec]:
    """The recipe's reward list as specs; one-line errors name the key (nothing is loaded)."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise MacftError(f"{src}: key '{key}' must be a list of rewards, got {raw!r}")
    specs = [s if isinstance(s, RewardSpec) else _parse_one(s, i, src, key)
             for i, s in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        if s.title in seen:
            raise MacftError(f"{src}: key '{key}[{i}]': a second reward named '{s.title}' "
                             f"(give one a distinct 'label')")
        seen[s.title] = i
    return specs


def _build(specs, base_dir, tokenizer, src, key, checking) -> list[Reward]:
    base_dir = Path(base_dir)
    out = []
    for i, s in enumerate(parse_specs(specs, src, key)):
        ctx = BuildContext(base_dir, tokenizer, src, f"{key}[{i}]", checking)
        if s.name == "user":
            path = user.resolve(s.options["file"], base_dir)
            if checking:
                if not path.is_file():
                    raise ctx.error("file", f"names {path}, which does not exist")
                fn = None
            else:
                fn = user.load_function(path, s.options["function"], ctx)
        else:
            fn = BUILTINS[s.name].make(s.options, ctx)
        out.append(Reward(s.title, s.weight, fn, s))
    return out


def check_specs(specs, base_dir, src: str = "<recipe>", key: str = "grpo.rewards") -> None:
    """Validate a reward list at recipe load: names, options, files, patterns, schemas.

    Runs no user code (a user file must exist; its function is looked up by build_rewards).
    """
    _build(specs, base_dir, None, src, key, checking=True)


def build_rewards(specs, base_dir, tokenizer=None, src: str = "<recipe>",
                  key: str = "grpo.rewards") -> list[Reward]:
    """The reward callables of a recipe's list (mappings or RewardSpecs).

    ``base_dir`` is the recipe's folder (relative ``file``/``schema`` paths resolve there);
    ``tokenizer`` is needed only by ``max_length`` with ``count: tokens``. Loading a user
    reward imports the user's file.
    """
    return _build(specs, base_dir, tokenizer, src, key, checking=False)


def score_rows(rewards: list[Reward], completions: list[str], rows: list[dict],
               indices: list[int] | None = None) -> tuple[list[list[float]], list[float]]:
    """(per-reward scores [completion][reward], weighted totals) of completions and their rows.

    ``indices`` are the rows' numbers in the data set, for the error line (default: position).
    A reward that raises, or returns something that is not a finite number, raises RewardError.
    """
    if len(completions) != len(rows):
        raise ValueError("one row per completion")
    indices = list(range(len(rows))) if indices is None else list(indices)
    scores, totals = [], []
    for completion, row, index in zip(completions, rows, indices):
        line = []
        for reward in rewards:
            try:
                value = reward(completion, row)
            except Exception as exc:  # noqa: BLE001 (a reward's failure ends the run in one line)
                raise RewardError(reward.name, index, exc) from exc
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise RewardError(reward.name, index, f"returned {value!r}, not a finite number")
            line.append(float(value))
        scores.append(line)
        totals.append(sum(r.weight * v for r, v in zip(rewards, line)))
    return scores, totals
