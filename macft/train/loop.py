"""THE training loop. It never prints: progress goes out as events to sinks.

``train`` is used by ``macft run`` (console sink) and by the TUI (a message-posting sink); both
pass a ``StopSignal`` that the loop checks every step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from macft import env, finite, recipe as recipe_mod, runs
from macft import runtime
from macft.errors import MacftError, NonFiniteError
from macft.lock import run_lock
from macft.general.guard import ForgettingGuard
from macft.kernels import verify
from macft.events import (Checkpoint, Eval, Failed, Finished, MetricsFile, Notice, RunStarted,
                          Sample, Step, StopSignal)
from macft.models import adapters, hybrid, moe
from macft.models.load import Loaded, load_spec
from macft.recipe import Recipe
from macft.train import checkpoint, distributed, objectives, resume
from macft.train.objectives.base import DataBundle  # noqa: F401  (re-exported)
from macft.train.scope import RunScope

# Recipe keys that may change when a run is resumed (e.g. to train longer).
RESUMABLE_CHANGES = resume.SAFE_CHANGES



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


def total_steps(recipe: Recipe, batches_per_epoch: int) -> int:
    t = recipe.train
    if t.steps > 0:
        return t.steps
    return max(1, math.ceil(t.epochs * batches_per_epoch / t.grad_accum))


def evals_left(step: int, total: int, every: int) -> int:
    """Validation passes from ``step`` on (the one at ``step`` itself included: the Step event
    is sent before it): every ``every`` steps and at the last."""
    if step > total:
        return 0
    periodic = total // every - (step - 1) // every if every else 0
    return periodic + (0 if every and total % every == 0 else 1)


def _check_resume(run_dir: Path, recipe: Recipe, allow: bool) -> bool:
    """A resume must match what the run started with (``train.resume``); a folder written
    before runs recorded that is compared with its recipe.yaml. True: the record is renewed."""
    if resume.read_record(run_dir) is None:
        _check_resume_recipe(run_dir, recipe)
        return True
    return resume.check(run_dir, recipe, allow)


def _check_resume_recipe(run_dir: Path, recipe: Recipe) -> None:
    saved_path = runs.recipe_path(run_dir)
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


def _debug_signal(step: int) -> None:
    """Test hook ``MACFT_DEBUG_SIGNAL_AFTER_STEP=STEP:SIGNAL``: a real signal, sent to this
    process after that step, goes through the CLI's handler like one from outside."""
    when, _, name = env.get("MACFT_DEBUG_SIGNAL_AFTER_STEP").partition(":")
    if when and int(when) == step:
        os.kill(os.getpid(), getattr(signal, name))


class Trainer:
    """State of one run; ``run()`` is the loop."""

    def __init__(self, recipe: Recipe, sinks: list, stop: StopSignal | None = None,
                 loaded: Loaded | None = None, allow_changes: bool = False):
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
        self.allow_changes = allow_changes  # resume despite a changed recipe or data
        self.nonfinite = 0                  # non-finite steps in a row (skipped updates)
        self.experts: moe.ExpertFreeze | None = None
        self.eval_seconds = 0.0             # the last validation pass took (for the ETA)

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
        renew = _check_resume(self.run_dir, r, self.allow_changes) if ckpt is not None else True
        if main:
            if ckpt is None:
                self._record_start(renew)
            self.sinks.append(MetricsFile(runs.metrics_path(self.run_dir)))
        self.backend = runtime.backend(r.model.dtype)
        self.scope = RunScope(r.kernels)    # undone by close(), which run() always calls
        self.kernel_checks = verify.for_run(r.kernels)     # device kernels: checked, cached
        if self.loaded is None:
            self.loaded = load_spec(r.model, local_only=ckpt is not None)
        self.model = self.loaded.model
        self.scope.own_caches(self.model)
        self.tokenizer = self.loaded.tokenizer
        hybrid.check_recipe(r, self.model, self.loaded.config.get("model_type", ""))
        self.objective = objectives.create(r, self.world)
        self.objective.emit = self.emit
        self.data = self.objective.load_data(self.tokenizer)
        if self.world.active and self.data.train.batch_size < self.world.size:
            raise MacftError(f"train.batch_size ({self.data.train.batch_size}) is smaller than "
                             f"the number of ranks ({self.world.size}): each rank takes a share "
                             "of every batch")
        self.adapter_cfg = adapters.prepare(self.model, r, r.train.seed)
        self.adapter_cfg["model"] = str(self.loaded.source)
        self.experts = moe.ExpertFreeze.from_recipe(r, self.model)   # None: every expert
        if r.init_adapter and ckpt is None and main:
            adapters.load_adapter_weights(self.model, Path(r.init_adapter))
        self.total = total_steps(r, self.data.train.batches_per_epoch)
        self.objective.setup(self.model, self.run_dir, self.backend, self.total)
        if r.train.grad_checkpoint:
            self.scope.checkpoint(self.model.layers)
        self.schedule = build_schedule(r.train, self.total)
        self.optimizer = optim.AdamW(learning_rate=self.schedule,
                                     weight_decay=r.train.weight_decay)
        self.optimizer.init(self.model.trainable_parameters())
        self.forgetting = ForgettingGuard.from_recipe(r, self.model, self.tokenizer)
        if ckpt is not None:
            ckpt, state, skipped = checkpoint.restore_newest(self.run_dir, self.model,
                                                             self.optimizer)
            for line in skipped:
                self.emit(Notice(0, line))
            self.step = int(state["step"])
            self.best_val = state.get("best_val")
            self.best_step = state.get("best_step", 0)
            self.bad_evals = state.get("bad_evals", 0)
            self.elapsed_before = state.get("elapsed", 0.0)
            self.last_checkpoint = str(ckpt)
        if main and ckpt is not None:   # a resume that was refused left its folder alone
            self._record_start(renew)
        if self.world.active:
            self._sync_from_main()
        self.model.train()

    def _record_start(self, renew: bool) -> None:
        if renew:
            resume.record(self.run_dir, self.recipe)
        recipe_mod.dump(self.recipe, runs.recipe_path(self.run_dir))

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

    # ----- one optimizer step ---------------------------------------------------------------
    def micro_batches(self, step: int) -> list:
        ga = self.recipe.train.grad_accum
        return [self.data.train.batch(step * ga + k) for k in range(ga)]

    def train_step(self, step: int, batches: list | None = None) -> tuple[float, int]:
        """One optimizer step on ``batches`` (default: the step's own micro-batches); returns
        (loss, tokens). ``plan`` passes its own batches (the longest the data can make)."""
        mx.random.seed(self.recipe.train.seed * 1_000_003 + step)  # dropout: resumable
        if batches is None:
            batches = self.micro_batches(step)
        result = self.objective.step(batches)
        self.step_metrics = result.metrics
        self._apply(result.grads, result.loss)
        return result.loss, result.tokens

    def _apply(self, grads, loss: float = 0.0) -> None:
        if self.world.active:
            # A rank whose share held no trained token still joins the sum.
            if grads is None:
                grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
            grads = self.world.all_sum(grads)
        if grads is None:
            return
        if self.experts is not None:
            grads = self.experts.grads(grads)
            frozen = self.experts.snapshot(self.model)
        if self.recipe.train.max_grad_norm > 0:
            grads, norm = optim.clip_grad_norm(grads, self.recipe.train.max_grad_norm)
        else:
            norm = mx.sqrt(sum(mx.sum(g.astype(mx.float32) ** 2)
                               for _, g in tree_flatten(grads)))
        if not self._agree_finite(finite.is_finite(loss) and finite.is_finite(norm.item())):
            self._skip(f"loss {loss:.4g}, gradient norm {norm.item():.4g}")
            return
        before = (self.model.trainable_parameters(), tree_map(lambda x: x, self.optimizer.state))
        self.optimizer.update(self.model, grads)
        if self.experts is not None:
            self.experts.restore(self.model, frozen)
        ok = finite.all_finite(self.model.trainable_parameters())
        mx.eval(self.model.parameters(), self.optimizer.state, ok)
        if not self._agree_finite(ok.item()):
            # The update itself overflowed: take it back, weights and optimizer state.
            self.model.update(before[0])
            self.optimizer.state = before[1]
            self._skip("the update made the weights non-finite")
            return
        self.nonfinite = 0

    def _agree_finite(self, ok: bool) -> bool:
        """Every rank skips the same steps."""
        if not self.world.active:
            return bool(ok)
        return self.world.total(0.0 if ok else 1.0) == 0

    def _skip(self, why: str) -> None:
        """A non-finite step: no update; too many in a row end the run (``_check_nonfinite``)."""
        self.nonfinite += 1
        self.step_metrics = dict(self.step_metrics, skipped=1.0)
        limit = self.recipe.train.max_nonfinite_steps
        self.emit(Notice(self.step + 1, f"step {self.step + 1}: not finite ({why}); update "
                                        f"skipped ({self.nonfinite} of {limit} in a row)"))

    def _check_nonfinite(self) -> None:
        limit = self.recipe.train.max_nonfinite_steps
        if limit and self.nonfinite >= limit:
            first = self.step - self.nonfinite + 1
            raise NonFiniteError(
                f"step {self.step}: the loss or gradient was not finite for {self.nonfinite} "
                f"steps in a row (steps {first}-{self.step}, none applied); stopped. The last "
                f"finite checkpoint is {self.last_checkpoint or 'none (no checkpoint yet)'}; "
                "lower train.learning_rate or set train.max_grad_norm")

    # ----- evaluation -------------------------------------------------------------------------
    def evaluate(self) -> bool:
        """Validation loss, best-adapter bookkeeping; True when early stopping triggers."""
        result = self.objective.validate()
        if result is None:
            return False
        val, metrics = result
        forgot = self.forgetting is not None and self.forgetting.check(self.model, self.step,
                                                                       metrics)
        improved = finite.is_finite(val) and (self.best_val is None or val < self.best_val) \
            and not forgot
        if improved:
            self.best_val, self.best_step, self.bad_evals = val, self.step, 0
            if self.world.main:
                self._assert_finite(runs.best_dir(self.run_dir))
                adapters.save_adapters(self.model, runs.best_dir(self.run_dir), self.adapter_cfg)
        else:
            self.bad_evals += 1
        self.emit(Eval(self.step, val, self.best_val, improved, metrics))
        if improved:
            self.emit(Checkpoint(self.step, str(runs.best_dir(self.run_dir)), best=True))
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
        self._assert_finite(runs.checkpoints_dir(self.run_dir))
        state = {"best_val": self.best_val, "best_step": self.best_step,
                 "bad_evals": self.bad_evals, "elapsed": elapsed, "total_steps": self.total}
        path = checkpoint.save(self.run_dir, self.step, self.model, self.optimizer, state,
                               self.adapter_cfg)
        self.last_checkpoint = str(path)
        self.emit(Checkpoint(self.step, str(path)))
        return path

    def _assert_finite(self, where: Path) -> None:
        finite.check(self.model.trainable_parameters(), str(where))

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
        kill_after = int(env.get("MACFT_DEBUG_KILL_AFTER_STEP"))
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
                self._check_nonfinite()
                dt = time.monotonic() - t0
                tokens_window = (tokens_window + [(dt, tokens)])[-20:]
                tps = sum(n for _, n in tokens_window) / max(sum(d for d, _ in tokens_window),
                                                             1e-9)
                elapsed = self.elapsed_before + time.monotonic() - start
                per_step = sum(d for d, _ in tokens_window) / len(tokens_window)
                eta = per_step * (self.total - self.step) + self.eval_seconds * evals_left(
                    self.step, self.total, r.eval_every)
                self.emit(Step(
                    step=self.step, total_steps=self.total, loss=loss,
                    learning_rate=float(self.optimizer.learning_rate.item()), tokens=tokens,
                    tokens_per_sec=tps, elapsed=elapsed, eta=eta,
                    peak_memory_gb=mx.get_peak_memory() / 1e9,
                    epoch=self.step * r.grad_accum / self.data.train.batches_per_epoch,
                    metrics=self.step_metrics, memory_gb=mx.get_active_memory() / 1e9))
                for event in self.objective.drain_events():
                    self.emit(event)
                last = self.step == self.total
                stop_early = False
                if (r.eval_every and self.step % r.eval_every == 0) or last:
                    t_eval = time.monotonic()
                    stop_early = self.evaluate()
                    self.eval_seconds = time.monotonic() - t_eval
                if r.sample_every and (self.step % r.sample_every == 0 or last):
                    self.samples()
                # In a run of non-finite steps the periodic save waits, so it never prunes a
                # checkpoint of the last finite steps for one of the same weights.
                periodic = r.save_every and self.step % r.save_every == 0 and not self.nonfinite
                if periodic or last or stop_early or self.stop.take_checkpoint_request():
                    self.save(self.elapsed_before + time.monotonic() - start)
                watchdog.beat()
                if kill_after and self.step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a power cut
                _debug_signal(self.step)
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
        self._assert_finite(self.run_dir)
        final = adapters.save_adapters(self.model, self.run_dir, self.adapter_cfg)
        done = Finished(self.step, reason, self.best_val, str(final), elapsed)
        if reason != "stopped":
            runs.write_finished(self.run_dir, {"step": self.step, "reason": reason})
        self.emit(done)
        return done


def run_stages(recipe: Recipe, sinks: list, stop: StopSignal | None = None,
               allow_changes: bool = False) -> Finished:
    """Run a staged recipe (e.g. sft then dpo): each stage in its own sub-folder, starting
    from the previous stage's adapter; finished stages are skipped, so a killed run resumes
    inside the stage where it stopped."""
    run_dir = recipe.run_dir
    main = distributed.world().main     # rank 0's folder says which stages are done
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not runs.has_stages(run_dir) or _check_resume(run_dir, recipe, allow_changes):
            resume.record(run_dir, recipe)
        recipe_mod.dump(recipe, runs.recipe_path(run_dir))
    previous = recipe.init_adapter
    done = None
    for stage in recipe_mod.stage_recipes(recipe):
        if previous:
            stage = dataclasses.replace(stage, init_adapter=str(previous))
        if not distributed.world().agree(runs.is_finished(stage.run_dir)):
            done = Trainer(stage, sinks, stop, allow_changes=allow_changes).run()
            if done.reason == "stopped":
                return done
        # Other ranks take the adapter from rank 0 (Trainer._sync_from_main), not from a path.
        previous = runs.adapter_dir(stage.run_dir) if main else stage.run_dir
    if main:
        runs.write_finished(run_dir, {"stages": len(recipe.stages)})
    if done is None:
        done = Finished(0, "completed", None, str(previous), 0.0)
    return done


def train(recipe: Recipe, sinks: list, stop: StopSignal | None = None,
          loaded: Loaded | None = None, allow_changes: bool = False) -> Finished:
    """Train (or resume) ``recipe`` holding its run folder's lock for the whole run, stages
    included. ``allow_changes``: resume even though the recipe or data changed (see
    ``train.resume``)."""
    with hold_run_folder(recipe.run_dir, sinks):
        if recipe.stages:
            return run_stages(recipe, sinks, stop, allow_changes)
        return Trainer(recipe, sinks, stop, loaded, allow_changes).run()


@contextlib.contextmanager
def hold_run_folder(run_dir: Path, sinks: list):
    """The run lock (``macft.lock``) for the block, on rank 0 (the only rank that writes the
    folder); on taking it, temporary files of killed writers are removed. What was taken over
    or removed goes to the sinks as ``Notice`` events."""
    if not distributed.world().main:
        yield None
        return
    with run_lock(run_dir) as lock:
        notes = []
        if lock.took_over is not None:
            notes.append(f"{run_dir}: took over the lock of {lock.took_over.describe()}, "
                         "which no longer runs")
        removed = runs.remove_stale_temps(run_dir)
        if removed:
            names = ", ".join(str(p.relative_to(run_dir)) for p in removed)
            notes.append(f"{run_dir}: removed temporary files of a killed writer: {names}")
        for note in notes:
            for sink in sinks:
                sink(Notice(0, note))
        yield lock
