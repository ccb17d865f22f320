"""A submission's convergence chart as inline SVG, drawn on the server: no script, no library, no build.

The numbers are competition.scores.convergence's (normalized best-so-far per round, 0 the best known loss,
1 the random-search median; lower is better). The chart is an image with a text alternative (its <title>
and <desc> say what it shows and where each line ends), the two lines differ by dash as well as colour,
and every colour meets WCAG AA contrast on white. Only presentation attributes, never `style=`: a strict
content security policy keeps the chart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 80  # margins: tick labels and the y title left, legend below
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
# Normalized scores are clipped to [-1, 1] per study, but random search's mean curve is not, and an early
# round can sit far above 1: the drawn range stops at Y_CAP so the rest of the chart stays readable.
Y_FLOOR, Y_CAP = -1.0, 2.0
MARKERS_UP_TO = 32  # rounds; beyond this the markers would merge into the line


@dataclass(frozen=True)
class Line:
    kind: str  # the series' class name, for a page's stylesheet and for tests
    name: str  # the legend's text
    colour: str
    width: float
    dash: str | None  # the dash pattern: the lines differ by it, not by colour alone
    marker: str  # "circle" or "square": so do their markers

    def stroke(self) -> str:
        dash = f' stroke-dasharray="{self.dash}"' if self.dash else ""
        return f'stroke="{self.colour}" stroke-width="{_num(self.width)}"{dash}'


SUBMISSION = Line("submission", "this submission", "#1f4e99", 2.5, None, "circle")  # 8.1:1 on white
RANDOM = Line("random", "random search", "#6b6b6b", 2.0, "6 4", "square")  # 5.3:1 on white
Scale = Callable[[float], float]
TEXT, AXIS, GRID = "#222222", "#444444", "#e0e0e0"
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

EMPTY = '<p class="chart-empty">No finished study yet: the convergence chart appears when the first ends.</p>'


def convergence_svg(
    curve: Sequence[float | None],
    random: Sequence[float | None],
    *,
    label: str = "Convergence: normalized best-so-far per round",
    chart_id: str = "convergence",
) -> str:
    """The chart of a submission's `curve` against random search's (`random`), rounds 1..N on x.

    `label` is the chart's title (escaped, so a team's text is safe in it); `chart_id` prefixes the ids
    its title and description are referred to by, distinct per chart when a page shows several. None,
    NaN and infinite values are gaps; values outside the drawn range are drawn at its edge. With no
    finite value in `curve`, a short paragraph instead of an empty chart."""
    if not _ID.fullmatch(chart_id):
        raise ValueError(f"chart_id must be a plain identifier, got {chart_id!r}")
    mine, base = _finite(curve), _finite(random)
    if not any(v is not None for v in mine):
        return EMPTY
    rounds = max(len(mine), len(base))
    lo, hi, step = _y_range([v for v in (*mine, *base) if v is not None])

    def x(i: int) -> float:  # i: 0-based round index
        return LEFT + (PLOT_W / 2 if rounds == 1 else PLOT_W * i / (rounds - 1))

    def y(v: float) -> float:
        return TOP + PLOT_H * (hi - min(max(v, lo), hi)) / (hi - lo)

    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="convergence-chart" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' width="100%" role="img" aria-labelledby="{title_id} {desc_id}"'
        f' font-family="{escape(FONT)}" font-size="12" fill="{TEXT}">',
        f'<title id="{title_id}">{escape(label)}</title>',
        f'<desc id="{desc_id}">{escape(_summary(mine, base))}</desc>',
        *_y_axis(lo, hi, step, y),
        *_x_axis(rounds, x),
        *_series(base, RANDOM, x, y, rounds),
        *_series(mine, SUBMISSION, x, y, rounds),  # drawn last: on top where the two meet
        *_legend([SUBMISSION] + ([RANDOM] if any(v is not None for v in base) else [])),
        "</svg>",
    ]
    return "\n".join(parts)


def _finite(values: Sequence[float | None]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        try:
            f = float(v) if v is not None else math.nan
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) else None)
    return out


def _y_range(values: list[float]) -> tuple[float, float, float]:
    """[lo, hi] on round ticks, always holding [0, 1] (best known to random-search median), widened to
    the data within [Y_FLOOR, Y_CAP]; and the tick step."""
    lo = max(Y_FLOOR, min(0.0, *values))
    hi = min(Y_CAP, max(1.0, *values))
    step = 0.25 if hi - lo <= 1.25 else 0.5
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _num(v: float, digits: int = 1) -> str:
    """A coordinate, compactly: 120.0 -> "120", 33.333 -> "33.3"."""
    text = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _value(v: float) -> str:
    """A score as a reader wants it: three significant digits, no exponent for the usual range."""
    return f"{v:.3g}" if abs(v) >= 0.001 or v == 0 else f"{v:.1e}"


def _last(values: list[float | None], upto: int) -> tuple[int, float] | None:
    """(1-based round, value) of the last finite value at or before round `upto`."""
    for i in range(min(upto, len(values)) - 1, -1, -1):
        value = values[i]
        if value is not None:
            return i + 1, value
    return None


def _summary(mine: list[float | None], base: list[float | None]) -> str:
    """The text alternative: where each line ends, compared at the same round (random search's curve is
    as long as the spec's rounds, a running submission's may be shorter)."""
    n, value = _last(mine, len(mine)) or (0, 0.0)
    text = (
        "Normalized best-so-far per round, lower is better (0 = the best known loss, 1 = random search's"
        f" median). After {n} round{'s' if n != 1 else ''}: this submission {_value(value)}"
    )
    reference = _last(base, n)
    if reference is not None and reference[0] == n:
        text += f", random search {_value(reference[1])}"
    elif not any(v is not None for v in base):
        text += "; no random-search baseline to compare with"
    return text + "."


def _y_axis(lo: float, hi: float, step: float, y: Scale) -> list[str]:
    out = []
    ticks = round((hi - lo) / step)
    for k in range(ticks + 1):
        v = lo + k * step
        py = _num(y(v))
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{py}" y2="{py}" stroke="{GRID}" stroke-width="1"/>'
        )
        anchor = 'text-anchor="end" dominant-baseline="middle"'
        out.append(f'<text x="{LEFT - 8}" y="{py}" {anchor}>{_num(v, 2)}</text>')
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + PLOT_H}" stroke="{AXIS}" stroke-width="1"/>'
    )
    cy = _num(TOP + PLOT_H / 2)
    out.append(
        f'<text x="16" y="{cy}" text-anchor="middle" transform="rotate(-90 16 {cy})">'
        "normalized best-so-far</text>"
    )
    return out


def _x_axis(rounds: int, x: Scale) -> list[str]:
    base = TOP + PLOT_H
    axis = f'stroke="{AXIS}" stroke-width="1"'
    out = [f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{base}" y2="{base}" {axis}/>']
    every = max(1, math.ceil(rounds / 16))  # at most ~16 labels: they stay apart at any width
    for i in range(rounds):
        if (i + 1) % every and i not in (0, rounds - 1):
            continue
        px = _num(x(i))
        out.append(f'<line x1="{px}" x2="{px}" y1="{base}" y2="{base + 5}" {axis}/>')
        out.append(f'<text x="{px}" y="{base + 18}" text-anchor="middle">{i + 1}</text>')
    out.append(f'<text x="{_num(LEFT + PLOT_W / 2)}" y="{base + 36}" text-anchor="middle">round</text>')
    return out


def _series(values: list[float | None], line: Line, x: Scale, y: Scale, rounds: int) -> list[str]:
    """One line per run of finite values (a gap is not drawn across), plus a marker per point when there
    are few: a single finite value still shows."""
    if not any(v is not None for v in values):
        return []
    out = [f'<g class="series series-{line.kind}">']
    run: list[str] = []
    for i, v in enumerate([*values, None]):
        if v is not None:
            run.append(f"{_num(x(i))},{_num(y(v))}")
            continue
        if len(run) > 1:
            points = " ".join(run)
            out.append(f'<polyline points="{points}" fill="none" {line.stroke()} stroke-linejoin="round"/>')
        run = []
    if rounds <= MARKERS_UP_TO:
        for i, v in enumerate(values):
            if v is None:
                continue
            if line.marker == "square":
                corner = f'x="{_num(x(i) - 3)}" y="{_num(y(v) - 3)}"'
                out.append(f'<rect {corner} width="6" height="6" fill="{line.colour}"/>')
            else:
                out.append(f'<circle cx="{_num(x(i))}" cy="{_num(y(v))}" r="3.5" fill="{line.colour}"/>')
    out.append("</g>")
    return out


def _legend(lines: list[Line]) -> list[str]:
    """The lines drawn (a line with no data has no entry), and the one reading rule."""
    y = HEIGHT - 12
    out = []
    for k, line in enumerate(lines):
        x0 = LEFT + k * 200
        out.append(f'<line x1="{x0}" x2="{x0 + 32}" y1="{y}" y2="{y}" {line.stroke()}/>')
        out.append(f'<text x="{x0 + 40}" y="{y}" dominant-baseline="middle">{escape(line.name)}</text>')
    # The y title is too long for the plot's height with this in it: said once, here.
    right = f'x="{LEFT + PLOT_W}" y="{y}" text-anchor="end" dominant-baseline="middle"'
    out.append(f"<text {right}>lower is better</text>")
    return out
