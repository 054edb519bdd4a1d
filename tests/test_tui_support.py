"""Helpers shared by the TUI tests (no tests here): tiny work folder, async runner, waits."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from conftest import write_tiny_model

SIZE = (100, 30)


def run(coro):
    """Textual's run_test is async; pytest-asyncio is not a dependency, so run it here."""
    return asyncio.run(coro)


def write_chat_rows(path: Path, n: int, seed: int = 0, extra: list[dict] | None = None) -> Path:
    lines = []
    for i in range(n):
        a, b = (i * 7 + seed) % 10, (i * 3 + seed) % 10
        lines.append({"messages": [
            {"role": "system", "content": "answer"},
            {"role": "user", "content": f"hello {a} world {b}"},
            {"role": "assistant", "content": f"the answer is {a}{b}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines + (extra or [])))
    return path


def make_workdir(root: Path) -> Path:
    write_tiny_model(root / "model")
    write_chat_rows(root / "train.jsonl", 24)
    write_chat_rows(root / "valid.jsonl", 6, seed=1)
    return root


def linked_home(tmp_path: Path, work: Path) -> Path:
    """A fresh folder whose model and data are links to a module's shared ``make_workdir``."""
    for name in ("model", "train.jsonl", "valid.jsonl"):
        (tmp_path / name).symlink_to(work / name)
    return tmp_path


def train_tiny_run(work: Path, out: Path, steps: int, **extra) -> Path:
    """A finished LoRA run of the tiny model on ``work``'s data, in ``out``."""
    from macft import recipe as recipe_mod
    from macft.train.loop import train

    recipe = recipe_mod.from_dict({
        "name": "tiny", "model": str(work / "model"), "lora": {"rank": 4},
        "data": {"train": str(work / "train.jsonl"), "max_length": 64},
        "train": {"steps": steps, "batch_size": 4, "learning_rate": 1e-2, "save_every": 0},
        "output": str(out), **extra})
    train(recipe, [])
    return out


async def wait_for(pilot, check, timeout: float = 30.0, what: str = "condition", about=None):
    """Let the app run until ``check()`` is truthy (the training thread posts meanwhile);
    ``about()`` adds what the app looked like to a timeout's message."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" +
                                 (f": {about()}" if about else ""))
        await pilot.pause(0.05)


async def type_into(pilot, selector: str, text: str) -> None:
    """Focus an Input, clear it and type ``text`` key by key, as a person would."""
    widget = pilot.app.screen.query_one(selector)
    widget.focus()
    await pilot.pause()
    widget.value = ""
    await pilot.press(*text)


async def press_now(pilot, *keys: str) -> None:
    """Press keys while a run trains. ``Pilot.press`` waits until the process is idle (up to
    a second a key), which it never is with the training thread busy; post the same key
    events the terminal driver would and let the screen handle them."""
    from textual import events

    for key in keys:
        pilot.app.post_message(events.Key(key, key if len(key) == 1 else None))
        await pilot.pause(0.02)


def text_of(widget) -> str:
    """The plain text a Static shows."""
    return str(widget.render())
