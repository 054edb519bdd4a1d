"""Supervised fine-tuning loss: cross-entropy on exactly the trained tokens."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from macft.kernels import cross_entropy
from macft.models import heads, patch


def trained_positions(mask: np.ndarray) -> mx.array:
    """Flat indices of the positions whose target is trained."""
    return mx.array(np.flatnonzero(mask.reshape(-1) > 0).astype(np.int32))


def token_losses(model: nn.Module, inputs: mx.array, targets: mx.array, positions: mx.array):
    """Per-token cross-entropy at ``positions`` (flat indices into B*T)."""
    parts = heads.split(model)
    flat_targets = targets.reshape(-1)[positions]
    if parts is None:
        logits = model(inputs)
        logits = logits.reshape(-1, logits.shape[-1])[positions].astype(mx.float32)
        return mx.logsumexp(logits, axis=-1) - mx.take_along_axis(
            logits, flat_targets[:, None], axis=-1).squeeze(-1)
    body, head = parts
    h = body(inputs)
    h = h.reshape(-1, h.shape[-1])[positions]
    # The head's matmul and the loss together, chunked (never all logits); dW only when the
    # head is trained.
    return cross_entropy.losses(h, head, flat_targets)


def sft_loss(model, inputs, targets, positions, denominator):
    """Sum of trained-token losses divided by ``denominator`` (the step's trained tokens).

    Dividing by the whole step's count makes gradient accumulation over micro-batches add up to
    the gradient of the mean over the step, whatever each micro-batch holds.
    """
    return token_losses(model, inputs, targets, positions).sum() / denominator


def weighted_token_losses(model: nn.Module, inputs: mx.array, targets: mx.array,
                          weights: mx.array):
    """Per-token cross-entropy at every position, times ``weights`` (B, T) (0 = not trained).

    The compiled step's form of ``token_losses``: every array keeps the batch's shape, so one
    compiled graph serves every batch of that shape (``positions`` changes size each batch).
    """
    parts = heads.split(model)
    flat_targets = targets.reshape(-1)
    flat_weights = weights.reshape(-1)
    if parts is None:
        logits = model(inputs)
        logits = logits.reshape(-1, logits.shape[-1]).astype(mx.float32)
        return (mx.logsumexp(logits, axis=-1) - mx.take_along_axis(
            logits, flat_targets[:, None], axis=-1).squeeze(-1)) * flat_weights
    body, head = parts
    h = body(inputs)
    return cross_entropy.losses(h.reshape(-1, h.shape[-1]), head, flat_targets, flat_weights)


def weighted_sft_loss(model, inputs, targets, weights, denominator):
    """``sft_loss`` over weighted positions (see ``weighted_token_losses``)."""
    return weighted_token_losses(model, inputs, targets, weights).sum() / denominator


def mean_loss(model, batches, limit: int = 0) -> float | None:
    """Mean cross-entropy over the trained tokens of ``batches`` (validation, eval)."""
    total, count = 0.0, 0
    for i, b in enumerate(batches):
        if limit and i >= limit:
            break
        positions = trained_positions(b.mask)
        if positions.size == 0:
            continue
        seg = mx.array(b.segments) if b.segments is not None else None
        with patch.segments(seg):
            losses = token_losses(model, mx.array(b.inputs), mx.array(b.targets), positions)
        total += losses.sum().item()
        count += positions.size
    return total / count if count else None
