"""A toy objective for tests/test_objectives.py: half the SFT loss, plus a step counter.

It exists to show what adding an objective takes: this file and one line in the registry.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macft.train.loss import sft_loss, trained_positions
from macft.train.objectives.base import Objective, StepResult
from macft.train.objectives.sft import Sft


class HalfSft(Objective):
    name = "half-sft"
    step_metrics = ("toy_steps",)

    def load_batches(self, tokenizer):
        return Sft(self.recipe, self.world).load_batches(tokenizer)   # chat data, as SFT

    def setup(self, model, run_dir, backend, total_steps):
        super().setup(model, run_dir, backend, total_steps)
        self.steps = 0
        self.loss_and_grad = nn.value_and_grad(
            model, lambda m, x, y, pos, d: 0.5 * sft_loss(m, x, y, pos, d))

    def step(self, batches):
        denom = float(sum(b.mask.sum() for b in batches)) or 1.0
        total, grads = 0.0, None
        for b in batches:
            loss, g = self.loss_and_grad(self.model, mx.array(b.inputs), mx.array(b.targets),
                                         trained_positions(b.mask), denom)
            grads = g if grads is None else {k: grads[k] + g[k] for k in g}
            mx.eval(loss, grads)
            total += loss.item()
        self.steps += 1
        return StepResult(total, sum(b.tokens for b in batches), grads,
                          {"toy_steps": float(self.steps)})

    def validate(self):
        return None
