"""Supervised fine-tuning: cross-entropy on the trained tokens of chat, completions or text."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from macft.errors import MacftError
from macft.models import hybrid, moe, patch
from macft.train.loss import mean_loss, sft_loss, trained_positions, weighted_sft_loss
from macft.train.objectives.base import DataBundle, Objective, StepResult

# train.compile "auto": the least number of micro-batches per distinct batch shape.
COMPILE_REUSE = 3


class Sft(Objective):
    name = "sft"

    def __init__(self, recipe, world):
        super().__init__(recipe, world)
        self.compiled_step = None
        self.routed = False             # an MoE model: router loss and shares per step

    def load_batches(self, tokenizer) -> DataBundle:
        from macft.data import (Batcher, check_answers, encode_rows, load_rows, make_sequences,
                                pad_id)

        spec, t = self.recipe.data, self.recipe.train
        rows = load_rows(spec.train)
        train_set = encode_rows(rows, tokenizer, spec, spec.train)
        check_answers(rows, train_set.format, spec, spec.train)
        if not train_set.examples:
            raise MacftError(f"{spec.train}: no usable examples after tokenization "
                             f"({train_set.stats.summary()})")
        pad = pad_id(tokenizer)
        train = Batcher(make_sequences(train_set.examples, spec.max_length, spec.packing),
                        t.batch_size, t.seed, pad_id=pad)
        valid = None
        stats = {"train": train_set.stats.summary()}
        if spec.valid:
            valid_set = encode_rows(load_rows(spec.valid), tokenizer, spec, spec.valid)
            if valid_set.examples:
                valid = Batcher(make_sequences(valid_set.examples, spec.max_length, False),
                                t.batch_size, t.seed, shuffle=False, pad_id=pad)
            stats["valid"] = valid_set.stats.summary()
        return DataBundle(train, valid, stats, [])

    def setup(self, model, run_dir, backend, total_steps) -> None:
        super().setup(model, run_dir, backend, total_steps)
        self.backend = backend
        self.routed = bool(moe.blocks(model))
        if self.recipe.moe.aux_loss_weight > 0 and not self.routed:
            raise MacftError("recipe: key 'moe.aux_loss_weight' is set but the model has no "
                             "mixture-of-experts layers")
        self.loss_and_grad = nn.value_and_grad(model, self._loss_fn(sft_loss))
        self.compiled_step = self._compiled_step() if self.compiles(total_steps) else None

    # ----- the compiled step ----------------------------------------------------------------
    def compiles(self, total_steps: int) -> bool:
        """Whether the SFT step runs as one compiled graph (``train.compile``).

        Inside a gradient transform MLX traces through ``mx.compile``d functions instead of
        fusing them, so the fast exp of ``kernels.fastexp`` is only fast when the whole step is
        compiled. "auto" compiles where that exp applies (the CPU, float32, kernels not stock)
        and where the graphs are reused: each batch shape is traced once (~0.4 of a step for
        SmolLM2 here, against ~15% saved on each step), so a run needs at least
        ``COMPILE_REUSE`` micro-batches per distinct shape of its data.
        """
        from macft.kernels import fastexp

        r = self.recipe
        if r.train.compile == "off":
            return False
        if r.train.compile == "on":
            return True
        if not (self.backend.device == "cpu" and self.backend.dtype == "float32"
                and r.kernels != "stock" and fastexp.available()):
            return False
        if hybrid.linear_attention_layers(self.model):
            return False                # the traced recurrence is unrolled (models.hybrid)
        shapes = len(self.data.train.widths())
        return total_steps * r.train.grad_accum >= COMPILE_REUSE * shapes

    def _compiled_step(self):
        """(inputs, targets, weights, segments or None, denominator) -> (loss, grads), compiled
        once per batch shape. The model's and the random generator's state are the graph's
        inputs and outputs, so updates between steps and dropout are seen."""
        from macft.kernels import fastexp
        from macft.models import quantized

        model = self.model
        if self.backend.device == "cpu":        # float copies of quantized bases: made now
            quantized.warm(model, getattr(mx, self.backend.dtype))
        state = [model.state, mx.random.state]
        grad_fn = nn.value_and_grad(model, self._loss_fn(weighted_sft_loss))

        def plain(inputs, targets, weights, denominator, *routing):
            with fastexp.enabled(), quantized.frozen_caches():
                return grad_fn(model, inputs, targets, weights, denominator, *routing)

        def packed(inputs, targets, weights, segments, denominator, *routing):
            with patch.segments(segments), fastexp.enabled(), quantized.frozen_caches():
                return grad_fn(model, inputs, targets, weights, denominator, *routing)

        plain_c = mx.compile(plain, inputs=state, outputs=state)
        packed_c = mx.compile(packed, inputs=state, outputs=state)

        def step(inputs, targets, weights, segments, denominator, *routing):
            d = mx.array(denominator, dtype=mx.float32)
            if segments is None:
                return plain_c(inputs, targets, weights, d, *routing)
            return packed_c(inputs, targets, weights, segments, d, *routing)
        return step

    def _loss_fn(self, loss_fn):
        """The step's loss: on an MoE model it also returns the routing (aux, shares) and adds
        the router's balance loss times ``moe.aux_loss_weight``."""
        if not self.routed:
            return loss_fn
        return moe.with_router_loss(loss_fn, self.recipe.moe.aux_loss_weight)

    def _routing_args(self, b, real_total: float) -> tuple:
        if not self.routed:
            return ()
        real = b.real()
        return mx.array(real), mx.array(float(real.sum()) / real_total, dtype=mx.float32)

    # ----- one step, validation -------------------------------------------------------------
    def step(self, batches) -> StepResult:
        denom = float(sum(b.mask.sum() for b in batches)) or 1.0
        real_total = float(sum(b.tokens for b in batches)) or 1.0
        total_loss = 0.0
        grads = None
        routing = []
        for b in batches:
            if self.world.active:
                b = shard_rows(b, self.world.share(b.inputs.shape[0]))
            if not b.mask.any():
                continue
            loss, g = self._loss_and_grad(b, denom, real_total)
            if self.routed:
                loss, (aux, shares) = loss
                routing.append((float(b.lengths.sum()), aux, shares))
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(loss, grads, [r[1:] for r in routing[-1:]])
            total_loss += loss.item()
        return StepResult(self.world.total(total_loss), sum(b.tokens for b in batches), grads,
                          _routing_metrics(routing))

    def _loss_and_grad(self, b, denom: float, real_total: float):
        seg = mx.array(b.segments) if b.segments is not None else None
        routing = self._routing_args(b, real_total)
        if self.compiled_step is not None:
            return self.compiled_step(mx.array(b.inputs), mx.array(b.targets),
                                      mx.array(b.mask, dtype=mx.float32), seg, denom, *routing)
        with patch.segments(seg):
            return self.loss_and_grad(self.model, mx.array(b.inputs), mx.array(b.targets),
                                      trained_positions(b.mask), denom, *routing)

    def validate(self) -> tuple[float, dict] | None:
        val = self.validation_loss()
        return None if val is None else (val, {})

    def validation_loss(self) -> float | None:
        """Mean token loss over (``train.eval_batches`` batches of) the validation split."""
        if self.data.valid is None:
            return None
        share = self.eval_share(self.data.valid)
        count = 0

        def counted():
            nonlocal count
            for b in share.iter_eval():
                count += int(b.mask.sum())
                yield b

        self.model.eval()
        try:
            mean = mean_loss(self.model, counted()) or 0.0
        finally:
            self.model.train()
        total, count = self.world.totals([mean * count, count])
        return total / count if count else None


def _routing_metrics(routing: list) -> dict:
    """This rank's routing over a step's micro-batches, weighted by their real tokens."""
    if not routing:
        return {}
    total = sum(n for n, _, _ in routing)
    aux = sum(n * a.item() for n, a, _ in routing) / total
    shares = sum(n * np.array(s) for n, _, s in routing) / total
    return moe.share_metrics(aux, shares)


def shard_rows(b, rows: np.ndarray):
    """The rows ``rows`` of batch ``b`` (the same padded length, so the numbers match)."""
    seg = b.segments[rows] if b.segments is not None else None
    inputs = b.inputs[rows]
    lengths = b.lengths[rows] if b.lengths is not None else None
    return dataclasses.replace(b, inputs=inputs, targets=b.targets[rows], mask=b.mask[rows],
                               segments=seg, tokens=b.tokens, lengths=lengths)
