"""THE training loop. It never prints: progress goes out as events to sinks.

``train`` is used by ``macft run`` (console sink) and by the TUI (a message-posting sink); both
pass a ``StopSignal`` that the loop checks every step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from macft import recipe as recipe_mod
from macft import runtime
from macft.errors import MacftError
from macft.general.guard import ForgettingGuard
from macft.kernels import verify
from macft.events import (Checkpoint, Eval, Failed, Finished, MetricsFile, RunStarted, Sample,
                          Step, StopSignal)
from macft.models import adapters, patch
from macft.models.load import Loaded, load_base
from macft.recipe import Recipe
from macft.train import checkpoint, distributed
from macft.train.scope import RunScope
from macft.train.loss import mean_loss, sft_loss, trained_positions, weighted_sft_loss
from macft.train.objectives import needs_reference, preference_loss, reference_logps

# Recipe keys that may change when a run is resumed (e.g. to train longer).
RESUMABLE_CHANGES = {"train.steps", "train.epochs", "train.patience", "train.eval_every",
                     "train.save_every", "train.sample_every", "output", "kernels"}


# train.compile "auto": the least number of micro-batches per distinct batch shape.
COMPILE_REUSE = 3


@dataclass
class DataBundle:
    train: object                    # data.Batcher
    valid: object | None
    stats: dict
    sample_prompts: list[list[int]]


def build_schedule(t, total_steps: int):
    peak = t.learning_rate
    end = peak * t.min_lr_ratio
    decay_steps = max(total_steps - t.warmup_steps, 1)
    if t.schedule == "cosine":
        main = optim.cosine_decay(peak, decay_steps, end)
    elif t.schedule == "linear":
        main = optim.linear_schedule(peak, end, decay_steps)
    else:
        main = lambda step: mx.array(peak, mx.float32)  # noqa: E731
    if t.warmup_steps > 0:
        warm = optim.linear_schedule(peak / max(t.warmup_steps, 1), peak, t.warmup_steps - 1) \
            if t.warmup_steps > 1 else (lambda step: mx.array(peak, mx.float32))
        return optim.join_schedules([warm, main], [t.warmup_steps])
    return main


def load_pairs(recipe: Recipe, tokenizer) -> DataBundle:
    from macft.data import load_rows
    from macft.data.preference import PairBatcher, encode_pairs

    spec = recipe.data
    pad = pad_id(tokenizer)
    train_set = encode_pairs(load_rows(spec.train), tokenizer, spec, spec.train)
    train = PairBatcher(train_set.pairs, recipe.train.batch_size, recipe.train.seed, pad_id=pad)
    stats = {"train": train_set.stats.summary().replace("examples", "pairs")}
    valid = None
    if spec.valid:
        valid_set = encode_pairs(load_rows(spec.valid), tokenizer, spec, spec.valid)
        if valid_set.pairs:
            valid = PairBatcher(valid_set.pairs, recipe.train.batch_size, recipe.train.seed,
                                shuffle=False, pad_id=pad)
        stats["valid"] = valid_set.stats.summary().replace("examples", "pairs")
    return DataBundle(train, valid, stats, [])


def load_sequences(recipe: Recipe, tokenizer) -> DataBundle:
    from macft.data import Batcher, encode_rows, load_rows, make_sequences

    spec = recipe.data
    train_set = encode_rows(load_rows(spec.train), tokenizer, spec, spec.train)
    if not train_set.examples:
        raise MacftError(f"{spec.train}: no usable examples after tokenization "
                         f"({train_set.stats.summary()})")
    pad = pad_id(tokenizer)
    train = Batcher(make_sequences(train_set.examples, spec.max_length, spec.packing),
                    recipe.train.batch_size, recipe.train.seed, pad_id=pad)
    valid = None
    stats = {"train": train_set.stats.summary()}
    if spec.valid:
        valid_set = encode_rows(load_rows(spec.valid), tokenizer, spec, spec.valid)
        if valid_set.examples:
            valid = Batcher(make_sequences(valid_set.examples, spec.max_length, False),
                            recipe.train.batch_size, recipe.train.seed, shuffle=False,
                            pad_id=pad)
        stats["valid"] = valid_set.stats.summary()
    return DataBundle(train, valid, stats, [])


def load_data(recipe: Recipe, tokenizer) -> DataBundle:
    """Batches for the recipe's objective, plus its sample prompts rendered for the model."""
    from macft.generation import chat_prompt

    spec = recipe.data
    if not spec.train:
        raise MacftError("recipe: key 'data.train' is required")
    loader = load_sequences if recipe.objective == "sft" else load_pairs
    bundle = loader(recipe, tokenizer)
    bundle.sample_prompts = [chat_prompt(tokenizer, p, spec.system_prompt)
                             for p in recipe.train.sample_prompts]
    return bundle


def pad_id(tokenizer) -> int:
    tok = getattr(tokenizer, "_tokenizer", tokenizer)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    return 0


def total_steps(recipe: Recipe, batches_per_epoch: int) -> int:
    t = recipe.train
    if t.steps > 0:
        return t.steps
    return max(1, math.ceil(t.epochs * batches_per_epoch / t.grad_accum))


def _check_resume_recipe(run_dir: Path, recipe: Recipe) -> None:
    saved_path = run_dir / "recipe.yaml"
    if not saved_path.exists():
        return
    saved = recipe_mod.load(saved_path)
    old = dict(recipe_mod.describe_values(saved))
    new = dict(recipe_mod.describe_values(recipe))
    for key in sorted(old):
        if key not in RESUMABLE_CHANGES and old[key] != new.get(key):
            raise MacftError(f"{run_dir} holds a run with a different recipe (key '{key}': "
                             f"{old[key]!r} there, {new.get(key)!r} now); choose another "
                             f"output folder or delete it")


class Trainer:
    """State of one run; ``run()`` is the loop."""

    def __init__(self, recipe: Recipe, sinks: list, stop: StopSignal | None = None,
                 loaded: Loaded | None = None):
        self.recipe = recipe
        self.run_dir = recipe.run_dir
        self.sinks = list(sinks)
        self.stop = stop or StopSignal()
        self.loaded = loaded
        self.step = 0
        self.best_val: float | None = None
        self.best_step = 0
        self.bad_evals = 0
        self.elapsed_before = 0.0
        self.step_metrics: dict = {}
        self.world = distributed.world()
        self.last_checkpoint: str | None = None
        self.scope: RunScope | None = None

    def emit(self, event) -> None:
        if not self.world.main:         # one display, one metrics file: rank 0's
            return
        for sink in self.sinks:
            sink(event)

    # ----- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        r = self.recipe
        mx.reset_peak_memory()          # the peak_memory_gb of Step events is this run's
        main = self.world.main          # only rank 0 touches the run folder (see distributed)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoint.latest(self.run_dir) if main else None
        if ckpt is not None:
            _check_resume_recipe(self.run_dir, r)
        if main:
            recipe_mod.dump(r, self.run_dir / "recipe.yaml")
            self.sinks.append(MetricsFile(self.run_dir / "metrics.jsonl"))
        self.backend = runtime.backend(r.model.dtype)
        self.scope = RunScope(r.kernels)    # undone by close(), which run() always calls
        self.kernel_checks = verify.for_run(r.kernels)     # device kernels: checked, cached
        if self.loaded is None:
            self.loaded = load_base(r.model.path, r.model.revision, r.model.dtype)
        self.model = self.loaded.model
        self.scope.own_caches(self.model)
        self.tokenizer = self.loaded.tokenizer
        self.data = load_data(r, self.tokenizer)
        if self.world.active and self.data.train.batch_size < self.world.size:
            raise MacftError(f"train.batch_size ({self.data.train.batch_size}) is smaller than "
                             f"the number of ranks ({self.world.size}): each rank takes a share "
                             "of every batch")
        self.adapter_cfg = adapters.prepare(self.model, r, r.train.seed)
        self.adapter_cfg["model"] = str(self.loaded.source)
        if r.init_adapter and ckpt is None and main:
            adapters.load_adapter_weights(self.model, Path(r.init_adapter))
        self.reference = self._reference() if needs_reference(r.objective) else None
        if r.train.grad_checkpoint:
            self.scope.checkpoint(self.model.layers)
        self.total = total_steps(r, self.data.train.batches_per_epoch)
        self.schedule = build_schedule(r.train, self.total)
        self.optimizer = optim.AdamW(learning_rate=self.schedule,
                                     weight_decay=r.train.weight_decay)
        self.optimizer.init(self.model.trainable_parameters())
        if r.objective == "sft":
            self.loss_and_grad = nn.value_and_grad(self.model, sft_loss)
        else:
            self.loss_and_grad = nn.value_and_grad(self.model, self._preference_loss)
        self.compiled_step = self._compiled_step() if self.compiles() else None
        self.forgetting = ForgettingGuard.from_recipe(r, self.model, self.tokenizer)
        if ckpt is not None:
            state = checkpoint.restore(ckpt, self.model, self.optimizer)
            self.step = int(state["step"])
            self.best_val = state.get("best_val")
            self.best_step = state.get("best_step", 0)
            self.bad_evals = state.get("bad_evals", 0)
            self.elapsed_before = state.get("elapsed", 0.0)
            self.last_checkpoint = str(ckpt)
        if self.world.active:
            self._sync_from_main()
        self.model.train()

    def _sync_from_main(self) -> None:
        """Every rank starts from rank 0's weights, optimizer state and counters."""
        params = self.world.broadcast(self.model.trainable_parameters())
        state = self.world.broadcast(self.optimizer.state)
        has_best = self.best_val is not None
        counters = self.world.broadcast(mx.array(
            [self.step, self.best_step, self.bad_evals, has_best,
             self.best_val if has_best else 0.0, self.elapsed_before], dtype=mx.float32))
        mx.eval(params, state, counters)
        self.model.update(params)
        self.optimizer.state = state
        # Rank 0 takes the float32 round trip too, so best-value comparisons agree everywhere.
        step, best_step, bad, has_best, best_val, elapsed = counters.tolist()
        self.step, self.best_step, self.bad_evals = int(step), int(best_step), int(bad)
        self.best_val = best_val if has_best else None
        self.elapsed_before = elapsed
        if not self.world.main and self.step:
            self.last_checkpoint = self._checkpoint_on_main()

    def _checkpoint_on_main(self) -> str:
        return f"step {self.step}, in rank 0's {self.run_dir}"

    # ----- preference objectives ---------------------------------------------------------------
    def _reference(self) -> dict:
        """Reference log-probs of every pair, computed once (model as the stage starts) and
        kept in the run folder so that a resumed run uses the same ones."""
        path = self.run_dir / "reference_logps.safetensors"
        splits = [(s, b) for s, b in (("train", self.data.train), ("valid", self.data.valid))
                  if b is not None]
        if self.world.agree(path.exists()):     # rank 0's folder decides
            if self.world.main:
                ref = {k: np.array(v) for k, v in mx.load(str(path)).items()}
            else:                               # rank 0 sends its values; zeros add nothing
                ref = {f"{s}_{side}": np.zeros(b.n, np.float32) for s, b in splits
                       for side in ("chosen", "rejected")}
            return self.world.sum_arrays(ref)
        if self.world.active:       # the reference is rank 0's model as the stage starts
            self.model.update(self.world.broadcast(self.model.trainable_parameters()))
        ref = {}
        for split, batcher in splits:   # each rank computes its batches, zeros elsewhere
            ref[f"{split}_chosen"], ref[f"{split}_rejected"] = reference_logps(
                self.model, distributed.EvalShare(batcher, self.world))
        ref = self.world.sum_arrays(ref)
        if self.world.main:
            tmp = path.with_name(f".{path.stem}.tmp.safetensors")
            mx.save_safetensors(str(tmp), {k: mx.array(v) for k, v in ref.items()})
            os.replace(tmp, path)
        return ref

    def _ref_for(self, split: str, index: np.ndarray):
        if self.reference is None:
            return None
        return (mx.array(self.reference[f"{split}_chosen"][index]),
                mx.array(self.reference[f"{split}_rejected"][index]))

    def _preference_loss(self, model, pair_batch, ref, weight):
        return preference_loss(model, pair_batch.batch, ref, self.recipe.objective,
                               self.recipe.preference, weight)

    def preference_step(self, batches) -> tuple[float, dict, dict]:
        total_pairs = sum(len(pb.index) for pb in batches)
        grads, loss_sum, metrics = None, 0.0, {}
        for pb in batches:
            if self.world.active:
                pb = shard_pairs(pb, self.world.share(len(pb.index)))
                if len(pb.index) == 0:
                    continue
            weight = len(pb.index) / total_pairs
            (loss, m), g = self.loss_and_grad(self.model, pb, self._ref_for("train", pb.index),
                                              weight)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(loss, grads, m)
            loss_sum += loss.item()
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v.item() * weight
        if self.world.active:       # every rank holds pairs (batch_size >= ranks): same keys
            loss_sum, *values = self.world.totals([loss_sum, *metrics.values()])
            metrics = dict(zip(metrics, values))
        return loss_sum, metrics, grads

    def preference_validation(self) -> tuple[float, dict] | None:
        valid = self.data.valid
        if valid is None:
            return None
        self.model.eval()
        totals: dict = {}
        n = 0
        try:
            share = distributed.EvalShare(valid, self.world, self.recipe.train.eval_batches)
            for pb in share.iter_eval():
                loss, m = self._valid_pair_loss(pb)
                for k, v in {"loss": loss, **m}.items():
                    totals[k] = totals.get(k, 0.0) + v.item() * len(pb.index)
                n += len(pb.index)
            if not totals:          # no batch for this rank: the names only (nothing evaluated)
                loss, m = self._valid_pair_loss(next(valid.iter_eval()))
                totals = dict.fromkeys(["loss", *m], 0.0)
        finally:
            self.model.train()
        *sums, n = self.world.totals([*totals.values(), n])
        means = {k: v / n for k, v in zip(totals, sums)}
        return means.pop("loss"), means

    def _valid_pair_loss(self, pb):
        return preference_loss(self.model, pb.batch, self._ref_for("valid", pb.index),
                               self.recipe.objective, self.recipe.preference)

    # ----- the compiled SFT step ---------------------------------------------------------------
    def compiles(self) -> bool:
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
        if r.objective != "sft" or r.train.compile == "off":
            return False
        if r.train.compile == "on":
            return True
        if not (self.backend.device == "cpu" and self.backend.dtype == "float32"
                and r.kernels != "stock" and fastexp.available()):
            return False
        shapes = len(self.data.train.widths())
        return self.total * r.train.grad_accum >= COMPILE_REUSE * shapes

    def _compiled_step(self):
        """(inputs, targets, weights, segments or None, denominator) -> (loss, grads), compiled
        once per batch shape. The model's and the random generator's state are the graph's
        inputs and outputs, so updates between steps and dropout are seen."""
        from macft.kernels import fastexp
        from macft.models import quantized

        if self.backend.device == "cpu":        # float copies of quantized bases: made now
            quantized.warm(self.model, getattr(mx, self.backend.dtype))
        state = [self.model.state, mx.random.state]
        grad_fn = nn.value_and_grad(self.model, weighted_sft_loss)

        def plain(inputs, targets, weights, denominator):
            with fastexp.enabled(), quantized.frozen_caches():
                return grad_fn(self.model, inputs, targets, weights, denominator)

        def packed(inputs, targets, weights, segments, denominator):
            with patch.segments(segments), fastexp.enabled(), quantized.frozen_caches():
                return grad_fn(self.model, inputs, targets, weights, denominator)

        plain_c = mx.compile(plain, inputs=state, outputs=state)
        packed_c = mx.compile(packed, inputs=state, outputs=state)

        def step(inputs, targets, weights, segments, denominator):
            d = mx.array(denominator, dtype=mx.float32)
            if segments is None:
                return plain_c(inputs, targets, weights, d)
            return packed_c(inputs, targets, weights, segments, d)
        return step

    # ----- one optimizer step ---------------------------------------------------------------
    def micro_batches(self, step: int) -> list:
        ga = self.recipe.train.grad_accum
        return [self.data.train.batch(step * ga + k) for k in range(ga)]

    def train_step(self, step: int) -> tuple[float, int]:
        mx.random.seed(self.recipe.train.seed * 1_000_003 + step)  # dropout: resumable
        batches = self.micro_batches(step)
        self.step_metrics = {}
        if self.recipe.objective != "sft":
            total_loss, self.step_metrics, grads = self.preference_step(batches)
            self._apply(grads)
            return total_loss, sum(pb.batch.tokens for pb in batches)
        denom = float(sum(b.mask.sum() for b in batches)) or 1.0
        total_loss = 0.0
        grads = None
        for b in batches:
            if self.world.active:
                b = shard_rows(b, self.world.share(b.inputs.shape[0]))
            if not b.mask.any():
                continue
            seg = mx.array(b.segments) if b.segments is not None else None
            if self.compiled_step is not None:
                loss, g = self.compiled_step(mx.array(b.inputs), mx.array(b.targets),
                                             mx.array(b.mask, dtype=mx.float32), seg, denom)
            else:
                with patch.segments(seg):
                    loss, g = self.loss_and_grad(self.model, mx.array(b.inputs),
                                                 mx.array(b.targets), trained_positions(b.mask),
                                                 denom)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(loss, grads)
            total_loss += loss.item()
        self._apply(grads)
        return self.world.total(total_loss), sum(b.tokens for b in batches)

    def _apply(self, grads) -> None:
        if self.world.active:
            # A rank whose share held no trained token still joins the sum.
            if grads is None:
                grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
            grads = self.world.all_sum(grads)
        if grads is None:
            return
        if self.recipe.train.max_grad_norm > 0:
            grads, _ = optim.clip_grad_norm(grads, self.recipe.train.max_grad_norm)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.parameters(), self.optimizer.state)

    # ----- evaluation -------------------------------------------------------------------------
    def validation_loss(self) -> float | None:
        if self.data.valid is None:
            return None
        share = distributed.EvalShare(self.data.valid, self.world, self.recipe.train.eval_batches)
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

    def evaluate(self) -> bool:
        """Validation loss, best-adapter bookkeeping; True when early stopping triggers."""
        metrics = {}
        if self.recipe.objective == "sft":
            val = self.validation_loss()
        else:
            result = self.preference_validation()
            val, metrics = result if result else (None, {})
        if val is None:
            return False
        forgot = self.forgetting is not None and self.forgetting.check(self.model, self.step,
                                                                       metrics)
        improved = (self.best_val is None or val < self.best_val) and not forgot
        if improved:
            self.best_val, self.best_step, self.bad_evals = val, self.step, 0
            if self.world.main:
                adapters.save_adapters(self.model, self.run_dir / "best", self.adapter_cfg)
        else:
            self.bad_evals += 1
        self.emit(Eval(self.step, val, self.best_val, improved, metrics))
        if improved:
            self.emit(Checkpoint(self.step, str(self.run_dir / "best"), best=True))
        patience = self.recipe.train.patience
        return (patience > 0 and self.bad_evals >= patience) or (forgot and
                                                                 self.forgetting.stops)

    def samples(self) -> None:
        if not self.data.sample_prompts or not self.world.main:
            return
        from macft.generation import greedy

        texts = greedy(self.model, self.tokenizer, self.data.sample_prompts,
                       self.recipe.train.sample_max_tokens)
        for prompt, text in zip(self.recipe.train.sample_prompts, texts):
            self.emit(Sample(self.step, prompt, text))

    def save(self, elapsed: float) -> Path | None:
        if not self.world.main:
            self.last_checkpoint = self._checkpoint_on_main()
            return None
        state = {"best_val": self.best_val, "best_step": self.best_step,
                 "bad_evals": self.bad_evals, "elapsed": elapsed, "total_steps": self.total}
        path = checkpoint.save(self.run_dir, self.step, self.model, self.optimizer, state,
                               self.adapter_cfg)
        self.last_checkpoint = str(path)
        self.emit(Checkpoint(self.step, str(path)))
        return path

    def _stopping(self) -> bool:
        """A stop asked on any rank stops every rank at the same step."""
        if not self.world.active:
            return self.stop.stopped
        return self.world.total(1.0 if self.stop.stopped else 0.0) > 0

    # ----- the loop ---------------------------------------------------------------------------
    def close(self) -> None:
        """Undo what set-up changed in the process (see ``scope``); for callers of ``setup``."""
        if self.scope is not None:
            self.scope.close()

    def run(self) -> Finished:
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> Finished:
        try:
            self.setup()
        except MacftError as exc:
            self.emit(Failed(0, str(exc)))
            raise
        except RuntimeError as exc:     # a rank that failed to start ends the others here
            if not (self.world.active and distributed.is_peer_loss(exc)):
                raise
            raise distributed.peer_lost(self.world, exc, self.last_checkpoint) from None
        r = self.recipe.train
        trainable, total_params = adapters.count_parameters(self.model)
        self.emit(RunStarted(
            run_dir=str(self.run_dir), model=self.recipe.model.path, method=self.recipe.method,
            device=self.backend.device, dtype=self.backend.dtype, blas=self.backend.blas,
            total_steps=self.total, start_step=self.step, trainable_params=trainable,
            total_params=total_params, train_examples=len(self.data.train.sequences),
            data_stats=self.data.stats))
        for event in self.kernel_checks:
            self.emit(event)
        kill_after = int(os.environ.get("MACFT_DEBUG_KILL_AFTER_STEP", "0") or 0)
        start = time.monotonic()
        reason = "completed"
        tokens_window: list[tuple[float, int]] = []
        watchdog = distributed.Watchdog(self.world,
                                        describe=lambda: self.last_checkpoint or "none yet")
        watchdog.start()
        try:
            while self.step < self.total:
                self.stop.wait_if_paused()
                if self._stopping():
                    reason = "stopped"
                    break
                t0 = time.monotonic()
                loss, tokens = self.train_step(self.step)
                watchdog.beat()
                self.step += 1
                dt = time.monotonic() - t0
                tokens_window = (tokens_window + [(dt, tokens)])[-20:]
                tps = sum(n for _, n in tokens_window) / max(sum(d for d, _ in tokens_window),
                                                             1e-9)
                elapsed = self.elapsed_before + time.monotonic() - start
                per_step = sum(d for d, _ in tokens_window) / len(tokens_window)
                self.emit(Step(
                    step=self.step, total_steps=self.total, loss=loss,
                    learning_rate=float(self.optimizer.learning_rate.item()), tokens=tokens,
                    tokens_per_sec=tps, elapsed=elapsed, eta=per_step * (self.total - self.step),
                    peak_memory_gb=mx.get_peak_memory() / 1e9,
                    epoch=self.step * r.grad_accum / self.data.train.batches_per_epoch,
                    metrics=self.step_metrics))
                last = self.step == self.total
                stop_early = False
                if (r.eval_every and self.step % r.eval_every == 0) or last:
                    stop_early = self.evaluate()
                if r.sample_every and (self.step % r.sample_every == 0 or last):
                    self.samples()
                if (r.save_every and self.step % r.save_every == 0) or last or stop_early \
                        or self.stop.take_checkpoint_request():
                    self.save(self.elapsed_before + time.monotonic() - start)
                watchdog.beat()
                if kill_after and self.step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a power cut
                if stop_early:
                    reason = "early_stopping"
                    break
            elapsed = self.elapsed_before + time.monotonic() - start
            if reason == "stopped":
                self.save(elapsed)
        except MacftError as exc:
            self.emit(Failed(self.step, str(exc)))
            raise
        except RuntimeError as exc:
            if not (self.world.active and distributed.is_peer_loss(exc)):
                self.emit(Failed(self.step, f"{type(exc).__name__}: {exc}"))
                raise
            error = distributed.peer_lost(self.world, exc, self.last_checkpoint)
            self.emit(Failed(self.step, str(error)))
            raise error from None
        except Exception as exc:
            self.emit(Failed(self.step, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            watchdog.stop()
        if not self.world.main:
            return Finished(self.step, reason, self.best_val, "", elapsed)
        final = adapters.save_adapters(self.model, self.run_dir, self.adapter_cfg)
        done = Finished(self.step, reason, self.best_val, str(final), elapsed)
        if reason != "stopped":
            checkpoint._write_text(self.run_dir / "finished.json",
                                   json.dumps({"step": self.step, "reason": reason}))
        self.emit(done)
        return done


def shard_rows(b, rows: np.ndarray):
    """The rows ``rows`` of batch ``b`` (the same padded length, so the numbers match)."""
    seg = b.segments[rows] if b.segments is not None else None
    inputs = b.inputs[rows]
    return dataclasses.replace(b, inputs=inputs, targets=b.targets[rows], mask=b.mask[rows],
                               segments=seg, tokens=b.tokens)


def shard_pairs(pb, pairs: np.ndarray):
    """The pairs ``pairs`` of a preference batch (its rows: chosen block, then rejected)."""
    n = len(pb.index)
    rows = np.concatenate([pairs, pairs + n])
    return dataclasses.replace(pb, batch=shard_rows(pb.batch, rows), index=pb.index[pairs])


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "finished.json").exists()


def run_stages(recipe: Recipe, sinks: list, stop: StopSignal | None = None) -> Finished:
    """Run a staged recipe (e.g. sft then dpo): each stage in its own sub-folder, starting
    from the previous stage's adapter; finished stages are skipped, so a killed run resumes
    inside the stage where it stopped."""
    from macft.models.load import adapter_dir

    run_dir = recipe.run_dir
    main = distributed.world().main     # rank 0's folder says which stages are done
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if any(run_dir.glob("stage-*")):
            _check_resume_recipe(run_dir, recipe)
        recipe_mod.dump(recipe, run_dir / "recipe.yaml")
    previous = recipe.init_adapter
    done = None
    for stage in recipe_mod.stage_recipes(recipe):
        if previous:
            stage = dataclasses.replace(stage, init_adapter=str(previous))
        if not distributed.world().agree(is_finished(stage.run_dir)):
            done = Trainer(stage, sinks, stop).run()
            if done.reason == "stopped":
                return done
        # Other ranks take the adapter from rank 0 (Trainer._sync_from_main), not from a path.
        previous = adapter_dir(stage.run_dir) if main else stage.run_dir
    if main:
        checkpoint._write_text(run_dir / "finished.json",
                               json.dumps({"stages": len(recipe.stages)}))
    if done is None:
        done = Finished(0, "completed", None, str(previous), 0.0)
    return done


def train(recipe: Recipe, sinks: list, stop: StopSignal | None = None,
          loaded: Loaded | None = None) -> Finished:
    if recipe.stages:
        return run_stages(recipe, sinks, stop)
    return Trainer(recipe, sinks, stop, loaded).run()
