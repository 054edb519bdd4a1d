"""Packing and batching: boundaries carry no loss, batch(i) is a pure function of (seed, i)."""

from __future__ import annotations

import numpy as np
import pytest

from macft.data import Batcher, Encoded, Sequence, make_sequences
from macft.errors import MacftError


def example(n: int, start: int) -> Encoded:
    """n tokens start, start+1, ...; every token trained but the first."""
    return Encoded(list(range(start, start + n)), [0] + [1] * (n - 1))


EXAMPLES = [example(5, 10), example(3, 20), example(4, 30), example(2, 40), example(6, 50)]


def test_unpacked_is_one_example_per_sequence():
    seqs = make_sequences(EXAMPLES, 8, packing=False)
    assert [s.ids for s in seqs] == [e.ids for e in EXAMPLES]
    assert [s.mask for s in seqs] == [e.mask for e in EXAMPLES]
    assert [s.segments for s in seqs] == [[0] * len(e.ids) for e in EXAMPLES]


def test_packing_best_fit_decreasing_keeps_every_token_and_zeroes_boundaries():
    seqs = make_sequences(EXAMPLES, 8, packing=True)
    # lengths 6,5,4,3,2 -> [6+2], [5+3], [4]; each pack keeps the examples' original order
    assert [s.ids for s in seqs] == [
        EXAMPLES[3].ids + EXAMPLES[4].ids,
        EXAMPLES[0].ids + EXAMPLES[1].ids,
        EXAMPLES[2].ids,
    ]
    assert seqs[0].segments == [0] * 2 + [1] * 6
    assert seqs[0].mask == [0, 1] + [0, 1, 1, 1, 1, 1]
    assert seqs[1].mask == [0, 1, 1, 1, 1] + [0, 1, 1]
    assert all(len(s.ids) <= 8 for s in seqs)
    # every example comes back whole from its segment
    found = sorted(
        (s.ids[j:j + s.segments.count(seg)], s.mask[j:j + s.segments.count(seg)])
        for s in seqs for seg in set(s.segments) for j in [s.segments.index(seg)])
    assert found == sorted((e.ids, e.mask) for e in EXAMPLES)


def test_packing_zeroes_a_trained_first_token():
    seqs = make_sequences([Encoded([1, 2], [1, 1]), Encoded([3, 4], [1, 1])], 4, packing=True)
    assert seqs == [Sequence([1, 2, 3, 4], [0, 1, 0, 1], [0, 0, 1, 1])]


def test_packing_is_deterministic_and_rejects_overlong():
    assert make_sequences(EXAMPLES, 8, True) == make_sequences(EXAMPLES, 8, True)
    with pytest.raises(ValueError):
        make_sequences(EXAMPLES, 5, True)


def test_batch_shapes_shift_padding_and_tokens():
    seqs = make_sequences(EXAMPLES[:2], 8, packing=False)
    batch = Batcher(seqs, batch_size=2, seed=0, shuffle=False, pad_id=7).batch(0)
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (2, 8)
    assert batch.inputs.dtype == batch.targets.dtype == np.int32
    assert batch.mask.dtype == np.float32
    assert batch.inputs.tolist() == [[10, 11, 12, 13, 7, 7, 7, 7], [20, 21, 7, 7, 7, 7, 7, 7]]
    assert batch.targets.tolist() == [[11, 12, 13, 14, 7, 7, 7, 7], [21, 22, 7, 7, 7, 7, 7, 7]]
    assert batch.mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch.segments is None
    assert batch.tokens == 6


def test_packed_batches_carry_segments_of_the_inputs():
    seqs = make_sequences(EXAMPLES, 8, packing=True)
    batch = Batcher(seqs, batch_size=3, seed=0, shuffle=False, pad_to_multiple=4).batch(0)
    assert batch.inputs.shape == (3, 8)
    assert batch.segments.tolist() == [[0, 0, 1, 1, 1, 1, 1, -1],
                                       [0, 0, 0, 0, 0, 1, 1, -1],
                                       [0, 0, 0, -1, -1, -1, -1, -1]]
    assert batch.mask[0].tolist() == [1, 0, 1, 1, 1, 1, 1, 0]  # no loss on 50 after 41


def many(n: int) -> list[Sequence]:
    return make_sequences([example(2 + k % 5, 100 * k) for k in range(n)], 8, packing=False)


def test_batch_is_a_pure_function_of_seed_and_step():
    seqs = many(10)
    a, b = Batcher(seqs, 4, seed=3), Batcher(seqs, 4, seed=3)
    assert a.batches_per_epoch == 2  # the partial third batch is dropped
    for i in [5, 0, 7, 5]:  # any order, e.g. a run resumed at step 5
        x, y = a.batch(i), b.batch(i)
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.mask, y.mask)
    first = a.batch(0).inputs[:, 0].tolist()
    epoch0 = [s.ids[0] for s in (seqs[k] for k in np.random.default_rng(3).permutation(10))]
    assert first == epoch0[:4]
    assert a.order(0).tolist() != a.order(1).tolist()  # a new permutation every epoch
    assert a.batch(0).inputs.tolist() != a.batch(2).inputs.tolist()
    assert a.batch(1).inputs.tolist() != Batcher(seqs, 4, seed=4).batch(1).inputs.tolist()


def test_a_set_smaller_than_a_batch_still_gives_batches():
    batcher = Batcher(many(3), batch_size=8, seed=0)
    assert batcher.batches_per_epoch == 1
    assert batcher.batch(0).inputs.shape[0] == 3
    assert batcher.batch(5).inputs.shape[0] == 3


def test_eval_batches_cover_everything_in_order():
    seqs = many(10)
    batches = list(Batcher(seqs, 4, seed=0).iter_eval())
    assert [b.inputs.shape[0] for b in batches] == [4, 4, 2]
    firsts = [row[0] for b in batches for row in b.inputs.tolist()]
    assert firsts == [s.ids[0] for s in seqs]
    assert sum(b.tokens for b in batches) == sum(len(s.ids) - 1 for s in seqs)


def test_no_sequences_is_a_user_error():
    with pytest.raises(MacftError):
        Batcher([], 4, seed=0)


def test_the_data_package_needs_neither_mlx_nor_datasets_to_import():
    import subprocess
    import sys

    code = ("import sys, macft.data; "
            "print(sorted(m for m in ('mlx', 'datasets', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
