"""A run leaves nothing behind in the process: checkpointing, kernel mode, fast exp, caches.

Runs here use an 8-layer tiny model, where gradient checkpointing halves the peak memory (the
activations of the blocks dominate it), so a run that is checkpointed when it should not be, or
not when it should, shows in its peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import macft  # noqa: F401
from conftest import write_tiny_model
from macft import kernels, recipe as recipe_mod
from macft.events import Step, StopSignal
from macft.kernels import fastexp
from macft.models import quantized
from macft.train.loop import Trainer
from test_train import write_chat_set

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("deep")
    write_tiny_model(d / "model", {"num_hidden_layers": 8})
    write_chat_set(d / "train.jsonl", n=32)
    return d


def deep_recipe(folder: Path, out: str, **train) -> recipe_mod.Recipe:
    return recipe_mod.from_dict({
        "model": str(folder / "model"), "method": train.pop("method", "lora"),
        "kernels": train.pop("kernels", "auto"), "lora": {"rank": 4},
        "quantize": {"group_size": 32},
        "data": {"train": str(folder / "train.jsonl"), "max_length": 64},
        "train": {"steps": 3, "batch_size": 8, "learning_rate": 1e-2, "eval_every": 0,
                  "save_every": 0, "compile": "off", **train},
        "output": str(folder / out)})


class Watch:
    """A sink that notes, at each step, what the run has set in the process."""

    def __init__(self):
        self.trainer: Trainer | None = None
        self.losses: list[float] = []
        self.peak = 0.0
        self.seen: dict = {}

    def __call__(self, event) -> None:
        if isinstance(event, Step):
            self.losses.append(event.loss)
            self.peak = max(self.peak, event.peak_memory_gb * 1e9)
            self.seen = {**layer_facts(self.trainer.model), "mode": kernels.mode(),
                         "cached": quantized.cached_bytes()}


def layer_facts(model) -> dict:
    classes = {type(layer) for layer in model.layers}
    assert len(classes) == 1, classes
    cls = classes.pop()
    return {"class": cls.__name__, "call": cls.__call__.__qualname__}


def watched_run(recipe: recipe_mod.Recipe, stop: StopSignal | None = None) -> tuple[Watch,
                                                                                   Trainer]:
    import gc

    import mlx.core as mx

    gc.collect()                    # an earlier run's arrays must not count in this peak
    mx.clear_cache()
    watch = Watch()
    trainer = Trainer(recipe, [watch], stop)
    watch.trainer = trainer
    trainer.run()
    watch.trainer = None            # a Watch kept for its numbers holds no model
    return watch, trainer


def fresh_process_run(folder: Path, out: str) -> dict:
    """A run without checkpointing in a new process: what an unpatched run looks like."""
    code = ("import json, sys; from pathlib import Path; import test_train_scope as t; "
            f"w, tr = t.watched_run(t.deep_recipe(Path({str(folder)!r}), {out!r}, "
            "grad_checkpoint=False)); "
            "print(json.dumps({'losses': w.losses, 'peak': w.peak, **w.seen}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=HERE.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_checkpointing_halves_the_peak_and_keeps_the_losses(deep):
    """Checkpointing is really on when asked (a lower peak) and changes no number."""
    off = watched_run(deep_recipe(deep, "ckpt-off", grad_checkpoint=False))[0]
    on, trainer = watched_run(deep_recipe(deep, "ckpt-on", grad_checkpoint=True))
    assert on.losses == pytest.approx(off.losses, abs=1e-5)
    assert on.peak < 0.7 * off.peak, (on.peak, off.peak)     # measured: 12.1 MB vs 27.0 MB
    assert on.seen["class"] == "CheckpointedTransformerBlock"
    assert off.seen == {**on.seen, "class": "TransformerBlock",
                        "call": "TransformerBlock.__call__"}
    # The run ended: its layers have their own class back, the class itself is untouched.
    assert layer_facts(trainer.model) == {"class": "TransformerBlock",
                                          "call": "TransformerBlock.__call__"}


def test_a_second_run_in_the_process_is_a_fresh_process_run(deep):
    """grad_checkpoint true, then false, in one process: the second run's layer class, peak
    memory and losses are those of the same run in a new process."""
    first = watched_run(deep_recipe(deep, "two-1", grad_checkpoint=True))[0]
    second = watched_run(deep_recipe(deep, "two-2", grad_checkpoint=False))[0]
    fresh = fresh_process_run(deep, "two-fresh")
    assert (second.seen["class"], second.seen["call"]) == (fresh["class"], fresh["call"]) == \
        ("TransformerBlock", "TransformerBlock.__call__")
    assert second.losses == pytest.approx(fresh["losses"], abs=1e-6)
    # In-process and fresh peaks differ by ~2% (first-use allocations); checkpointing by 2x.
    assert second.peak == pytest.approx(fresh["peak"], rel=0.05), (second.peak, fresh["peak"])
    assert first.peak < 0.7 * fresh["peak"]


class Boom(Exception):
    pass


@pytest.mark.parametrize("ending", ["completed", "failed", "stopped"])
def test_kernel_mode_fast_exp_and_caches_are_restored(deep, ending):
    """However the run ends, the mode, the fast-exp switch, the dequantize cache's count and
    the layer classes are what they were before it."""
    recipe = deep_recipe(deep, f"restore-{ending}", method="qlora", kernels="reference",
                         grad_checkpoint=True)
    stop = StopSignal()
    watch = Watch()
    trainer = Trainer(recipe, [watch], stop)
    watch.trainer = trainer

    def ender(event):
        if isinstance(event, Step) and ending == "failed":
            raise Boom("a sink failed")
        if isinstance(event, Step) and ending == "stopped":
            stop.stop()

    trainer.sinks.append(ender)
    cached_before = quantized.cached_bytes()
    with kernels.using("stock"):
        if ending == "failed":
            with pytest.raises(Boom):
                trainer.run()
        else:
            assert trainer.run().reason == ending
        assert kernels.mode() == "stock"
    assert kernels.mode() == "auto" and not fastexp._ON.get()
    # During the run: its own mode, checkpointed layers, float copies of the 4-bit base.
    assert watch.seen["mode"] == "reference"
    assert watch.seen["class"] == "CheckpointedTransformerBlock"
    assert watch.seen["cached"] > cached_before
    assert quantized.cached_bytes() == cached_before
    assert not any("_dq" in m for _, m in trainer.model.named_modules())
    assert layer_facts(trainer.model)["class"] == "TransformerBlock"


def test_set_up_alone_is_undone_by_close(deep):
    """``plan`` and benches call ``setup`` and steps without ``run``: ``close`` ends the run."""
    trainer = Trainer(deep_recipe(deep, "setup-only", kernels="stock", grad_checkpoint=True),
                      [])
    trainer.setup()
    assert kernels.mode() == "stock"
    assert layer_facts(trainer.model)["class"] == "CheckpointedTransformerBlock"
    trainer.close()
    trainer.close()                 # twice is harmless
    assert kernels.mode() == "auto"
    assert layer_facts(trainer.model)["class"] == "TransformerBlock"
