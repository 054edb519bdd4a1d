"""Mixture-of-experts training aids: the router's load-balancing loss, the share of routed
tokens per expert (so collapse is visible), and training only chosen experts.

An MoE block is any module of a transformer block with a router ``gate`` (a linear layer, maybe
under LoRA) and stacked experts ``switch_mlp`` (mlx-lm's ``SwitchGLU``: qwen3_moe, qwen2_moe,
mixtral, ...). The router's logits are read by swapping the class of each ``gate`` instance
only while a loss is traced (``tapped``), so no class and no instance keeps a change after it.

The balance loss is the Switch Transformer's, averaged over the MoE layers::

    aux = n_experts * sum_i f_i * P_i

``f_i`` is the share of the step's top-k assignments that go to expert ``i`` (the same top-k the
block routes with; the shares sum to 1) and ``P_i`` the mean router probability of expert ``i``,
both over the real (non-pad) tokens. Only ``P`` carries a gradient. Balanced routing gives 1,
everything on k experts gives n_experts / k.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from macft.errors import MacftError

_TAPE: contextvars.ContextVar = contextvars.ContextVar("macft_router_tape", default=None)
_ROUTED: dict[tuple[type, int], type] = {}


def blocks(model: nn.Module) -> list[nn.Module]:
    """The sparse MoE blocks of ``model``'s transformer blocks, in layer order."""
    found = []
    for layer in model.layers:
        for _, module in layer.named_modules():
            if "switch_mlp" in module and "gate" in module and hasattr(module, "num_experts"):
                found.append(module)
    return found


def top_k(block: nn.Module) -> int:
    return int(getattr(block, "top_k", None) or getattr(block, "num_experts_per_tok"))


def _routed_class(cls: type, k: int) -> type:
    """``cls`` whose calls also append (k, logits) to the current tape."""
    if (cls, k) not in _ROUTED:
        def __call__(self, x):
            logits = cls.__call__(self, x)
            tape = _TAPE.get()
            if tape is not None:
                tape.append((k, logits))
            return logits

        name = f"Routed{cls.__name__}"
        _ROUTED[(cls, k)] = type(name, (cls,), {"__call__": __call__, "__qualname__": name})
    return _ROUTED[(cls, k)]


@contextlib.contextmanager
def tapped(model: nn.Module):
    """Within this block every router call of ``model`` records its logits in the yielded
    list, as (top_k, logits of shape (..., n_experts))."""
    gates = [(b.gate, type(b.gate), top_k(b)) for b in blocks(model)]
    tape: list = []
    token = _TAPE.set(tape)
    for gate, cls, k in gates:
        gate.__class__ = _routed_class(cls, k)
    try:
        yield tape
    finally:
        for gate, cls, _ in gates:
            gate.__class__ = cls
        _TAPE.reset(token)


def balance(logits: mx.array, k: int, real: mx.array) -> tuple[mx.array, mx.array]:
    """(Switch balance loss, routed share per expert) of one layer's router ``logits``
    (B, T, E) over the positions where ``real`` (B, T) is 1."""
    n = logits.shape[-1]
    logits = logits.reshape(-1, n).astype(mx.float32)
    w = real.reshape(-1, 1).astype(mx.float32)
    probs = mx.softmax(logits, axis=-1)
    chosen = mx.argpartition(mx.stop_gradient(logits), kth=-k, axis=-1)[:, -k:]
    hits = (chosen[:, :, None] == mx.arange(n)[None, None, :]).sum(axis=1).astype(mx.float32)
    count = mx.maximum(w.sum(), 1.0)
    share = (hits * w).sum(axis=0) / (k * count)
    mean_p = (probs * w).sum(axis=0) / count
    return n * (share * mean_p).sum(), share


def router_loss(tape: list, real: mx.array) -> tuple[mx.array, mx.array]:
    """(balance loss averaged over layers, shares (layers, E)) of a tape's router calls."""
    parts = [balance(logits, k, real) for k, logits in tape]
    aux = mx.stack([a for a, _ in parts]).mean()
    return aux, mx.stack([s for _, s in parts])


def with_router_loss(loss_fn, weight: float):
    """``loss_fn(model, *args)`` as ``fn(model, *args, real, scale)`` returning
    (loss + weight * scale * aux, (aux, shares)); ``scale`` weighs a micro-batch's aux within
    its optimizer step (its share of the step's real tokens), so accumulation adds up to the
    step's token-weighted mean."""
    def fn(model, *args):
        *args, real, scale = args
        with tapped(model) as tape:
            loss = loss_fn(model, *args)
        aux, shares = router_loss(tape, real)
        return loss + (weight * scale) * aux, (aux, shares)
    return fn


def share_metrics(aux: float, shares) -> dict:
    """The Step event's view of routing: per layer and expert shares, the largest share, and
    the mean normalised entropy of the layers' shares (1 = uniform, 0 = one expert)."""
    rows = [[float(s) for s in row] for row in shares]
    n = len(rows[0])

    def entropy(row):
        return -sum(p * math.log(p) for p in row if p > 0) / math.log(n)

    return {"moe_aux_loss": float(aux), "moe_max_share": max(max(r) for r in rows),
            "moe_entropy": sum(entropy(r) for r in rows) / len(rows),
            "moe_share": [[round(p, 4) for p in r] for r in rows]}


class ExpertFreeze:
    """Trains only ``experts`` of every MoE layer: the gradients of the other experts' rows of
    each stacked expert parameter are zeroed, and after the optimizer's update those rows are
    put back as they were (so weight decay cannot move them either)."""

    def __init__(self, masks: dict[str, mx.array]):
        self.masks = masks              # parameter path -> (E, 1, ...) bool, True = trained

    @classmethod
    def from_recipe(cls, recipe, model: nn.Module) -> ExpertFreeze | None:
        chosen = list(recipe.moe.train_experts)
        if not chosen:
            return None
        found = blocks(model)
        if not found:
            raise MacftError("recipe: key 'moe.train_experts' is set but the model has no "
                             "mixture-of-experts layers")
        n = found[0].num_experts
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise MacftError(f"recipe: key 'moe.train_experts': expert {bad[0]} does not exist "
                             f"(the model has experts 0 to {n - 1})")
        return cls(_expert_masks(model, set(chosen)))

    def grads(self, grads):
        flat = dict(tree_flatten(grads))
        for path, mask in self.masks.items():
            if path in flat:
                flat[path] = mx.where(mask, flat[path], mx.zeros_like(flat[path]))
        return tree_unflatten(list(flat.items()))

    def snapshot(self, model: nn.Module) -> dict[str, mx.array]:
        flat = dict(tree_flatten(model.trainable_parameters()))
        return {path: flat[path] for path in self.masks}

    def restore(self, model: nn.Module, before: dict[str, mx.array]) -> None:
        flat = dict(tree_flatten(model.trainable_parameters()))
        model.update(tree_unflatten([(p, mx.where(self.masks[p], flat[p], old))
                                     for p, old in before.items()]))


def _expert_masks(model: nn.Module, chosen: set[int]) -> dict[str, mx.array]:
    prefixes = {}
    for path, module in model.named_modules():
        if "switch_mlp" in module and "gate" in module and hasattr(module, "num_experts"):
            prefixes[f"{path}.switch_mlp."] = module.num_experts
    masks = {}
    for path, value in tree_flatten(model.trainable_parameters()):
        n = next((e for p, e in prefixes.items() if path.startswith(p)), None)
        if n is None or value.ndim == 0 or value.shape[0] != n:
            continue
        keep = mx.array([i in chosen for i in range(n)])
        masks[path] = keep.reshape((n,) + (1,) * (value.ndim - 1))
    return masks
