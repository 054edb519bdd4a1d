"""The forgetting guard: general perplexity at each evaluation, against the base model's.

The baseline is measured in set-up, before the first step (fresh LoRA adapters change
nothing, so this is the base model). When the perplexity rises past ``1 + max_rise`` times
the baseline, the guard says so: the loop then stops (action "stop") or keeps training while
such an evaluation can never become the best adapter (action "keep_best").
"""

from __future__ import annotations

from macft.general import perplexity, text_windows

WINDOWS = 8      # 8 x 128 tokens: a second or two on a small model


class ForgettingGuard:
    def __init__(self, model, tokenizer, max_rise: float, action: str):
        self.windows = text_windows(tokenizer, limit=WINDOWS)
        self.max_rise = max_rise
        self.stops = action == "stop"
        self.baseline = self._measure(model)
        self.fired_at: int | None = None

    @classmethod
    def from_recipe(cls, recipe, model, tokenizer):
        t = recipe.train
        if not t.general_max_rise:
            return None
        return cls(model, tokenizer, t.general_max_rise, t.general_action)

    def _measure(self, model) -> float:
        was_training = model.training
        model.eval()
        try:
            return perplexity(model, self.windows)
        finally:
            if was_training:
                model.train()

    def check(self, model, step: int, metrics: dict) -> bool:
        """Measure; add the numbers to ``metrics``; True when past the bound."""
        ppl = self._measure(model)
        over = ppl > self.baseline * (1 + self.max_rise)
        metrics.update(general_perplexity=ppl, general_baseline=self.baseline,
                       general_over=over)
        if over and self.fired_at is None:
            self.fired_at = step
        return over
