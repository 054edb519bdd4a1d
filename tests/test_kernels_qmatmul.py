"""QLoRA linear: ``x W^T + scale (x A) B`` over MLX's affine 4/8-bit base, against float64 numpy.

The base is dequantized here by unpacking the uint32 words by hand, so the tests also pin the
format the Metal kernels read. Values and the gradients for x, A and B agree to 1e-4 (float32)
for 4 and 8 bits, groups of 32 and 64, with the weight dequantized per call (in one block or
several) or taken from a cached float copy, and with dropout on the low-rank input. The layer
swap keeps mlx-lm's parameter names, outputs and gradients. The Metal kernels' parity check is
``verify``'s (tests/test_kernels_verify.py).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.tuner.lora import LoRALinear

from macft import kernels
from macft.kernels import qmatmul
from macft.models import quantized

TOL = 1e-4
SCALE = 2.0


def naive_dequantize(wq, scales, biases, group_size, bits):
    """MLX affine layout: 32/bits values per uint32, lowest bits first; scale * q + bias."""
    wq = np.asarray(wq).astype(np.uint64)
    shifts = np.arange(32 // bits, dtype=np.uint64) * bits
    q = ((wq[:, :, None] >> shifts) & np.uint64((1 << bits) - 1)).reshape(wq.shape[0], -1)
    s = np.repeat(np.asarray(scales, np.float64), group_size, axis=1)
    b = np.repeat(np.asarray(biases, np.float64), group_size, axis=1)
    return s * q.astype(np.float64) + b


def naive(x, wd, a, b, g, keep=None):
    """y, and dx, dA, dB of sum(g * y); ``keep``: the dropout multiplier on the low-rank input."""
    x, a, b, g = (np.asarray(v, np.float64) for v in (x, a, b, g))
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    k2 = np.ones_like(x2) if keep is None else np.asarray(keep, np.float64).reshape(x2.shape)
    xd = x2 * k2
    y = x2 @ wd.T + SCALE * (xd @ a) @ b
    gb = SCALE * g2 @ b.T
    dx = g2 @ wd + k2 * (gb @ a.T)
    return (y.reshape(*x.shape[:-1], -1), dx.reshape(x.shape), xd.T @ gb,
            SCALE * (xd @ a).T @ g2)


def problem(bits, group_size, k=128, out=96, rank=4, seed=0):
    rng = np.random.default_rng(seed)
    w = mx.array(rng.normal(0, 0.1, (out, k)).astype(np.float32))
    wq, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    x = rng.normal(0, 1, (2, 5, k)).astype(np.float32)
    a = rng.normal(0, 0.1, (k, rank)).astype(np.float32)
    b = rng.normal(0, 0.1, (rank, out)).astype(np.float32)
    g = rng.uniform(-1, 1, (2, 5, out)).astype(np.float32)
    return (wq, scales, biases), x, a, b, g


def close(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def run(fn, x, a, b, g):
    """y and the gradients for x, A, B of sum(g * fn(x, a, b))."""
    gg = mx.array(g)
    vg = mx.value_and_grad(lambda x, a, b: (fn(x, a, b) * gg).sum(), argnums=(0, 1, 2))
    y = fn(mx.array(x), mx.array(a), mx.array(b))
    _, (dx, da, db) = vg(mx.array(x), mx.array(a), mx.array(b))
    return y, dx, da, db


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("weight", ["dequantize", "blocks", "dense"])
def test_qlora_linear_matches_naive(bits, group_size, weight, monkeypatch):
    (wq, scales, biases), x, a, b, g = problem(bits, group_size)
    wd = naive_dequantize(wq, scales, biases, group_size, bits)
    assert close(wd, mx.dequantize(wq, scales, biases, group_size, bits)) < 1e-6
    dense = None
    if weight == "blocks":      # 96 rows in blocks of 20: five blocks, the last one short
        monkeypatch.setattr(qmatmul, "BLOCK_ELEMENTS", 20 * 128)
        assert len(qmatmul._row_blocks(wq, bits)) == 5
    elif weight == "dense":
        dense = mx.dequantize(wq, scales, biases, group_size, bits)
    got = run(lambda x, a, b: qmatmul.qlora_linear(x, wq, scales, biases, a, b, SCALE,
                                                   group_size, bits, dense=dense), x, a, b, g)
    for have, want in zip(got, naive(x, wd, a, b, g)):
        assert have.shape == want.shape
        assert close(have, want) < TOL


def test_dropout_input_gets_only_the_low_rank_gradient():
    (wq, scales, biases), x, a, b, g = problem(4, 64)
    wd = naive_dequantize(wq, scales, biases, 64, 4)
    keep = (np.random.default_rng(3).uniform(size=x.shape) > 0.3) / 0.7
    km = mx.array(keep.astype(np.float32))
    got = run(lambda x, a, b: qmatmul.qlora_linear(x, wq, scales, biases, a, b, SCALE, 64, 4,
                                                   dropped=x * km), x, a, b, g)
    for have, want in zip(got, naive(x, wd, a, b, g, keep=keep)):
        assert close(have, want) < TOL


def test_block_products_match_the_dequantized_weight(monkeypatch):
    (wq, scales, biases), x, _, _, g = problem(8, 32)
    wd = naive_dequantize(wq, scales, biases, 32, 8)
    monkeypatch.setattr(qmatmul, "BLOCK_ELEMENTS", 32 * 128)
    assert close(qmatmul.reference(mx.array(x), wq, scales, biases, 32, 8), x @ wd.T) < TOL
    assert close(qmatmul.reference_t(mx.array(g), wq, scales, biases, 32, 8), g @ wd) < TOL


# ----- the layer -------------------------------------------------------------------------------

def lora_layer(bits=4, group_size=64, bias=False, seed=0):
    mx.random.seed(seed)
    lin = nn.Linear(128, 96, bias=bias)
    base = nn.QuantizedLinear.from_linear(lin, group_size, bits)
    layer = LoRALinear.from_base(base, r=4, scale=SCALE)
    layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.1     # zero at init: make it count
    layer.linear.freeze()
    return layer


def layer_run(layer, x, g):
    gg = mx.array(g)

    def loss(params, x):
        layer.update(params)
        return (layer(x) * gg).sum()

    y = layer(mx.array(x))
    _, (dp, dx) = mx.value_and_grad(loss, argnums=(0, 1))(layer.trainable_parameters(),
                                                          mx.array(x))
    return y, dx, dp["lora_a"], dp["lora_b"]


@pytest.mark.parametrize("mode", ["auto", "reference", "stock"])
@pytest.mark.parametrize("bias", [False, True])
def test_swapped_layer_matches_mlx_lm(mode, bias):
    layer = lora_layer(bias=bias)
    _, x, _, _, g = problem(4, 64)
    want = layer_run(layer, x, g)
    keys = sorted(k for k, _ in tree_flatten(layer.parameters()))
    layer.__class__ = quantized.QLoRALinear
    assert sorted(k for k, _ in tree_flatten(layer.parameters())) == keys   # names unchanged
    with kernels.using(mode):
        got = layer_run(layer, x, g)
    for have, ref in zip(got, want):
        assert close(have, ref) < TOL
    fused = layer.fuse(dequantize=True)                                     # mlx-lm's fuse
    assert close(fused(mx.array(x)), want[0]) < TOL


def test_apply_adapters_swaps_lora_over_quantized_bases(tiny_model_dir, tmp_path):
    from macft.models import adapters
    from macft.models.load import load_base

    model = load_base(str(tiny_model_dir)).model
    quantized.quantize(model, bits=4, group_size=32)
    config = {"fine_tune_type": "lora", "num_layers": 2,
              "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                  "keys": ["self_attn.q_proj", "mlp.down_proj"]}}
    adapters.apply_adapters(model, config)
    kinds = [type(m).__name__ for _, m in model.named_modules() if hasattr(m, "lora_a")]
    assert kinds == ["QLoRALinear"] * 4
    saved = adapters.save_adapters(model, tmp_path, config)
    names = sorted(mx.load(str(saved)))
    assert len(names) == 8 and all(n.endswith((".lora_a", ".lora_b")) for n in names)
    inputs = mx.array([[1, 2, 3, 4, 5]])
    with adapters.disabled(model):      # the adapters switched off: still the swapped layers
        base_out = model(inputs)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "QLoRALinear"
    assert close(model(inputs), base_out) < 1e-5            # lora_b starts at zero
