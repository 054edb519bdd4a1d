"""A loss chart drawn with block characters: training loss as bars, validation loss as a line;
or several runs overlaid, one colour each, with a legend.

No plotting library: ``chart_lines`` maps steps to columns (the mean loss of the steps a column
covers) and losses to eighths of a row, which is enough to watch a loss curve fall. Smoothed,
the bars turn faint and the training loss's moving average is drawn over them as a line.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

BLOCKS = " ▁▂▃▄▅▆▇█"
TRAIN = "#5fafd7"
FAINT = "#2f4f5f"       # the raw training loss under its moving average
VAL = "#ffaf00"
AXIS = "#808080"
LABEL_WIDTH = 8
EMA_WEIGHT = 0.9        # each step keeps this much of the average before it (TensorBoard's 0.9)


def ema(points: list[tuple[int, float]], weight: float = EMA_WEIGHT) -> list[tuple[int, float]]:
    """The exponential moving average of ``points``, debiased (its first values are not pulled
    towards 0): ``s = weight * s + (1 - weight) * x`` divided by ``1 - weight ** n``."""
    out, s = [], 0.0
    for n, (step, value) in enumerate(points, 1):
        s = weight * s + (1 - weight) * value
        out.append((step, s / (1 - weight ** n)))
    return out


def _fmt(v: float) -> str:
    return f"{v:.4g}"[:LABEL_WIDTH - 1].rjust(LABEL_WIDTH - 1)


def _columns(points: list[tuple[int, float]], x_max: int, width: int) -> dict[int, float]:
    """Mean value per column; with fewer steps than columns a step spans several columns."""
    by_step: dict[int, list[float]] = {}
    for step, value in points:
        by_step.setdefault(step, []).append(value)
    out = {}
    for col in range(width):
        first = col * x_max // width + 1
        last = max(first, (col + 1) * x_max // width)
        values = [v for s in range(first, last + 1) for v in by_step.get(s, ())]
        if values:
            out[col] = sum(values) / len(values)
    return out


def _column_of(step: int, x_max: int, width: int) -> int:
    return min(width - 1, max(0, (step - 1) * width // max(x_max, 1)))


def _scale(values: list[float], rows: int) -> tuple[float, float, float, float]:
    """(lo, hi, base, eighths per unit) so that the lowest value still shows as a small bar."""
    lo, hi = min(values), max(values)
    span = hi - lo if hi - lo > 1e-12 else max(abs(hi), 1.0)
    base = lo - 0.1 * span
    return lo, hi, base, rows * 8 / (hi - base if hi > base else 1.0)


def _waiting(width: int, height: int) -> list[Text]:
    msg = "waiting for the first step"
    rows = max(height - 1, 1)
    return [Text(msg.center(width), style=AXIS) if r == rows // 2 else Text(" " * width)
            for r in range(height)]


def _framed(cells: list[list[tuple[str, str]]], lo: float, hi: float, x_max: int,
            plot_w: int) -> list[Text]:
    """The plot rows with the loss labels on the left, then the step axis."""
    rows = len(cells)
    labels = {0: _fmt(hi), rows - 1: _fmt(lo)}
    if rows > 4:
        labels[rows // 2] = _fmt((hi + lo) / 2)
    lines = []
    for r in range(rows):
        line = Text(labels.get(r, " " * (LABEL_WIDTH - 1)) + " ", style=AXIS)
        line.append("┤" if r in labels else "│", style=AXIS)
        for char, style in cells[r]:
            line.append(char, style=style)
        lines.append(line)
    left, right = "step 1", f"{x_max}"
    gap = max(plot_w - len(left) - len(right), 1)
    lines.append(Text(" " * LABEL_WIDTH + "└" + left + " " * gap + right, style=AXIS))
    return lines


def _val_line(val: list[tuple[int, float]], x_max: int,
              width: int) -> dict[int, tuple[float, bool]]:
    """Column -> (validation loss, measured there): the evaluations, and between two of them
    the straight line joining them."""
    points = sorted((_column_of(s, x_max, width), v) for s, v in val)
    out = {}
    for (c0, v0), (c1, v1) in zip(points, points[1:]):
        for c in range(c0 + 1, c1):
            out[c] = (v0 + (v1 - v0) * (c - c0) / (c1 - c0), False)
    out.update((c, (v, True)) for c, v in points)
    return out


def chart_lines(train: list[tuple[int, float]], val: list[tuple[int, float]], width: int,
                height: int, total_steps: int = 0, smooth: bool = False) -> list[Text]:
    """``height`` lines of ``width`` cells: ``height - 1`` plot rows and an x-axis label row."""
    rows = max(height - 1, 1)
    plot_w = max(width - LABEL_WIDTH - 1, 1)
    if not train and not val:
        return _waiting(width, height)
    last = max([s for s, _ in train] + [s for s, _ in val])
    x_max = max(total_steps, last, 1)
    columns = _columns(train, x_max, plot_w)
    average = _columns(ema(train), x_max, plot_w) if smooth else {}
    values = list(columns.values()) + [v for _, v in val]  # what is drawn sets the scale
    lo, hi, base, scale = _scale(values, rows)
    cells = [[(" ", "")] * plot_w for _ in range(rows)]
    bar = FAINT if smooth else TRAIN

    def row_of(value: float) -> int:
        return rows - 1 - min(rows - 1, max(0, int((value - base) * scale) // 8))

    def put(r: int, col: int, char: str, colour: str) -> None:
        under = cells[r][col][0]
        cells[r][col] = (char, f"bold {colour} on {bar}" if under == "█" else f"bold {colour}")

    for col, value in columns.items():
        eighths = min(rows * 8, max(1, round((value - base) * scale)))
        full, part = divmod(eighths, 8)
        for r in range(full):
            cells[rows - 1 - r][col] = ("█", bar)
        if part and full < rows:
            cells[rows - 1 - full][col] = (BLOCKS[part], bar)
    for col, value in average.items():
        put(row_of(value), col, "━", TRAIN)
    for col, (value, measured) in _val_line(val, x_max, plot_w).items():
        put(row_of(value), col, "●" if measured else "·", VAL)
    return _framed(cells, lo, hi, x_max, plot_w)


# Colours of overlaid runs, in order (then again from the first).
PALETTE = ("#5fafd7", "#ffaf00", "#87d75f", "#ff5f87", "#af87ff", "#d7d75f", "#5fd7d7",
           "#ff875f")


@dataclass(frozen=True)
class Series:
    """One run's curves in an overlaid chart: (step, loss) points and its colour."""

    name: str
    train: list[tuple[int, float]]
    val: list[tuple[int, float]]
    colour: str
    total_steps: int = 0


def series_for(runs: list[tuple[str, list, list, int]]) -> list[Series]:
    """(name, train, val, total steps) per run -> series with the palette's colours."""
    return [Series(name, list(train), list(val), PALETTE[i % len(PALETTE)], total)
            for i, (name, train, val, total) in enumerate(runs)]


def legend_line(series: list[Series], width: int) -> Text:
    """"━ name" in each run's colour, then what the marks mean; cut to ``width``."""
    line = Text(" " * LABEL_WIDTH + " ")
    for s in series:
        line.append("━ ", style=f"bold {s.colour}")
        line.append(s.name + "  ", style=s.colour)
    line.append("▁▄█ train, ● validation", style=AXIS)
    line.truncate(width)
    return line


def overlay_lines(series: list[Series], width: int, height: int) -> list[Text]:
    """Several runs on one scale: a legend row, ``height - 2`` plot rows and the step axis.
    Each run's training loss is a line of eighth-blocks (the block's top is the loss) and
    its validation losses are dots, all in the run's colour; a later run draws over an
    earlier one where they meet."""
    rows = max(height - 2, 1)
    plot_w = max(width - LABEL_WIDTH - 1, 1)
    steps = [p[0] for s in series for p in s.train + s.val]
    if not steps:
        return [legend_line(series, width)] + _waiting(width, height - 1)
    x_max = max([max(steps)] + [s.total_steps for s in series] + [1])
    columns = [_columns(s.train, x_max, plot_w) for s in series]
    values = [v for c in columns for v in c.values()] + [v for s in series for _, v in s.val]
    lo, hi, base, scale = _scale(values, rows)
    cells = [[(" ", "")] * plot_w for _ in range(rows)]
    for s, cols in zip(series, columns):
        for col, value in cols.items():
            eighths = min(rows * 8, max(1, round((value - base) * scale)))
            r, part = divmod(eighths - 1, 8)
            cells[rows - 1 - r][col] = (BLOCKS[part + 1], s.colour)
        for step, value in s.val:
            col = _column_of(step, x_max, plot_w)
            r = min(rows - 1, int((value - base) * scale) // 8)
            cells[rows - 1 - r][col] = ("●", f"bold {s.colour}")
    return [legend_line(series, width)] + _framed(cells, lo, hi, x_max, plot_w)


class LossChart(Widget):
    """Training loss bars and the validation line of one run (``update_points``; ``smooth``
    draws the training loss's moving average over faint bars), or several runs' curves
    overlaid with a legend (``update_series``)."""

    DEFAULT_CSS = """
    LossChart { height: 12; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.total_steps = 0
        self.smooth = False
        self.series: list[Series] = []

    def update_points(self, train, val, total_steps: int) -> None:
        self.train, self.val, self.total_steps = list(train), list(val), total_steps
        self.refresh()

    def set_smooth(self, smooth: bool) -> None:
        self.smooth = smooth
        self.refresh()

    def update_series(self, series: list[Series]) -> None:
        self.series = list(series)
        self.refresh()

    def render(self) -> Text:
        if self.series:
            lines = overlay_lines(self.series, self.size.width, self.size.height)
        else:
            lines = chart_lines(self.train, self.val, self.size.width, self.size.height,
                                self.total_steps, self.smooth)
        return Text("\n").join(lines)
