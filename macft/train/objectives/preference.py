"""Preference objectives (DPO, DPOP, IPO, ORPO, SimPO, RPO's NLL term) on sequence log-probs.

A preference batch holds 2B sequences: B chosen answers, then the B rejected ones. The policy's
log-probability of each answer is the sum over its trained tokens; DPO and IPO compare it with
the reference model's, which the trainer computes once before training (the reference is the
model as the stage starts), so no second copy of the weights is ever in memory.

Each ``*_loss`` returns (mean loss over pairs, metrics) from plain arrays, so tests can compare
them with independent implementations.

``Preference`` is the objective the loop drives (one class for the four losses: they share the
pair data, the step and the validation).
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from macft.events import Progress
from macft.models import patch
from macft.train import distributed
from macft.train.loss import token_losses, trained_positions
from macft.train.objectives.base import DataBundle, Objective, StepResult
from macft.train.objectives.sft import shard_rows


def sequence_logps(model, batch) -> tuple[mx.array, mx.array]:
    """(sum of trained-token log-probs, trained-token count) for every row of the batch."""
    rows, width = batch.mask.shape
    positions = trained_positions(batch.mask)
    row_of = positions // width
    seg = mx.array(batch.segments) if batch.segments is not None else None
    with patch.segments(seg):
        ce = token_losses(model, mx.array(batch.inputs), mx.array(batch.targets), positions)
    sums = mx.zeros((rows,), dtype=mx.float32).at[row_of].add(-ce)
    counts = mx.array(batch.mask.sum(axis=1).astype(np.float32))
    return sums, counts


def _split(x: mx.array) -> tuple[mx.array, mx.array]:
    half = x.shape[0] // 2
    return x[:half], x[half:]


def _reward_metrics(chosen_reward, rejected_reward) -> dict:
    return {"reward_chosen": chosen_reward.mean(), "reward_rejected": rejected_reward.mean(),
            "margin": (chosen_reward - rejected_reward).mean(),
            "accuracy": (chosen_reward > rejected_reward).astype(mx.float32).mean()}


def dpo_loss(pc, pr, rc, rr, beta: float, label_smoothing: float = 0.0,
             dpop_lambda: float = 0.0):
    """-log sigmoid(beta * ((pc - rc) - (pr - rr) - lambda * max(0, rc - pc))).

    With ``dpop_lambda`` > 0 this is DPOP (DPO-Positive, Pal et al. 2024, "Smaug"): plain DPO
    can raise the margin by lowering both answers' likelihood, the chosen one included; the
    penalty is positive exactly when the chosen answer's log-prob has fallen below the
    reference's. Optional label smoothing (conservative DPO) applies to either.
    """
    penalty = mx.maximum(rc - pc, 0.0)
    z = beta * ((pc - rc) - (pr - rr) - dpop_lambda * penalty)
    losses = -(1 - label_smoothing) * nn.log_sigmoid(z) - label_smoothing * nn.log_sigmoid(-z)
    metrics = _reward_metrics(beta * (pc - rc), beta * (pr - rr))
    if dpop_lambda:
        metrics["dpop_penalty"] = penalty.mean()
    return losses.mean(), metrics


def chosen_nll(pc, nc):
    """The chosen answers' mean per-token negative log-likelihood, averaged over pairs.

    RPO (Pang et al. 2024) adds ``nll_weight`` times this to the preference loss: the pull
    toward the chosen answers themselves, which the pairwise losses alone lack (they are
    satisfied by pushing the rejected answer down).
    """
    return (-pc / nc).mean()


def ipo_loss(pc, pr, rc, rr, nc, nr, beta: float):
    """IPO: ((mean-token log-ratio difference) - 1 / (2 beta))^2."""
    h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
    return ((h - 1 / (2 * beta)) ** 2).mean(), _reward_metrics(beta * (pc - rc),
                                                               beta * (pr - rr))


def orpo_loss(pc, pr, nc, nr, lam: float):
    """ORPO: the chosen answer's mean-token NLL plus lam * -log sigmoid(log odds ratio)."""
    ac, ar = pc / nc, pr / nr                       # mean log-prob per token (< 0)
    log_odds = (ac - mx.log1p(-mx.exp(ac))) - (ar - mx.log1p(-mx.exp(ar)))
    ratio = -nn.log_sigmoid(log_odds)
    nll = -ac
    metrics = _reward_metrics(lam * ac, lam * ar)
    metrics.update(nll=nll.mean(), log_odds=log_odds.mean())
    return (nll + lam * ratio).mean(), metrics


def simpo_loss(pc, pr, nc, nr, beta: float, gamma: float, label_smoothing: float = 0.0):
    """SimPO: -log sigmoid(beta * (mean log-prob chosen - rejected) - gamma)."""
    z = beta * (pc / nc - pr / nr) - gamma
    losses = -(1 - label_smoothing) * nn.log_sigmoid(z) - label_smoothing * nn.log_sigmoid(-z)
    return losses.mean(), _reward_metrics(beta * pc / nc, beta * pr / nr)


def _dpo(pc, pr, nc, nr, ref, spec):
    return dpo_loss(pc, pr, ref[0], ref[1], spec.beta, spec.label_smoothing, spec.dpop_lambda)


def _ipo(pc, pr, nc, nr, ref, spec):
    return ipo_loss(pc, pr, ref[0], ref[1], nc, nr, spec.beta)


def _orpo(pc, pr, nc, nr, ref, spec):
    return orpo_loss(pc, pr, nc, nr, spec.orpo_lambda)


def _simpo(pc, pr, nc, nr, ref, spec):
    return simpo_loss(pc, pr, nc, nr, spec.beta, spec.simpo_gamma, spec.label_smoothing)


# name -> (loss on (policy sums, token counts, reference, spec), needs reference log-probs)
LOSSES = {"dpo": (_dpo, True), "ipo": (_ipo, True), "orpo": (_orpo, False),
          "simpo": (_simpo, False)}


def needs_reference(objective: str) -> bool:
    return LOSSES[objective][1]


def pair_loss(objective: str, pc, pr, nc, nr, ref, spec):
    """The objective's loss on per-pair log-prob sums and token counts, plus the NLL term."""
    if objective not in LOSSES:
        raise ValueError(f"not a preference objective: {objective}")
    loss, metrics = LOSSES[objective][0](pc, pr, nc, nr, ref, spec)
    if spec.nll_weight:
        nll = chosen_nll(pc, nc)
        loss = loss + spec.nll_weight * nll
        metrics["chosen_nll"] = nll
    return loss, metrics


def preference_loss(model, batch, ref: tuple[mx.array, mx.array] | None, objective: str, spec,
                    weight: float = 1.0):
    """The objective's loss on one batch of pairs, scaled by ``weight`` (accumulation)."""
    sums, counts = sequence_logps(model, batch)
    pc, pr = _split(sums)
    nc, nr = _split(mx.maximum(counts, 1.0))
    loss, metrics = pair_loss(objective, pc, pr, nc, nr, ref, spec)
    return loss * weight, metrics


def reference_logps(model, batcher, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs of every pair's chosen and rejected answer under ``model`` as it is now;
    ``progress(pairs done)`` after each batch."""
    chosen = np.zeros(batcher.n, dtype=np.float32)
    rejected = np.zeros(batcher.n, dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for pb in batcher.iter_eval():
            sums, _ = sequence_logps(model, pb.batch)
            c, r = _split(sums)
            mx.eval(c, r)
            chosen[pb.index] = np.array(c)
            rejected[pb.index] = np.array(r)
            if progress is not None:
                progress(int(pb.index[-1]) + 1)
    finally:
        model.train(was_training)
    return chosen, rejected


def shard_pairs(pb, pairs: np.ndarray):
    """The pairs ``pairs`` of a preference batch (its rows: chosen block, then rejected)."""
    n = len(pb.index)
    rows = np.concatenate([pairs, pairs + n])
    return dataclasses.replace(pb, batch=shard_rows(pb.batch, rows), index=pb.index[pairs])


class Preference(Objective):
    """DPO, IPO, ORPO or SimPO (``recipe.objective``) on preference pairs."""

    name = "preference"
    step_metrics = ("reward_chosen", "reward_rejected", "margin", "accuracy")
    eval_metrics = step_metrics

    def __init__(self, recipe, world):
        super().__init__(recipe, world)
        self.reference: dict | None = None

    def load_batches(self, tokenizer) -> DataBundle:
        from macft.data import load_rows, pad_id
        from macft.data.preference import PairBatcher, encode_pairs

        spec, t = self.recipe.data, self.recipe.train
        pad = pad_id(tokenizer)
        train_set = encode_pairs(load_rows(spec.train), tokenizer, spec, spec.train)
        train = PairBatcher(train_set.pairs, t.batch_size, t.seed, pad_id=pad)
        stats = {"train": train_set.stats.summary().replace("examples", "pairs")}
        valid = None
        if spec.valid:
            valid_set = encode_pairs(load_rows(spec.valid), tokenizer, spec, spec.valid)
            if valid_set.pairs:
                valid = PairBatcher(valid_set.pairs, t.batch_size, t.seed, shuffle=False,
                                    pad_id=pad)
            stats["valid"] = valid_set.stats.summary().replace("examples", "pairs")
        return DataBundle(train, valid, stats, [])

    def uses_reference(self) -> bool:
        return needs_reference(self.recipe.objective)

    def setup(self, model, run_dir, backend, total_steps) -> None:
        super().setup(model, run_dir, backend, total_steps)
        if self.uses_reference():
            self.reference = self._reference(run_dir / "reference_logps.safetensors")
        self.loss_and_grad = nn.value_and_grad(model, self._loss)

    def _reference(self, path) -> dict:
        """Reference log-probs of every pair, computed once (model as the stage starts) and
        kept in the run folder so that a resumed run uses the same ones."""
        from macft.runs import atomic_path

        world, model = self.world, self.model
        splits = [(s, b) for s, b in (("train", self.data.train), ("valid", self.data.valid))
                  if b is not None]
        if world.agree(path.exists()):          # rank 0's folder decides
            if world.main:
                ref = {k: np.array(v) for k, v in mx.load(str(path)).items()}
            else:                               # rank 0 sends its values; zeros add nothing
                ref = {f"{s}_{side}": np.zeros(b.n, np.float32) for s, b in splits
                       for side in ("chosen", "rejected")}
            return world.sum_arrays(ref)
        if world.active:            # the reference is rank 0's model as the stage starts
            model.update(world.broadcast(model.trainable_parameters()))
        ref, total, before = {}, sum(b.n for _, b in splits), 0
        for split, batcher in splits:   # each rank computes its batches, zeros elsewhere
            def progress(done, before=before):
                self.emit(Progress("reference log-probs", before + done, total))

            ref[f"{split}_chosen"], ref[f"{split}_rejected"] = reference_logps(
                model, distributed.EvalShare(batcher, world), progress)
            before += batcher.n
        ref = world.sum_arrays(ref)
        if world.main:
            with atomic_path(path) as tmp:
                mx.save_safetensors(str(tmp), {k: mx.array(v) for k, v in ref.items()})
        return ref

    def _ref_for(self, split: str, index: np.ndarray):
        if self.reference is None:
            return None
        return (mx.array(self.reference[f"{split}_chosen"][index]),
                mx.array(self.reference[f"{split}_rejected"][index]))

    def _loss(self, model, pair_batch, ref, weight):
        return preference_loss(model, pair_batch.batch, ref, self.recipe.objective,
                               self.recipe.preference, weight)

    def step(self, batches) -> StepResult:
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
        return StepResult(loss_sum, sum(pb.batch.tokens for pb in batches), grads, metrics)

    def validate(self) -> tuple[float, dict] | None:
        valid = self.data.valid
        if valid is None:
            return None
        self.model.eval()
        totals: dict = {}
        n = 0
        try:
            share = self.eval_share(valid)
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
