"""A loss chart drawn with block characters: training loss as bars, validation loss as a line.

No plotting library: ``chart_lines`` maps steps to columns (the mean loss of the steps a column
covers) and losses to eighths of a row, which is enough to watch a loss curve fall. Smoothed,
the bars turn faint and the training loss's moving average is drawn over them as a line.
"""

from __future__ import annotations

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
        msg = "waiting for the first step"
        return [Text(msg.center(width), style=AXIS) if r == rows // 2 else Text(" " * width)
                for r in range(height)]
    last = max([s for s, _ in train] + [s for s, _ in val])
    x_max = max(total_steps, last, 1)
    columns = _columns(train, x_max, plot_w)
    average = _columns(ema(train), x_max, plot_w) if smooth else {}
    values = list(columns.values()) + [v for _, v in val]  # what is drawn sets the scale
    lo, hi = min(values), max(values)
    span = hi - lo if hi - lo > 1e-12 else max(abs(hi), 1.0)
    base = lo - 0.1 * span  # so that the lowest loss still shows as a small bar
    scale = rows * 8 / (hi - base if hi > base else 1.0)
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


class LossChart(Widget):
    """Training loss bars and the validation line of one run; call ``update_points`` to
    redraw, set ``smooth`` to draw the training loss's moving average over faint bars."""

    DEFAULT_CSS = """
    LossChart { height: 12; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.total_steps = 0
        self.smooth = False

    def update_points(self, train, val, total_steps: int) -> None:
        self.train, self.val, self.total_steps = list(train), list(val), total_steps
        self.refresh()

    def set_smooth(self, smooth: bool) -> None:
        self.smooth = smooth
        self.refresh()

    def render(self) -> Text:
        lines = chart_lines(self.train, self.val, self.size.width, self.size.height,
                            self.total_steps, self.smooth)
        return Text("\n").join(lines)
