"""What a training objective provides to the loop: its data, its step, its validation.

The loop (``train/loop.py``) owns steps, accumulation over micro-batches, clipping, the
schedule, evaluation and checkpoint cadence, the stop signal and the events. An objective owns
what differs between SFT, DPO and the rest: which batches it trains on, how a step's loss,
metrics and gradients are computed from them, and how validation is measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from macft.errors import MacftError
from macft.events import EVALUATING, Progress
from macft.recipe import Recipe

# A validation pass reports its batches at most this often (and always its first and last):
# often enough for the TUI, which reads the events every 0.25 s, not a line per batch.
EVAL_PROGRESS_SECONDS = 0.5


@dataclass
class DataBundle:
    train: object                    # a batcher: batch(i), iter_eval(), longest(rows), ...
    valid: object | None
    stats: dict
    sample_prompts: list[list[int]]


@dataclass
class StepResult:
    loss: float                      # the step's loss, summed over ranks
    tokens: int                      # input tokens of the step's micro-batches
    grads: object | None             # this rank's gradient tree (None: nothing trained here)
    metrics: dict                    # objective-specific numbers for the Step event


class Objective:
    """One training objective. Subclasses are registered in ``objectives.OBJECTIVES``.

    Life cycle: ``load_data`` (after the model's tokenizer is known), ``setup`` once when the
    model carries its adapters, then ``step`` every optimizer step and ``validate`` at each
    evaluation. ``step_metrics`` and ``eval_metrics`` name what it adds to Step and Eval events.
    """

    name = ""
    step_metrics: tuple[str, ...] = ()
    eval_metrics: tuple[str, ...] = ()

    def __init__(self, recipe: Recipe, world):
        self.recipe = recipe
        self.world = world
        self.model = None
        self.data: DataBundle | None = None
        self.emit = _ignore     # the loop passes its own: progress of a long set-up

    # ----- data ---------------------------------------------------------------------------
    def load_data(self, tokenizer) -> DataBundle:
        """Batches for this objective, plus the recipe's sample prompts rendered for the model."""
        from macft.generation import chat_prompt

        spec = self.recipe.data
        if not spec.train:
            raise MacftError("recipe: key 'data.train' is required")
        self.data = self.load_batches(tokenizer)
        self.data.sample_prompts = [chat_prompt(tokenizer, p, spec.system_prompt)
                                    for p in self.recipe.train.sample_prompts]
        return self.data

    def load_batches(self, tokenizer) -> DataBundle:
        raise NotImplementedError

    # ----- training -----------------------------------------------------------------------
    def setup(self, model, run_dir: Path, backend, total_steps: int) -> None:
        """Once per run, after the adapters are in place and before the first step."""
        self.model = model

    def step(self, batches: list) -> StepResult:
        """Loss, metrics and (accumulated, unreduced) gradients of one optimizer step."""
        raise NotImplementedError

    def drain_events(self) -> list:
        """Events the last step produced for the loop to emit (GRPO's samples); most: none."""
        return []

    def validate(self) -> tuple[float, dict] | None:
        """(validation loss, metrics) over the validation split; None without one."""
        raise NotImplementedError

    def eval_share(self, batcher):
        """This rank's batches of a validation pass over ``batcher`` (``train.eval_batches`` of
        them); the pass is reported to the loop as ``Progress(EVALUATING, done, total)``."""
        from macft.train import distributed

        return distributed.EvalShare(batcher, self.world, self.recipe.train.eval_batches,
                                     progress=self._eval_progress())

    def _eval_progress(self):
        last = float("-inf")

        def report(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done in (0, total) or now - last >= EVAL_PROGRESS_SECONDS:
                last = now
                self.emit(Progress(EVALUATING, done, total))
        return report


def _ignore(event) -> None:
    """The default ``Objective.emit`` (an objective used outside the loop, e.g. by plan)."""
