"""Rewards for GRPO and `macft eval`: named checks that score one completion against its row.

A recipe lists them with weights (``grpo.rewards``)::

    rewards:
      - {name: json_valid, weight: 1.0}
      - {name: json_fields, weight: 2.0}
      - {name: regex, weight: 0.5, pattern: "^Answer: \\d+\\.$"}
      - {name: user, file: my_rewards.py, function: score, weight: 1.0}

``check_specs`` validates such a list when the recipe is loaded (no user code runs);
``build_rewards`` turns it into callables ``reward(completion, row) -> float`` with ``.name``
and ``.weight``. ``score_rows`` calls them all and turns any failure into one ``RewardError``
naming the reward, the row and the error. The built-in checks live in ``builtins.py``; a user
reward is the user's own Python file (``user.py``).
"""

from __future__ import annotations

from macft.rewards.builtins import BUILTINS
from macft.rewards.spec import (Reward, RewardError, RewardSpec, build_rewards, check_specs,
                                parse_specs, score_rows)

__all__ = ["BUILTINS", "Reward", "RewardError", "RewardSpec", "build_rewards", "check_specs",
           "parse_specs", "score_rows"]
