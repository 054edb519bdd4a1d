"""Seeded tiny SFT and DPO runs give the pinned per-step losses (torchtune-style recipe pins).

The numbers in tests/golden/pinned_losses.json were recorded by scripts/pin_losses.py on main
before the objectives refactor; any change to the loop, the objectives or the data order that
moves a loss by more than 1e-6 fails here.
"""

from __future__ import annotations

import json

import pytest

from pinned_runs import GOLDEN, TOLERANCE, max_diff, run_tiny


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_tiny_run_losses_match_the_pinned_ones(tmp_path, kind):
    want = json.loads(GOLDEN.read_text())[f"tiny-{kind}"]
    got = run_tiny(tmp_path, kind)
    assert len(got["losses"]) == 6
    assert max_diff(got["losses"], want["losses"]) <= TOLERANCE, (got["losses"], want["losses"])
    assert max_diff(got["val_losses"], want["val_losses"]) <= TOLERANCE
