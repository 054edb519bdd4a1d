"""Preference objectives (DPO, IPO, ORPO, SimPO) on per-sequence log-probabilities.

A preference batch holds 2B sequences: B chosen answers, then the B rejected ones. The policy's
log-probability of each answer is the sum over its trained tokens; DPO and IPO compare it with
the reference model's, which the trainer computes once before training (the reference is the
model as the stage starts), so no second copy of the weights is ever in memory.

Each ``*_loss`` returns (mean loss over pairs, metrics) from plain arrays, so tests can compare
them with independent implementations.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from macft.models import patch
from macft.train.loss import token_losses, trained_positions


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


def dpo_loss(pc, pr, rc, rr, beta: float, label_smoothing: float = 0.0):
    """-log sigmoid(beta * ((pc - rc) - (pr - rr))), with optional label smoothing."""
    z = beta * ((pc - rc) - (pr - rr))
    losses = -(1 - label_smoothing) * nn.log_sigmoid(z) - label_smoothing * nn.log_sigmoid(-z)
    return losses.mean(), _reward_metrics(beta * (pc - rc), beta * (pr - rr))


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


def needs_reference(objective: str) -> bool:
    return objective in ("dpo", "ipo")


def preference_loss(model, batch, ref: tuple[mx.array, mx.array] | None, objective: str, spec,
                    weight: float = 1.0):
    """The objective's loss on one batch of pairs, scaled by ``weight`` (accumulation)."""
    sums, counts = sequence_logps(model, batch)
    pc, pr = _split(sums)
    nc, nr = _split(mx.maximum(counts, 1.0))
    if objective == "dpo":
        loss, metrics = dpo_loss(pc, pr, ref[0], ref[1], spec.beta, spec.label_smoothing)
    elif objective == "ipo":
        loss, metrics = ipo_loss(pc, pr, ref[0], ref[1], nc, nr, spec.beta)
    elif objective == "orpo":
        loss, metrics = orpo_loss(pc, pr, nc, nr, spec.orpo_lambda)
    elif objective == "simpo":
        loss, metrics = simpo_loss(pc, pr, nc, nr, spec.beta, spec.simpo_gamma,
                                   spec.label_smoothing)
    else:
        raise ValueError(f"not a preference objective: {objective}")
    return loss * weight, metrics


def reference_logps(model, batcher) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs of every pair's chosen and rejected answer under ``model`` as it is now."""
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
    finally:
        model.train(was_training)
    return chosen, rejected
