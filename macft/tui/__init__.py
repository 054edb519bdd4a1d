"""The Textual app behind `macft tui`: recipes, data inspector, run monitor, compare, export."""

from __future__ import annotations


def run_app(target: str | None = None) -> int:
    """Open the TUI (on a recipe file or run folder when ``target`` names one)."""
    from macft.tui.app import MacftApp

    MacftApp(target=target, welcome=True).run()
    return 0
