"""GRPO: the losses against float64 numpy, group advantages, rollouts, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import macft  # noqa: F401
import mlx.core as mx
import numpy as np

from macft.train.objectives.grpo import (LossConfig, group_advantages, policy_loss,
                                         zero_spread)

ROOT = Path(__file__).resolve().parents[1]


# ----- an independent float64 implementation ------------------------------------------------

def np_loss(logp, old, ref, adv, mask, loss, beta, eps, eps_high, max_new):
    """Written from the papers' formulas, one row and one token at a time."""
    B, T = logp.shape
    hi = eps_high if loss in ("dapo", "gspo") else eps
    total_tokens = mask.sum()
    out = 0.0
    for i in range(B):
        n = mask[i].sum()
        if loss == "gspo":
            s = np.exp(sum((logp[i, t] - old[i, t]) for t in range(T) if mask[i, t]) / max(n, 1))
            term = -min(s * adv[i], min(max(s, 1 - eps), 1 + hi) * adv[i])
            if beta:
                kl = sum(np.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
                         for t in range(T) if mask[i, t])
                term += beta * kl / max(n, 1)
            out += term / B
            continue
        row = 0.0
        for t in range(T):
            if not mask[i, t]:
                continue
            r = np.exp(logp[i, t] - old[i, t])
            tok = -min(r * adv[i], min(max(r, 1 - eps), 1 + hi) * adv[i])
            if beta:
                d = ref[i, t] - logp[i, t]
                tok += beta * (np.exp(d) - d - 1)
            row += tok
        if loss == "grpo":
            out += row / max(n, 1) / B
        elif loss == "dapo":
            out += row / total_tokens
        else:                                   # dr_grpo
            out += row / (B * max_new)
    return out


def np_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (f(up) - f(down)) / (2 * h)
    return g


def _case(seed: int, B: int = 6, T: int = 5):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.2, 3.0, (B, T))
    old = logp + rng.normal(0, 0.3, (B, T))             # ratios both inside and outside the clip
    ref = logp + rng.normal(0, 0.5, (B, T))
    mask = np.ones((B, T))
    for i in range(B):
        mask[i, rng.integers(1, T + 1):] = 0            # completions of different lengths
    adv = rng.normal(0, 1, B)
    return logp, old, ref, adv, mask


def _away_from_kinks(logp, old, mask, eps, hi, loss):
    """Finite differences need every ratio away from the clip's corners."""
    if loss == "gspo":
        n = np.maximum(mask.sum(1), 1)
        r = np.exp(((logp - old) * mask).sum(1) / n)
    else:
        r = np.exp(logp - old)[mask > 0]
    return np.all(np.abs(r - (1 - eps)) > 1e-3) and np.all(np.abs(r - (1 + hi)) > 1e-3)


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo", "gspo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_each_loss_equals_float64_values_and_gradients(loss, beta):
    eps, eps_high, max_new = 0.2, 0.28, 7
    if loss == "gspo":
        eps, eps_high = 0.05, 0.08
    cfg = LossConfig(loss, beta, eps, eps_high, max_new)
    checked = 0
    for seed in range(6):
        logp, old, ref, adv, mask = _case(seed)
        if not _away_from_kinks(logp, old, mask, eps, eps_high if loss != "grpo" and
                                loss != "dr_grpo" else eps, loss):
            continue
        want = np_loss(logp, old, ref, adv, mask, loss, beta, eps, eps_high, max_new)
        f32 = lambda x: mx.array(x.astype(np.float32))  # noqa: E731

        def ours(lp):
            return policy_loss(lp, f32(old), f32(ref), f32(adv), f32(mask), cfg)[0]

        got = ours(f32(logp)).item()
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
        grad = np.array(mx.grad(ours)(f32(logp)))
        want_grad = np_grad(lambda x: np_loss(x, old, ref, adv, mask, loss, beta, eps,
                                              eps_high, max_new), logp)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-3, atol=1e-5)
        assert np.all(grad[mask == 0] == 0)              # padding never gets a gradient
        checked += 1
    assert checked >= 3


def test_clipping_is_active_in_these_cases():
    """The cases above hit the clip: some tokens have zero gradient though their mask is 1."""
    logp, old, ref, adv, mask = _case(0)
    cfg = LossConfig("grpo", 0.0, 0.2, 0.28, 7)
    f = lambda lp: policy_loss(lp, mx.array(old.astype(np.float32)), None,  # noqa: E731
                               mx.array(adv.astype(np.float32)),
                               mx.array(mask.astype(np.float32)), cfg)
    grad = np.array(mx.grad(lambda lp: f(lp)[0])(mx.array(logp.astype(np.float32))))
    _, m = f(mx.array(logp.astype(np.float32)))
    clipped = int(m["clipped"].item())
    assert clipped > 0
    assert int(((grad == 0) & (mask > 0)).sum()) == clipped


def test_group_advantages_by_hand():
    r = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.5, sample std sqrt(1/3); group 2: all equal
    np.testing.assert_allclose(group_advantages(r, 4, normalise=False),
                               [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    s = np.sqrt(1 / 3) + 1e-4
    np.testing.assert_allclose(group_advantages(r, 4, normalise=True),
                               [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0])
    np.testing.assert_allclose(group_advantages(np.array([3.0, 1.0]), 2, True),
                               [1 / (np.sqrt(2) + 1e-4), -1 / (np.sqrt(2) + 1e-4)])
    assert zero_spread(r, 4).tolist() == [False, True]


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_equal_rewards_give_zero_gradient(loss):
    logp, old, ref, _, mask = _case(3, B=4)
    adv = group_advantages(np.full(4, 0.7), 4, loss != "dr_grpo")
    assert np.all(adv == 0)
    cfg = LossConfig(loss, 0.0, 0.2, 0.28, 5)
    f = lambda lp: policy_loss(lp, mx.array(old.astype(np.float32)), None,  # noqa: E731
                               mx.array(adv.astype(np.float32)),
                               mx.array(mask.astype(np.float32)), cfg)[0]
    grad = np.array(mx.grad(f)(mx.array(logp.astype(np.float32))))
    assert np.all(grad == 0)
