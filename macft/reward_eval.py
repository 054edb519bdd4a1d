"""`macft eval TARGET --rewards`: greedy answers to held-out prompts scored by GRPO rewards.

The rewards come from a recipe: the one named after ``--rewards``, else the run's own (its
``grpo`` section, or its last stage's for a staged run). The prompts are ``--data``, else the
recipe's ``data.test``. Reported: the mean score of each reward, the mean weighted total, and
the accuracy: the share of prompts where every reward gives its full score (1.0; 0 for the
``max_length`` penalty), i.e. the total reward is at its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from macft.errors import MacftError


@dataclass
class RewardReport:
    prompts: int
    result: dict            # reward, accuracy, reward_<name>
    records: list[dict]

    def lines(self) -> list[str]:
        out = [f"prompts       {self.prompts}",
               f"mean reward   {self.result['reward']:.3f}  (weighted total; at most "
               f"{self.result['reward_max']:.3f})",
               f"accuracy      {self.result['accuracy']:.1%}  (every reward at its full score)"]
        for k, v in self.result.items():
            if k.startswith("reward_") and k != "reward_max":
                out.append(f"  {k[7:]:<12}{v:.3f}")
        return out


def reward_recipe(option: str, recipe):
    """The recipe whose ``grpo.rewards`` score the answers."""
    from macft import recipe as recipe_mod

    if option:
        found = recipe_mod.load(Path(option))
    elif recipe is not None:
        found = recipe
    else:
        raise MacftError("--rewards: name a recipe with grpo.rewards (the target is a model, "
                         "not a run)")
    stages = recipe_mod.stage_recipes(found) if found.stages else [found]
    with_rewards = [s for s in stages if s.grpo.rewards]
    if not with_rewards:
        raise MacftError(f"--rewards: {option or 'the run'}'s recipe has no grpo.rewards")
    return with_rewards[-1]


def evaluate_rewards(model, tokenizer, data: str, recipe, max_tokens: int, batch_size: int,
                     limit: int = 0) -> RewardReport:
    from macft.data import load_rows
    from macft.data.prompts import encode_prompts
    from macft.train.objectives.grpo import best_score, load_rewards, score_greedy

    rows = load_rows(data)
    if limit:
        rows = rows[:limit]
    prompts, _ = encode_prompts(rows, tokenizer, recipe.data, data)
    rewards = load_rewards(recipe.grpo.rewards, Path.cwd(), tokenizer)
    result, texts, scores, solved = score_greedy(model, tokenizer, prompts, rewards,
                                                 max_tokens, batch_size)
    result["reward_max"] = sum(r.weight * best_score(r) for r in rewards if r.weight > 0)
    records = [{"prompt": p.text, "prediction": t, "solved": bool(ok),
                "rewards": {r.name: float(s) for r, s in zip(rewards, line)}}
               for p, t, ok, line in zip(prompts, texts, solved, scores)]
    return RewardReport(len(prompts), result, records)
