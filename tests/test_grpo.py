"""GRPO: the losses against float64 numpy, group advantages, rollouts, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import re
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


# ----- rollouts and runs on a tiny model ------------------------------------------------------

COUNT_A = """
def score(completion, row):
    return completion.count("a") / max(len(completion), 1)
"""


HALF = """
def score(completion, row):
    if int(row["answer"]) % 2 == 0:
        return 0.5                      # even prompts: every completion alike, no signal
    return completion.count("a") / max(len(completion), 1)
"""


def count_a(completion: str) -> float:
    return completion.count("a") / max(len(completion), 1)


def write_prompts(path: Path, n: int = 12) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"hello {i} world", "answer": str(i)}) + "\n")
    return path


@pytest.fixture(scope="module")
def grpo_dir(tmp_path_factory) -> Path:
    from conftest import write_tiny_model

    d = tmp_path_factory.mktemp("grpo")
    write_tiny_model(d / "model")
    write_prompts(d / "train.jsonl")
    write_prompts(d / "valid.jsonl", 4)
    (d / "count_a.py").write_text(COUNT_A)      # a user reward: the share of 'a' characters
    (d / "half.py").write_text(HALF)
    return d


def grpo_raw(d: Path, out: str, **grpo) -> dict:
    return {
        "name": "g", "model": str(d / "model"), "objective": "grpo",
        "lora": {"rank": 4, "alpha": 8},
        "data": {"train": str(d / "train.jsonl"), "valid": str(d / "valid.jsonl"),
                 "max_length": 64},
        "train": {"steps": 6, "batch_size": 4, "learning_rate": 5e-3, "eval_every": 0,
                  "save_every": 2, "seed": 5},
        "grpo": {"group_size": 4, "prompts_per_step": 2, "max_new_tokens": 12,
                 "rewards": [{"name": "user", "file": str(d / "count_a.py"),
                              "function": "score", "label": "count_a"}], "sample_every": 1, "samples": 3, **grpo},
        "output": str(d / out),
    }


def test_rollout_is_seeded_and_masked_after_eos(grpo_dir):
    from macft.models.load import load_base
    from macft.train.objectives.grpo import collate_rollout, sample_completions

    loaded = load_base(str(grpo_dir / "model"), None, "float32", None)
    tok = loaded.tokenizer
    prompt = list(tok.apply_chat_template([{"role": "user", "content": "hello"}],
                                          add_generation_prompt=True))
    prompts = [prompt] * 6 + [prompt[:-2]] * 2
    a = sample_completions(loaded.model, tok, prompts, 20, 1.5, 1.0, seed=11)
    b = sample_completions(loaded.model, tok, prompts, 20, 1.5, 1.0, seed=11)
    c = sample_completions(loaded.model, tok, prompts, 20, 1.5, 1.0, seed=12)
    assert a == b and a != c
    assert len({tuple(t) for t, _ in a}) > 1            # samples of one prompt differ
    eos = set(tok.eos_token_ids)
    for tokens, ended in a:
        assert 1 <= len(tokens) <= 20
        assert ended == (tokens[-1] in eos)
        assert not eos & set(tokens[:-1])               # nothing is generated after eos
    # a sure stop: eos made the only token the sampler can draw
    import mlx.nn as nn

    class EosModel(nn.Module):
        def __init__(self, inner, stop):
            super().__init__()
            self.inner, self.stop = inner, stop
            self.layers = inner.layers

        def __call__(self, x, cache=None):
            logits = self.inner(x, cache=cache)
            return mx.where(mx.arange(logits.shape[-1]) == self.stop, 0.0, -1e9) + 0 * logits

    stopped = sample_completions(EosModel(loaded.model, min(eos)), tok, prompts[:3], 20, 1.0,
                                 1.0, seed=1)
    assert stopped == [([min(eos)], True)] * 3
    completions = [t for t, _ in a]
    inputs, targets, mask = collate_rollout(prompts, completions, 0)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        on = np.flatnonzero(mask[i])
        assert on.tolist() == list(range(len(p) - 1, len(p) - 1 + len(c)))
        assert targets[i, on].tolist() == c
        assert mask[i, len(p) - 1 + len(c):].sum() == 0        # zero after eos / padding


def test_a_group_prefills_its_prompt_once_with_the_same_greedy_answers(grpo_dir):
    from macft.models.load import load_base
    from macft.train.objectives import grpo

    loaded = load_base(str(grpo_dir / "model"), None, "float32", None)
    model, tok = loaded.model, loaded.tokenizer
    long = list(tok.apply_chat_template([{"role": "user", "content": "hello world"}],
                                        add_generation_prompt=True))
    short = long[:-3]
    prompts = [long] * 3 + [short] * 3
    inserts, caches, histories = grpo.shared_prompt_caches(model, prompts)
    assert inserts == [long[-1:]] * 3 + [short[-1:]] * 3
    assert histories == [long[:-1]] * 3 + [short[:-1]] * 3
    assert [c[0].offset for c in caches] == [len(long) - 1] * 3 + [len(short) - 1] * 3
    assert caches[0][0].keys is caches[1][0].keys        # one prefill per distinct prompt
    assert caches[0][0].keys is not caches[3][0].keys
    assert grpo.shared_prompt_caches(model, [long, short]) == ([long, short], None, None)
    # temperature 0 is greedy: the shared prefill leads to the same tokens as one per copy
    shared = grpo.sample_completions(model, tok, prompts, 12, 0.0, 1.0, seed=3)
    original = grpo.shared_prompt_caches
    try:
        grpo.shared_prompt_caches = lambda m, p: (p, None, None)
        whole = grpo.sample_completions(model, tok, prompts, 12, 0.0, 1.0, seed=3)
    finally:
        grpo.shared_prompt_caches = original
    assert shared == whole
    assert shared[0] == shared[2] and shared[3] == shared[5]


def test_one_update_per_rollout_takes_the_old_logps_from_its_own_pass(grpo_dir):
    """No separate pass for the old log-probs: the update's own, detached, give the same loss
    and gradients as the values of an eval-mode pass (dropout 0), with the ratio exactly 1."""
    from mlx.utils import tree_flatten

    from macft import recipe as recipe_mod
    from macft.train.loop import Trainer

    r = recipe_mod.from_dict(grpo_raw(grpo_dir, "run-old-logp", loss="grpo"))
    trainer = Trainer(r, [])
    trainer.setup()
    try:
        obj = trainer.objective
        ro = obj.rollout_for(trainer.micro_batches(0)[0])
        assert ro.old_logp is None
        arrays = mx.load(str(obj._rollout_path(0)))
        assert "old_logp" not in arrays and "advantages" in arrays
        trainer.model.eval()
        old = obj._logps_by_chunk(ro.inputs, ro.targets, ro.mask, 64)
        trainer.model.train()
        args = (ro.inputs, ro.targets, ro.mask)
        n, tokens = len(ro.advantages), float(ro.mask.sum())
        (l1, m1), g1 = obj.loss_and_grad(trainer.model, *args, None, None, ro.advantages, n,
                                         tokens)
        (l2, m2), g2 = obj.loss_and_grad(trainer.model, *args, old, None, ro.advantages, n,
                                         tokens)
        assert l1.item() == pytest.approx(l2.item(), abs=1e-5)
        assert m1["clipped"].item() == 0
        for (k, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2)):
            assert mx.allclose(a, b, atol=1e-5).item(), k
        assert any(mx.abs(a).max().item() > 0 for _, a in tree_flatten(g1))
    finally:
        trainer.close()


def _events(run_dir: Path, kind: str) -> list[dict]:
    from macft.events import read_metrics

    return [e for e in read_metrics(run_dir / "metrics.jsonl") if e["event"] == kind]


@pytest.mark.parametrize("loss", ["grpo", "dapo", "gspo"])
def test_grpo_run_trains_and_reports(grpo_dir, loss):
    from macft import recipe as recipe_mod
    from macft.events import Collect, Sample, Step
    from macft.train import loop
    r = recipe_mod.from_dict(grpo_raw(grpo_dir, f"run-{loss}", loss=loss, beta=0.05))
    sink = Collect()
    done = loop.train(r, [sink])
    assert done.reason == "completed" and done.step == 6
    steps = sink.of(Step)
    assert len(steps) == 6
    for key in ("reward", "reward_std", "reward_count_a", "reward_count_a_std", "zero_spread",
                "kl", "clip_fraction", "completion_length", "rollout_tokens_per_sec",
                "update_tokens_per_sec"):
        assert all(np.isfinite(s.metrics[key]) for s in steps), key
    assert all(0 < s.metrics["completion_length"] <= 12 for s in steps)
    assert steps[0].metrics["kl"] == pytest.approx(0.0, abs=1e-6)   # adapters start at zero
    assert steps[-1].metrics["kl"] > 0
    samples = sink.of(Sample)
    assert len(samples) == 6 * 3
    assert all(set(s.rewards) == {"count_a", "total"} for s in samples)
    assert all(s.rewards["count_a"] == pytest.approx(count_a(s.text))
               for s in samples)
    assert len(list((grpo_dir / f"run-{loss}" / "rollouts").glob("*.safetensors"))) == 3


def test_dapo_drops_groups_with_equal_rewards(grpo_dir):
    from macft import recipe as recipe_mod
    from macft.events import Collect, Step
    from macft.train import loop

    raw = grpo_raw(grpo_dir, "run-dapo-drop", loss="dapo")
    raw["grpo"]["rewards"] = [{"name": "user", "file": str(grpo_dir / "half.py"),
                               "function": "score"}]
    raw["train"]["steps"] = 3
    sink = Collect()
    loop.train(recipe_mod.from_dict(raw), [sink])
    dropped = 0
    for step, path in zip(sink.of(Step), sorted((grpo_dir / "run-dapo-drop" / "rollouts")
                                                .glob("*.safetensors"))):
        arrays = {k: np.array(v) for k, v in mx.load(str(path)).items()}
        equal = zero_spread(arrays["rewards"][:, 0], 4)
        assert arrays["keep"].astype(bool).tolist() == np.repeat(~equal, 4).tolist()
        assert step.metrics["zero_spread"] == pytest.approx(equal.mean())
        dropped += int(equal.sum())
    assert dropped > 0                  # even answers came up: their groups were dropped


def _run(args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "macft", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_adapter_and_completions(grpo_dir):
    import yaml

    paths = {}
    for name in ("straight", "killed"):
        raw = grpo_raw(grpo_dir, f"resume-{name}", updates_per_rollout=2)
        raw["lora"]["dropout"] = 0.1
        raw["train"].update(steps=6, save_every=3)
        paths[name] = grpo_dir / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(raw))
    straight = _run(["run", str(paths["straight"])])
    assert straight.returncode == 0, straight.stderr
    killed = _run(["run", str(paths["killed"])], {"MACFT_DEBUG_KILL_AFTER_STEP": "4"})
    assert killed.returncode == -9
    run_dir = grpo_dir / "resume-killed"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-0000003"
    resumed = _run(["run", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 3 of 6" in resumed.stderr

    a = mx.load(str(grpo_dir / "resume-straight" / "adapters.safetensors"))
    b = mx.load(str(run_dir / "adapters.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert mx.allclose(a[key], b[key], atol=1e-5).item(), key
    assert any(mx.abs(a[k]).max().item() > 0 for k in a if "lora_b" in k)   # it trained

    want = [(e["step"], e["text"], e["rewards"]) for e in
            _events(grpo_dir / "resume-straight", "Sample")]
    got = {}
    for e in _events(run_dir, "Sample"):            # the resumed run's lines come last
        got.setdefault(e["step"], []).append((e["step"], e["text"], e["rewards"]))
    assert [s for step in sorted(got) for s in got[step][-3:]] == want
    assert {s for s, _, _ in want} == {1, 3, 5}      # first step of each rollout batch
    la = [e["loss"] for e in _events(grpo_dir / "resume-straight", "Step")]
    lb = {e["step"]: e["loss"] for e in _events(run_dir, "Step")}
    assert [lb[s] for s in range(1, 7)] == pytest.approx(la, abs=1e-5)


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "bad.jsonl:2: a prompt row's messages must not end with an assistant turn"),
    ({"answer": "3"}, "bad.jsonl:2: a prompt row needs key 'prompt' or 'messages' "
                      "(found: answer)"),
    ({"prompt": ""}, "bad.jsonl:2: key 'prompt' must be a non-empty string"),
    ({"messages": [{"role": "robot", "content": "x"}]},
     "bad.jsonl:2: key 'messages[0].role' must be one of"),
])
def test_bad_prompt_rows_are_one_line_errors(tmp_path, tiny_tokenizer, row, message):
    from macft import recipe as recipe_mod
    from macft.data import load_rows
    from macft.data.prompts import encode_prompts
    from macft.errors import MacftError

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(MacftError) as err:
        encode_prompts(load_rows(path), tiny_tokenizer, recipe_mod.DataSpec(), "bad.jsonl")
    assert str(err.value).replace(str(tmp_path) + "/", "").startswith(message)


def test_a_reward_that_raises_ends_the_run_in_one_line(grpo_dir, tmp_path):
    from macft import recipe as recipe_mod
    from macft.errors import MacftError
    from macft.events import Collect, Failed
    from macft.train import loop

    (tmp_path / "boom.py").write_text("def score(c, row):\n    return 1 / (int(row['answer']) - 7)\n")
    raw = grpo_raw(grpo_dir, "run-boom")
    raw["grpo"]["rewards"] = [{"name": "user", "file": str(tmp_path / "boom.py"),
                               "function": "score"}]
    raw["train"]["steps"] = 12
    sink = Collect()
    with pytest.raises(MacftError) as err:
        loop.train(recipe_mod.from_dict(raw), [sink])
    want = "reward 'score' failed on row 8: ZeroDivisionError: division by zero"
    assert str(err.value) == want                       # line 8 holds answer "7"
    assert sink.of(Failed)[-1].error == want


def test_recipe_bounds_for_grpo(grpo_dir):
    from macft import recipe as recipe_mod
    from macft.errors import MacftError

    for key, value, message in [("group_size", 1, "key 'grpo.group_size' must be >= 2, got 1"),
                                ("top_p", 1.5, "key 'grpo.top_p' must be in (0, 1], got 1.5"),
                                ("temperature", 0.0, "key 'grpo.temperature' must be > 0, got 0"),
                                ("loss", "ppo", "key 'grpo.loss' must be one of grpo, dr_grpo")]:
        raw = grpo_raw(grpo_dir, "unused", **{key: value})
        with pytest.raises(MacftError, match=re.escape(message)):
            recipe_mod.from_dict(raw)
    raw = grpo_raw(grpo_dir, "unused")
    raw["grpo"]["rewards"] = []
    with pytest.raises(MacftError, match="key 'grpo.rewards' is required"):
        recipe_mod.from_dict(raw)


def test_eval_rewards_scores_a_run_and_a_base_model(grpo_dir, capsys):
    import yaml

    from macft.cli import main
    from macft.reward_eval import evaluate_rewards, reward_recipe
    from macft.models.load import load_base
    from macft import recipe as recipe_mod

    raw = grpo_raw(grpo_dir, "unused")
    raw["grpo"]["rewards"] = [{"name": "user", "file": str(grpo_dir / "count_a.py"),
                               "function": "score", "label": "count_a"},
                              {"name": "regex", "pattern": "^$", "weight": 0.5}]
    raw["data"]["test"] = str(grpo_dir / "valid.jsonl")
    (grpo_dir / "eval.yaml").write_text(yaml.safe_dump(raw))
    recipe = reward_recipe(str(grpo_dir / "eval.yaml"), None)
    loaded = load_base(str(grpo_dir / "model"), None, "float32", None)
    report = evaluate_rewards(loaded.model, loaded.tokenizer, str(grpo_dir / "valid.jsonl"),
                              recipe, 8, 4)
    texts = [r["prediction"] for r in report.records]
    assert report.prompts == 4
    assert report.result["reward_count_a"] == pytest.approx(np.mean([count_a(t) for t in texts]))
    empty = np.mean([t.strip() == "" for t in texts])
    assert report.result["reward_regex"] == pytest.approx(empty)
    assert report.result["reward"] == pytest.approx(report.result["reward_count_a"]
                                                    + 0.5 * empty)
    solved = [count_a(t) >= 1.0 and t.strip() == "" for t in texts]   # both at 1.0: never
    assert report.result["accuracy"] == pytest.approx(np.mean(solved))
    assert main(["eval", str(grpo_dir / "model"), "--rewards", str(grpo_dir / "eval.yaml"),
                 "--max-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert f"mean reward   {report.result['reward']:.3f}  (weighted total; at most 1.500)" in out
    assert "prompts       4" in out
    with pytest.raises(recipe_mod.MacftError, match="--rewards: name a recipe"):
        reward_recipe("", None)


def test_plan_measures_the_worst_rollout(grpo_dir):
    from macft import recipe as recipe_mod
    from macft.plan import plan

    r = recipe_mod.from_dict(grpo_raw(grpo_dir, "unused-plan"))
    result = plan(r, budget=64e9, steps=1)
    # 2 prompts x 4 completions, each the longest prompt plus all 12 new tokens
    from macft.data import load_rows
    from macft.data.prompts import encode_prompts
    from macft.models.load import load_base

    tok = load_base(str(grpo_dir / "model"), None, "float32", None).tokenizer
    prompts, _ = encode_prompts(load_rows(grpo_dir / "train.jsonl"), tok, r.data, "t")
    assert result.longest == (8, max(len(p.ids) for p in prompts) + 12 - 1)
    assert result.fits and result.first.peak_bytes > 0


def test_reward_files_are_found_from_the_recipe_folder(grpo_dir, tmp_path, monkeypatch):
    import shutil

    import yaml

    from macft import recipe as recipe_mod

    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(grpo_dir / "count_a.py", folder / "mine.py")
    raw = grpo_raw(grpo_dir, "unused")
    raw["grpo"]["rewards"] = [{"name": "user", "file": "mine.py", "function": "score"}]
    raw["stages"] = [{"objective": "grpo", "grpo": {"rewards": [
        {"name": "user", "file": "mine.py", "function": "score", "weight": 2.0}]}}]
    (folder / "r.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)                         # not the recipe's folder
    r = recipe_mod.load("project/r.yaml")
    assert r.grpo.rewards[0]["file"] == str(folder / "mine.py")
    assert recipe_mod.stage_recipes(r)[0].grpo.rewards[0]["file"] == str(folder / "mine.py")
