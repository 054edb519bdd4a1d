"""KTO (Ethayarajh et al. 2024): preference training on unpaired rows marked good or bad.

Rows are ``{prompt | messages, completion, label: true/false}``. With the log-ratio
``r(x, y) = log pi(y|x) - log pi_ref(y|x)`` and the reference point

    z0 = max(0, mean over the batch of r(x_i, y_j)),   j != i   (no gradient through z0),

the loss of a row is ``lambda_D * (1 - sigmoid(beta * (r - z0)))`` when it is desirable and
``lambda_U * (1 - sigmoid(beta * (z0 - r)))`` when not: the paper's ``lambda_y - v(x, y)``.
z0 is the paper's estimate of KL(pi || pi_ref): the log-ratios of completions under prompts
they do not answer, clamped at zero and not back-propagated. The paper pairs each prompt in a
micro-batch with the next row's completion; here the partner of every row is fixed once for
the data set (a seeded cycle, ``data.preference.mismatch_order``), so that the reference
log-probs of the mismatched pairs are computed once before training, as DPO's are. A batch
row therefore holds (prompt i, completion i) in the chosen slot and (prompt i, completion of
its partner) in the rejected slot, and everything else is the preference objective's.
"""

from __future__ import annotations

import mlx.core as mx

from macft.train.objectives.base import DataBundle
from macft.train.objectives.preference import Preference, _split, sequence_logps


def kto_loss(p, r, p_kl, r_kl, desirable, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """(mean KTO loss over rows, metrics) from per-row log-prob sums.

    ``p``/``r``: policy and reference log-probs of each row's own completion; ``p_kl``/``r_kl``:
    those of its mismatched pair; ``desirable``: the rows' labels (bool).
    """
    z0 = mx.stop_gradient(mx.maximum((p_kl - r_kl).mean(), 0.0))
    ratio = p - r
    good = desirable.astype(mx.float32)
    bad = 1.0 - good
    v_good = mx.sigmoid(beta * (ratio - z0))
    v_bad = mx.sigmoid(beta * (z0 - ratio))
    losses = good * desirable_weight * (1 - v_good) + bad * undesirable_weight * (1 - v_bad)
    reward = beta * ratio
    right = mx.where(desirable, ratio > z0, ratio < z0).astype(mx.float32)
    ties = (ratio == z0).astype(mx.float32)
    metrics = {"reward_desirable": (reward * good).sum() / mx.maximum(good.sum(), 1.0),
               "reward_undesirable": (reward * bad).sum() / mx.maximum(bad.sum(), 1.0),
               "kl": z0, "accuracy": (right + 0.5 * ties).mean()}
    return losses.mean(), metrics


class Kto(Preference):
    """KTO on unpaired rows; the reference is the model as the stage starts (cached)."""

    name = "kto"
    step_metrics = ("reward_desirable", "reward_undesirable", "kl", "accuracy")
    eval_metrics = step_metrics

    def uses_reference(self) -> bool:
        return True

    def load_batches(self, tokenizer) -> DataBundle:
        from macft.data import load_rows, pad_id
        from macft.data.preference import PairBatcher, encode_unpaired

        spec, t = self.recipe.data, self.recipe.train
        pad = pad_id(tokenizer)
        self.desirable = {}
        splits, stats = {}, {}
        for split, path, shuffle in (("train", spec.train, True), ("valid", spec.valid, False)):
            if not path:
                continue
            rows = encode_unpaired(load_rows(path), tokenizer, spec, path, t.seed)
            stats[split] = rows.stats.summary().replace("examples", "rows")
            if rows.pairs:
                self.desirable[split] = rows.desirable
                splits[split] = PairBatcher(rows.pairs, t.batch_size, t.seed, shuffle=shuffle,
                                            pad_id=pad)
        if "train" not in splits:
            from macft.errors import MacftError

            raise MacftError(f"{spec.train}: no KTO rows left to train on (all were dropped?)")
        return DataBundle(splits["train"], splits.get("valid"), stats, [])

    def _kto(self, model, pair_batch, ref, split: str, weight: float = 1.0):
        sums, _ = sequence_logps(model, pair_batch.batch)
        p, p_kl = _split(sums)
        desirable = mx.array(self.desirable[split][pair_batch.index])
        s = self.recipe.preference
        loss, metrics = kto_loss(p, ref[0], p_kl, ref[1], desirable, s.beta,
                                 s.kto_desirable_weight, s.kto_undesirable_weight)
        return loss * weight, metrics

    def _loss(self, model, pair_batch, ref, weight):
        return self._kto(model, pair_batch, ref, "train", weight)

    def _valid_pair_loss(self, pb):
        return self._kto(self.model, pb, self._ref_for("valid", pb.index), "valid")
