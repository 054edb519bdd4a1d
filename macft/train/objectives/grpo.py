"""GRPO and its successors (Dr. GRPO, DAPO, GSPO) on prompts scored by rewards.

A step takes a rollout batch: P prompts, G completions each, sampled together in one batch
with a KV cache (mlx-lm's ``BatchGenerator``), scored by the recipe's rewards; each completion's
advantage compares its total reward with its group's. The update maximises the clipped
importance-weighted advantage of every completion token (minus beta times a KL estimate to the
base model, which is the same weights with the adapters switched off).

The math is in plain functions of arrays (``group_advantages``, ``policy_loss``) so the tests
can compare them with independent float64 implementations; ``Grpo`` is the objective the loop
drives.

Resume: a rollout batch is sampled with the random seed ``(train.seed, rollout number)`` and
written to the run folder before its update, with everything the update needs (tokens, masks,
rewards, advantages, old and reference log-probs). A resumed run reads it back instead of
sampling again, so it trains on the very completions the killed run drew.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from macft.errors import MacftError
from macft.events import Sample
from macft.train.loss import token_losses, trained_positions
from macft.train.objectives.base import DataBundle, Objective, StepResult

ADV_EPS = 1e-4          # added to the group std (as TRL does), so equal rewards give 0, not nan
KEEP_ROLLOUTS = 3       # rollout files kept in the run folder


# ----- the math -------------------------------------------------------------------------------

def group_advantages(rewards: np.ndarray, group: int, normalise: bool) -> np.ndarray:
    """Each reward minus its group's mean, divided by the group's sample std (+ADV_EPS) when
    ``normalise``. ``rewards`` holds consecutive groups of ``group`` completions."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group)
    centred = r - r.mean(axis=1, keepdims=True)
    if normalise:
        centred = centred / (r.std(axis=1, ddof=1, keepdims=True) + ADV_EPS)
    return centred.reshape(-1)


def zero_spread(rewards: np.ndarray, group: int) -> np.ndarray:
    """Per group: True where every completion got the same total reward."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group)
    return r.max(axis=1) == r.min(axis=1)


@dataclass(frozen=True)
class LossConfig:
    loss: str = "grpo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float = 0.28
    max_new_tokens: int = 64

    @classmethod
    def of(cls, spec) -> "LossConfig":
        return cls(spec.loss, spec.beta, spec.epsilon, spec.epsilon_high, spec.max_new_tokens)


def kl_estimate(logp: mx.array, ref_logp: mx.array) -> mx.array:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1, d = ref - policy."""
    d = ref_logp - logp
    return mx.exp(d) - d - 1


def policy_loss(logp, old_logp, ref_logp, adv, mask, cfg: LossConfig, rows: int | None = None,
                tokens: float | None = None):
    """The loss of one (part of a) rollout batch; (loss, sums of metrics).

    ``logp``/``old_logp``/``ref_logp``/``mask`` are (B, T) per completion token, ``adv`` (B,).
    ``rows`` and ``tokens`` are the whole batch's row and token counts (default: this part's),
    so losses of parts add up to the loss of the whole. ``ref_logp`` may be None when beta is 0.
    """
    mask = mask.astype(mx.float32)
    lengths = mx.maximum(mask.sum(axis=1), 1.0)
    rows = adv.shape[0] if rows is None else rows
    tokens = float(mask.sum().item()) if tokens is None else tokens
    kl = kl_estimate(logp, ref_logp) * mask if ref_logp is not None else mx.zeros_like(logp)
    if cfg.loss == "gspo":
        return _gspo(logp, old_logp, adv, mask, lengths, kl, cfg, rows)
    hi = cfg.epsilon_high if cfg.loss == "dapo" else cfg.epsilon
    ratio = mx.exp((logp - old_logp) * mask)
    a = adv[:, None]
    surrogate = mx.minimum(ratio * a, mx.clip(ratio, 1 - cfg.epsilon, 1 + hi) * a)
    per_token = (-surrogate + cfg.beta * kl) * mask
    if cfg.loss == "grpo":
        loss = (per_token.sum(axis=1) / lengths).sum() / rows
    elif cfg.loss == "dapo":
        loss = per_token.sum() / max(tokens, 1.0)
    elif cfg.loss == "dr_grpo":
        loss = per_token.sum() / (rows * cfg.max_new_tokens)
    else:
        raise ValueError(f"not a GRPO loss: {cfg.loss}")
    clipped = (((ratio < 1 - cfg.epsilon) & (a < 0)) | ((ratio > 1 + hi) & (a > 0))) * mask
    return loss, {"clipped": clipped.sum(), "kl": kl.sum(), "units": mask.sum()}


def _gspo(logp, old_logp, adv, mask, lengths, kl, cfg: LossConfig, rows: int):
    """GSPO: s = exp(mean token log-ratio of the sequence), clipped per sequence."""
    ratio = mx.exp(((logp - old_logp) * mask).sum(axis=1) / lengths)
    lo, hi = 1 - cfg.epsilon, 1 + cfg.epsilon_high
    surrogate = mx.minimum(ratio * adv, mx.clip(ratio, lo, hi) * adv)
    per_row = -surrogate + cfg.beta * kl.sum(axis=1) / lengths
    clipped = ((ratio < lo) & (adv < 0)) | ((ratio > hi) & (adv > 0))
    return per_row.sum() / rows, {"clipped": clipped.sum() * 1.0, "kl": kl.sum(),
                                  "units": mx.array(float(adv.shape[0]))}


# ----- rollouts -------------------------------------------------------------------------------

def sample_completions(model, tokenizer, prompts: list[list[int]], max_new: int,
                       temperature: float, top_p: float, seed: int,
                       stop: bool = True) -> list[tuple[list[int], bool]]:
    """(tokens, ended) of one sampled completion per prompt, all generated as one batch.

    A completion that ended at an end-of-turn/eos token keeps that token (the update trains the
    model to stop); ``ended`` is False for one cut at ``max_new`` tokens. The draws depend only
    on ``seed``, the model and the prompts. ``stop=False`` never stops before ``max_new``
    (``plan``'s worst case). A prompt that appears several times (a GRPO group) is prefilled
    once (``shared_prompt_caches``).
    """
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    from macft.generation import decoding

    eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id])
    was_training = model.training
    model.eval()
    gen = None
    try:
        with decoding():
            inserts, caches, histories = shared_prompt_caches(model, prompts)
            mx.random.seed(seed)
            gen = BatchGenerator(model, max_tokens=max_new,
                                 stop_tokens=[[t] for t in eos] if stop else None,
                                 sampler=make_sampler(temp=temperature,
                                                      top_p=top_p if top_p < 1 else 0.0),
                                 completion_batch_size=len(prompts),
                                 prefill_batch_size=len(prompts))
            uids = gen.insert(inserts, [max_new] * len(prompts), caches=caches,
                              all_tokens=histories)
            out = {uid: ([], False) for uid in uids}
            while responses := gen.next_generated():
                for r in responses:
                    tokens, _ = out[r.uid]
                    tokens.append(r.token)
                    if r.finish_reason is not None:
                        out[r.uid] = (tokens, r.finish_reason == "stop")
    finally:
        if gen is not None:
            gen.close()
        model.train(was_training)
    return [out[uid] for uid in uids]


def shared_prompt_caches(model, prompts: list[list[int]]):
    """(prompts to insert, caches, token histories) for ``BatchGenerator.insert``.

    A GRPO rollout samples G completions of each prompt. Prefilling each copy separately
    repeats the same work G times (measured: about a third of a quickstart rollout), so each
    distinct prompt but its last token goes through the model once and its copies start from
    that KV cache (``BatchGenerator`` merges the copies into its own batch cache, so the shared
    arrays are only read). Without repeats, or where the model's cache cannot be merged that
    way, the prompts go in whole: (prompts, None, None).
    """
    from mlx_lm.models.cache import make_prompt_cache

    keys = [tuple(p) for p in prompts]
    if len(set(keys)) == len(keys) or min(len(p) for p in prompts) < 2:
        return prompts, None, None
    probe = make_prompt_cache(model)
    if not all(type(c).__name__ == "KVCache" for c in probe):
        return prompts, None, None       # rotating windows, SSM states: no shared prefill
    states: dict[tuple, list] = {}          # per distinct prompt: each layer's (keys, values)
    for key in dict.fromkeys(keys):
        cache = make_prompt_cache(model)
        model(mx.array([key[:-1]]), cache=cache)
        states[key] = [c.state for c in cache]
        mx.eval(states[key])
    caches = []
    for key in keys:
        fork = make_prompt_cache(model)
        for target, state in zip(fork, states[key]):
            target.state = state
        caches.append(fork)
    return [list(k[-1:]) for k in keys], caches, [list(k[:-1]) for k in keys]


@dataclass
class Rollout:
    """One rollout batch: everything the updates on it need, and what its metrics report."""

    number: int
    inputs: np.ndarray          # (N, T) int32 prompt + completion, minus the last token
    targets: np.ndarray         # (N, T) int32 shifted by one
    mask: np.ndarray            # (N, T) float32: 1 on completion tokens (eos included)
    rewards: np.ndarray         # (N, R) each reward's score
    advantages: np.ndarray      # (N,) float32
    keep: np.ndarray            # (N,) bool: rows the update uses (DAPO drops zero-spread groups)
    old_logp: np.ndarray | None  # (N, T) float32 under the policy that sampled; None with
                                 # one update per rollout (the update's own, detached)
    ref_logp: np.ndarray | None  # (N, T) float32 under the base (adapters off); None if beta 0
    texts: list[str]
    reward_names: list[str]
    weights: list[float]
    seconds: float              # sampling time
    info: dict = field(default_factory=dict)

    @property
    def total(self) -> np.ndarray:
        return self.rewards @ np.asarray(self.weights, dtype=np.float64)

    def arrays(self) -> dict:
        out = {k: getattr(self, k) for k in ("inputs", "targets", "mask", "rewards",
                                             "advantages")}
        out["keep"] = self.keep.astype(np.int32)
        if self.old_logp is not None:
            out["old_logp"] = self.old_logp
        if self.ref_logp is not None:
            out["ref_logp"] = self.ref_logp
        return out


def collate_rollout(prompts: list[list[int]], completions: list[list[int]], pad: int):
    """(inputs, targets, mask) of prompt + completion rows, right-padded."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    T = max(len(s) for s in seqs) - 1
    inputs = np.full((len(seqs), T), pad, dtype=np.int32)
    targets = np.full((len(seqs), T), pad, dtype=np.int32)
    mask = np.zeros((len(seqs), T), dtype=np.float32)
    for b, (p, s) in enumerate(zip(prompts, seqs)):
        n = len(s) - 1
        inputs[b, :n] = s[:-1]
        targets[b, :n] = s[1:]
        mask[b, len(p) - 1:n] = 1.0     # the targets that are completion tokens
    return inputs, targets, mask


def completion_logps(model, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray):
    """(B, T) log-prob of each target token under ``model``, 0 where ``mask`` is 0."""
    rows, width = mask.shape
    positions = trained_positions(mask)
    ce = token_losses(model, mx.array(inputs), mx.array(targets), positions)
    return mx.zeros((rows * width,), dtype=mx.float32).at[positions].add(-ce).reshape(rows, width)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield np.arange(start, min(n, start + size))


# ----- the objective --------------------------------------------------------------------------

def load_rewards(specs: list, base_dir, tokenizer=None):
    """The recipe's rewards (``macft.rewards``). ``recipe.load`` made a recipe file's reward
    files absolute; ``base_dir`` (the cwd) serves recipes built from a mapping."""
    from macft.rewards import build_rewards

    return build_rewards(specs, base_dir, tokenizer)


def score(rewards, texts: list[str], rows) -> np.ndarray:
    """(N, R) scores of each completion by each reward; a reward that raises ends the run
    with ``macft.rewards.RewardError`` naming the reward and the row (its file line)."""
    from macft.rewards import score_rows

    if not texts:
        return np.zeros((0, len(rewards)))
    scores, _ = score_rows(rewards, texts, [r.data for r in rows], [r.line for r in rows])
    return np.asarray(scores, dtype=np.float64).reshape(len(texts), len(rewards))


def best_score(reward) -> float:
    """A reward's full score: 0 for the max_length penalty, 1 for the others (the built-ins
    score in [0, 1]; a user reward is taken to as well)."""
    if getattr(getattr(reward, "spec", None), "name", "") == "max_length":
        return 0.0
    return float(getattr(reward, "best", 1.0))


class Grpo(Objective):
    """GRPO-family policy optimisation on prompt rows with the recipe's rewards."""

    name = "grpo"
    step_metrics = ("reward", "reward_std", "zero_spread", "kl", "clip_fraction",
                    "completion_length", "rollout_tokens_per_sec", "update_tokens_per_sec")
    eval_metrics = ("reward", "accuracy")

    def __init__(self, recipe, world):
        super().__init__(recipe, world)
        if world.active:
            raise MacftError("objective grpo runs in one process (distributed GRPO is not "
                             "supported yet)")
        self.spec = recipe.grpo
        self.cfg = LossConfig.of(recipe.grpo)
        self.rollout: Rollout | None = None
        self.events: list = []
        self.rewards = None

    # ----- data -------------------------------------------------------------------------------
    def load_batches(self, tokenizer) -> DataBundle:
        from macft.data import load_rows
        from macft.data.prompts import PromptBatcher, encode_prompts

        spec, g = self.recipe.data, self.spec
        self.tokenizer = tokenizer
        self.prompts, summary = encode_prompts(load_rows(spec.train), tokenizer, spec,
                                               spec.train)
        train = PromptBatcher(self.prompts, g.prompts_per_step, self.recipe.train.seed,
                              g.updates_per_rollout, g.group_size, g.max_new_tokens)
        stats = {"train": summary}
        self.valid_prompts = None
        if spec.valid:
            self.valid_prompts, stats["valid"] = encode_prompts(load_rows(spec.valid), tokenizer,
                                                                spec, spec.valid)
        return DataBundle(train, self.valid_prompts, stats, [])

    def setup(self, model, run_dir, backend, total_steps) -> None:
        from pathlib import Path

        super().setup(model, run_dir, backend, total_steps)
        from macft.data import pad_id

        self.pad = pad_id(self.tokenizer)
        self.rollout_dir = Path(run_dir) / "rollouts"
        self.rewards = load_rewards(self.spec.rewards, Path.cwd(), self.tokenizer)
        self.loss_and_grad = nn.value_and_grad(model, self._loss)

    # ----- rollouts ---------------------------------------------------------------------------
    def _rollout_path(self, number: int):
        return self.rollout_dir / f"rollout-{number:07d}.safetensors"

    def rollout_for(self, pb) -> Rollout:
        if self.rollout is not None and self.rollout.number == pb.rollout >= 0:
            return self.rollout
        path = self._rollout_path(pb.rollout) if pb.rollout >= 0 else None
        if path is not None and path.exists():
            self.rollout = self._read(path, pb.rollout)
        else:
            self.rollout = self.make_rollout(pb)
            if path is not None:
                self._write(path, self.rollout)
        return self.rollout

    def make_rollout(self, pb) -> Rollout:
        g = self.spec
        prompts = [self.prompts[i] for i in pb.index]
        ids = [p.ids for p in prompts for _ in range(g.group_size)]
        t0 = time.monotonic()
        seed = self.recipe.train.seed * 1_000_003 + 7919 * max(pb.rollout, 0) + 1
        drawn = sample_completions(self.model, self.tokenizer, ids, g.max_new_tokens,
                                   g.temperature, g.top_p, seed, stop=not pb.worst)
        seconds = time.monotonic() - t0
        completions = [c for c, _ in drawn]
        texts = [self._decode(c) for c in completions]
        rows = [p.row for p in prompts for _ in range(g.group_size)]
        scores = score(self.rewards, texts, rows)
        weights = [float(r.weight) for r in self.rewards]
        total = scores @ np.asarray(weights, dtype=np.float64)
        adv = group_advantages(total, g.group_size, g.loss != "dr_grpo").astype(np.float32)
        keep = np.ones(len(ids), dtype=bool)
        if g.loss == "dapo":                         # dynamic sampling: no signal, no rows
            keep = ~np.repeat(zero_spread(total, g.group_size), g.group_size)
        inputs, targets, mask = collate_rollout(ids, completions, self.pad)
        old, ref = self._logps(inputs, targets, mask)
        info = {"generated": int(sum(len(c) for c in completions)),
                "ended": int(sum(e for _, e in drawn))}
        return Rollout(pb.rollout, inputs, targets, mask, scores, adv, keep, old, ref, texts,
                       [r.name for r in self.rewards], weights, seconds, info)

    def _decode(self, tokens: list[int]) -> str:
        eos = set(getattr(self.tokenizer, "eos_token_ids", None) or [])
        return self.tokenizer.decode([t for t in tokens if t not in eos])

    def _logps(self, inputs, targets, mask):
        """Old (the sampling policy) and reference (adapters off) log-probs, in eval mode.

        With one update per rollout the old log-probs are not computed here: the update's
        weights are the sampling policy's, so its own log-probs (detached) are the old ones
        and the ratio is exactly 1 (TRL does the same with one iteration). That saves a
        forward pass over every completion. Later updates on the same rollout need the
        sampling policy's values, so with ``updates_per_rollout > 1`` they are computed.
        """
        from macft.models import adapters

        size = self.recipe.train.batch_size
        was_training = self.model.training
        self.model.eval()
        try:
            old = None
            if self.spec.updates_per_rollout > 1:
                old = self._logps_by_chunk(inputs, targets, mask, size)
            ref = None
            if self.cfg.beta > 0:
                with adapters.disabled(self.model):
                    ref = self._logps_by_chunk(inputs, targets, mask, size)
        finally:
            self.model.train(was_training)
        return old, ref

    def _logps_by_chunk(self, inputs, targets, mask, size) -> np.ndarray:
        out = np.zeros(mask.shape, dtype=np.float32)
        for idx in _chunks(mask.shape[0], size):
            lp = completion_logps(self.model, inputs[idx], targets[idx], mask[idx])
            mx.eval(lp)
            out[idx] = np.array(lp)
        return out

    def _write(self, path, ro: Rollout) -> None:
        from macft.runs import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"texts": json.dumps(ro.texts), "names": json.dumps(ro.reward_names),
                "weights": json.dumps(ro.weights), "seconds": repr(ro.seconds),
                "info": json.dumps(ro.info)}
        with atomic_path(path) as tmp:
            mx.save_safetensors(str(tmp), {k: mx.array(v) for k, v in ro.arrays().items()}, meta)
        for old in sorted(self.rollout_dir.glob("rollout-*.safetensors"))[:-KEEP_ROLLOUTS]:
            old.unlink(missing_ok=True)

    def _read(self, path, number: int) -> Rollout:
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise MacftError(f"{path}: rollout file is unreadable ({exc})".splitlines()[0]) \
                from None
        a = {k: np.array(v) for k, v in arrays.items()}
        return Rollout(number, a["inputs"], a["targets"], a["mask"], a["rewards"],
                       a["advantages"], a["keep"].astype(bool), a.get("old_logp"),
                       a.get("ref_logp"),
                       json.loads(meta["texts"]), json.loads(meta["names"]),
                       json.loads(meta["weights"]), float(meta["seconds"]),
                       json.loads(meta["info"]))

    # ----- the update -------------------------------------------------------------------------
    def _loss(self, model, inputs, targets, mask, old, ref, adv, rows, tokens):
        logp = completion_logps(model, inputs, targets, mask)
        old = mx.stop_gradient(logp) if old is None else mx.array(old)
        return policy_loss(logp, old, None if ref is None else mx.array(ref),
                           mx.array(adv), mx.array(mask), self.cfg, rows, tokens)

    def step(self, batches) -> StepResult:
        pb = batches[0]
        ro = self.rollout_for(pb)
        rows = np.flatnonzero(ro.keep)
        t0 = time.monotonic()
        grads, loss_sum, sums = None, 0.0, {"clipped": 0.0, "kl": 0.0, "units": 0.0}
        tokens = float(ro.mask[rows].sum())
        for part in _chunks(len(rows), self.recipe.train.batch_size):
            idx = rows[part]
            ref = None if ro.ref_logp is None else ro.ref_logp[idx]
            old = None if ro.old_logp is None else ro.old_logp[idx]
            (loss, m), g = self.loss_and_grad(self.model, ro.inputs[idx], ro.targets[idx],
                                              ro.mask[idx], old, ref,
                                              ro.advantages[idx], len(rows), tokens)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(loss, grads, m)
            loss_sum += loss.item()
            for k in sums:
                sums[k] += m[k].item()
        update_s = time.monotonic() - t0
        in_tokens = int((ro.inputs[rows] != self.pad).sum()) if len(rows) else 0
        metrics = self.rollout_metrics(ro)
        metrics.update(
            kl=sums["kl"] / max(float(ro.mask[rows].sum()), 1.0),
            clip_fraction=sums["clipped"] / max(sums["units"], 1.0),
            update_tokens_per_sec=in_tokens / max(update_s, 1e-9))
        self._queue_samples(pb, ro)
        return StepResult(loss_sum, in_tokens, grads, metrics)

    def rollout_metrics(self, ro: Rollout) -> dict:
        g = self.spec
        total = ro.total
        m = {"reward": float(total.mean()), "reward_std": float(total.std()),
             "zero_spread": float(zero_spread(total, g.group_size).mean()),
             "completion_length": float(ro.mask.sum(axis=1).mean()),
             "rollout_tokens_per_sec": ro.info.get("generated", 0) / max(ro.seconds, 1e-9)}
        for j, name in enumerate(ro.reward_names):
            m[f"reward_{name}"] = float(ro.rewards[:, j].mean())
            m[f"reward_{name}_std"] = float(ro.rewards[:, j].std())
        return m

    def _queue_samples(self, pb, ro: Rollout) -> None:
        g = self.spec
        step = pb.step + 1
        if not g.sample_every or step % g.sample_every or pb.step % g.updates_per_rollout:
            return
        for i in range(min(g.samples, len(ro.texts))):
            prompt = self.prompts[self._prompt_of(pb, i)].text
            scores = {n: float(ro.rewards[i, j]) for j, n in enumerate(ro.reward_names)}
            scores["total"] = float(ro.total[i])
            self.events.append(Sample(step, prompt, ro.texts[i], scores))

    def _prompt_of(self, pb, row: int) -> int:
        return int(pb.index[row // self.spec.group_size])

    def drain_events(self) -> list:
        out, self.events = self.events, []
        return out

    # ----- validation -------------------------------------------------------------------------
    def validate(self) -> tuple[float, dict] | None:
        """Greedy answers to the validation prompts, scored: (-mean total reward, metrics)."""
        if not self.valid_prompts:
            return None
        prompts = self.valid_prompts
        if self.recipe.train.eval_batches:
            prompts = prompts[:self.recipe.train.eval_batches * self.recipe.eval.batch_size]
        report = self._eval_progress()       # in prompts answered: "evaluating 8/16"
        report(0, len(prompts))
        result, *_ = score_greedy(self.model, self.tokenizer, prompts, self.rewards,
                                  self.spec.max_new_tokens, self.recipe.eval.batch_size, report)
        return -result["reward"], result


def accuracy_of(scores: np.ndarray, bests) -> np.ndarray:
    """Per completion: solved when every reward gives its full score (a reward's ``best``
    attribute, 1.0 when it has none: the built-ins score in [0, 1]; a penalty's best is 0)."""
    return (scores >= np.asarray(bests, dtype=np.float64) - 1e-9).all(axis=1)


def score_greedy(model, tokenizer, prompts, rewards, max_tokens: int, batch_size: int,
                 progress=None):
    """Greedy answers to ``prompts`` scored: ({reward, accuracy, reward_<name>}, texts,
    (N, R) scores, solved per prompt); ``progress(done, total)`` after each batch of them."""
    from macft.generation import greedy

    texts = greedy(model, tokenizer, [p.ids for p in prompts], max_tokens, batch_size, progress)
    scores = score(rewards, texts, [p.row for p in prompts])
    weights = np.asarray([float(r.weight) for r in rewards])
    solved = accuracy_of(scores, [best_score(r) for r in rewards])
    out = {"reward": float((scores @ weights).mean()), "accuracy": float(solved.mean())}
    for j, r in enumerate(rewards):
        out[f"reward_{r.name}"] = float(scores[:, j].mean())
    return out, texts, scores, solved
