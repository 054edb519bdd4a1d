"""The objective registry: a new objective is a module plus one line in OBJECTIVES."""

from __future__ import annotations

import pytest

from macft import recipe as recipe_mod
from macft.errors import MacftError
from macft.events import Collect, Eval, Step
from macft.train import objectives
from macft.train.loop import train
from pinned_runs import tiny_recipe


def _recipe(tmp_path, objective, out):
    raw = tiny_recipe(tmp_path / "tiny", "sft")
    raw["train"] = dict(raw["train"], steps=2, grad_accum=1, compile="off")
    return recipe_mod.from_dict({**raw, "objective": objective, "output": str(tmp_path / out)})


def test_a_registered_toy_objective_trains(tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "toy", "toy_objective:HalfSft")  # the one line
    toy, sft = Collect(), Collect()
    train(_recipe(tmp_path, "toy", "run-toy"), [toy])
    train(_recipe(tmp_path, "sft", "run-sft"), [sft])
    toy_steps, sft_steps = toy.of(Step), sft.of(Step)
    assert [e.metrics for e in toy_steps] == [{"toy_steps": 1.0}, {"toy_steps": 2.0}]
    # Same data, seed and start: the first step's loss is exactly half of SFT's.
    assert toy_steps[0].loss == pytest.approx(0.5 * sft_steps[0].loss, rel=1e-6)
    assert toy.of(Eval) == [] and sft.of(Eval)          # the toy has no validation
    assert (tmp_path / "run-toy" / "adapters.safetensors").exists()


def test_an_unregistered_objective_is_refused_by_the_recipe(tmp_path):
    with pytest.raises(MacftError, match="key 'objective' must be one of sft, dpo, ipo"):
        _recipe(tmp_path, "ppo", "run-x")   # grpo is registered now


def test_each_objective_name_resolves_to_an_objective_class():
    from macft.train.objectives.base import Objective

    for name in objectives.OBJECTIVES:
        assert issubclass(objectives.objective_class(name), Objective)
