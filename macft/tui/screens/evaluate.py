"""Evaluate: a run's base model vs the tuned run on the recipe's test split, every example."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from macft.tui.bridge import StatusLine

RIGHT, WRONG = "green", "bold red"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def score_rows(score) -> list[tuple[str, str, str]]:
    """(measure, base, tuned) lines of the summary: the numbers of ``macft eval``."""
    b, t = score.base, score.tuned
    rows = [("examples", str(b.examples), str(t.examples)),
            ("exact match", _pct(b.exact_match), _pct(t.exact_match))]
    if b.valid_json is not None or t.valid_json is not None:
        rows += [("valid JSON", _pct(b.valid_json), _pct(t.valid_json)),
                 ("JSON equal", _pct(b.json_equal), _pct(t.json_equal))]
    from macft.report import metric_bars

    base_bars, tuned_bars = metric_bars(b.task, b.exact_match), metric_bars(t.task, t.exact_match)
    for name in base_bars:
        if name not in ("exact match", "valid JSON"):
            rows.append((name, _pct(base_bars[name]), _pct(tuned_bars.get(name))))
    return rows


def change(base_exact: bool, tuned_exact: bool) -> Text:
    """What the run did to one example: fixed it, broke it, or neither."""
    if base_exact == tuned_exact:
        return Text("")
    return Text("fixed", style=RIGHT) if tuned_exact else Text("broke", style=WRONG)


class EvaluateScreen(Screen):
    HELP = ("The base model and the tuned run scored on the recipe's test split (data.test) "
            "with the code of `macft eval`: exact match, valid JSON and the task metrics, then "
            "every example's base, tuned and expected answers, green where equal to the "
            "expected one. The score is kept in the run folder and shown in Home's run list.")
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class Status(StatusLine):
        pass

    class Done(Message):
        def __init__(self, score):
            super().__init__()
            self.score = score

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.score = None   # RunScore once the worker is done

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="eval-status")
        yield DataTable(id="eval-scores", cursor_type="none", show_cursor=False)
        yield DataTable(id="eval-examples", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#eval-scores", DataTable).add_columns("measure", "base", "tuned")
        self.query_one("#eval-examples", DataTable).add_columns("#", "run", "base", "tuned",
                                                                "expected")
        self.query_one("#eval-examples").border_title = \
            f"test split of {self.app.show_path(self.run_dir)}"
        self.query_one("#eval-examples", DataTable).focus()
        self.evaluate()

    @work(thread=True, exclusive=True, group="evaluate")
    def evaluate(self) -> None:
        from macft.evaluation import evaluate_run

        def progress(side: str, done: int, total: int) -> None:
            self.post_message(self.Status(f"generating ({side}) {done}/{total}"))

        try:
            score = evaluate_run(self.run_dir, progress,
                                 lambda text: self.post_message(self.Status(text)))
        except Exception as exc:  # noqa: BLE001 - shown on the screen
            self.post_message(self.Status(str(exc).splitlines()[0] if str(exc) else
                                          type(exc).__name__, error=True))
            return
        self.post_message(self.Done(score))

    def on_evaluate_screen_status(self, message: Status) -> None:
        status = self.query_one("#eval-status", Static)
        status.update(message.text)
        status.set_class(message.error, "error")

    def on_evaluate_screen_done(self, message: Done) -> None:
        score = self.score = message.score
        scores = self.query_one("#eval-scores", DataTable)
        scores.clear()
        for row in score_rows(score):
            scores.add_row(*row)
        table = self.query_one("#eval-examples", DataTable)
        table.clear()
        for i, (b, t) in enumerate(zip(score.base.records, score.tuned.records)):
            cells = [Text(r["prediction"].strip(), style=RIGHT if r["exact"] else WRONG)
                     for r in (b, t)]
            table.add_row(str(i + 1), change(b["exact"], t["exact"]), *cells,
                          b["reference"].strip(), key=str(i))
        self.query_one("#eval-status", Static).update(
            f"{self.app.show_path(score.test)} · greedy, at most {score.max_tokens} tokens · "
            f"green: equal to expected, red: not · saved to score.json")
