"""Every MACFT_* environment switch in the source is declared once, in macft/env.py."""

from __future__ import annotations

import re
from pathlib import Path

from macft import env
from macft.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "macft"


def test_every_switch_named_in_the_source_is_in_the_table():
    named = set()
    for path in PACKAGE.rglob("*.py"):
        named |= set(re.findall(r"\bMACFT_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert named <= set(env.SWITCHES), sorted(named - set(env.SWITCHES))


def test_get_falls_back_to_the_declared_default(monkeypatch):
    monkeypatch.delenv("MACFT_DEQUANT_CACHE_MB", raising=False)
    assert env.get("MACFT_DEQUANT_CACHE_MB") == "4096"
    monkeypatch.setenv("MACFT_DEQUANT_CACHE_MB", "12")
    assert env.get("MACFT_DEQUANT_CACHE_MB") == "12"


def test_options_lists_the_switches(capsys):
    assert main(["options", "--markdown"]) == 0
    out = capsys.readouterr().out
    for s in env.SWITCHES.values():
        assert f"| `{s.name}` | `{s.default}` | {s.help} |" in out


def test_readme_lists_the_switches():
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("<!-- env:start -->\n")[1].split("\n<!-- env:end -->")[0]
    assert block.splitlines() == env.table(True)
