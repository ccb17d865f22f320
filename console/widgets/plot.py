"""A line plot drawn with braille characters (2 x 4 dots per cell), for the convergence curves."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text
from textual.widget import Widget

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][column] bit of a braille cell


class BraillePlot:
    """Rich renderable: series of y values (shared x = index) on a [y_min, y_max] scale."""

    def __init__(
        self,
        series: Sequence[tuple[str, Sequence[float], str]],
        y_min: float = 0.0,
        y_max: float = 1.0,
        y_label: str = "",
    ) -> None:
        self.series = series
        self.y_min, self.y_max = y_min, y_max
        self.y_label = y_label

    def render_lines(self, width: int, height: int) -> list[Text]:
        axis = 7
        cols, rows = max(4, width - axis), max(2, height - 1)
        grid = [[0] * cols for _ in range(rows)]
        owner: list[list[str]] = [[""] * cols for _ in range(rows)]
        span = (self.y_max - self.y_min) or 1.0
        for _, values, style in self.series:
            if not values:
                continue
            n = len(values)
            for x in range(cols * 2):
                i = x * (n - 1) / max(1, cols * 2 - 1) if n > 1 else 0
                lo = int(i)
                hi = min(lo + 1, n - 1)
                y = values[lo] + (values[hi] - values[lo]) * (i - lo)
                level = (min(max(y, self.y_min), self.y_max) - self.y_min) / span
                dot_y = round((1.0 - level) * (rows * 4 - 1))
                row, sub_row = divmod(dot_y, 4)
                col, sub_col = divmod(x, 2)
                grid[row][col] |= _DOTS[sub_row][sub_col]
                owner[row][col] = style
        lines = []
        for row in range(rows):
            if row == 0:
                label = f"{self.y_max:>6.2f}"
            elif row == rows - 1:
                label = f"{self.y_min:>6.2f}"
            else:
                label = " " * 6
            line = Text(label + "┤", style="dim")
            for col in range(cols):
                bits = grid[row][col]
                line.append(chr(0x2800 + bits) if bits else " ", style=owner[row][col])
            lines.append(line)
        legend = Text(" " * axis)
        for name, _, style in self.series:
            legend.append("━━ ", style=style).append(f"{name}  ")
        legend.append(self.y_label, style="dim")
        lines.append(legend)
        return lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or 12
        yield from self.render_lines(options.max_width, height)


class ConvergencePlot(Widget):
    """The submission's normalized best-so-far per iteration against random search (lower is better)."""

    DEFAULT_CSS = "ConvergencePlot { height: 14; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._series: list[tuple[str, Sequence[float], str]] = []

    def show(self, curve: Sequence[float], random: Sequence[float]) -> None:
        self._series = [("random search", list(random), "yellow"), ("submission", list(curve), "cyan")]
        self.refresh()

    def render(self) -> BraillePlot | Text:
        if not any(values for _, values, _ in self._series):
            return Text("no finished study yet", style="dim")
        values = [v for _, series, _ in self._series for v in series]
        top = max(1.0, max(values))
        bottom = min(0.0, min(values))
        return BraillePlot(self._series, bottom, top, "(normalized best-so-far: lower is better)")
