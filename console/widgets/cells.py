"""Renderers of table cells: progress bars, states, scores, ages. Pure functions of their inputs."""

from __future__ import annotations

from rich.text import Text

from queue_schema.untrusted import safe_text

BAR_WIDTH = 12
_EIGHTHS = " ▏▎▍▌▋▊▉"
STATE_STYLES = {
    "queued": "yellow",
    "running": "bold cyan",
    "scored": "green",
    "stopped": "magenta",
    "failed": "bold red",
}


def safe_cell(value: object, style: str = "") -> Text:
    """Text from the store (a team, a worker, an autoscaler's reason) as a table cell or a Static's
    content: controls made visible (through safe_text, like every face), and a Text, so never parsed as
    markup (a DataTable parses a str cell as Rich markup, a Static a str as Textual's)."""
    return Text(safe_text("" if value is None else value), style=style)


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> Text:
    """A bar in eighths of a cell, then `done/total`."""
    fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[part] if part else "")
    bar = bar.ljust(width)
    style = "green" if total and done >= total else "cyan"
    return Text.assemble((bar, f"{style} on grey23"), f" {done}/{total}")


def state_cell(state: str, disqualified: bool = False) -> Text:
    text = Text(state, style=STATE_STYLES.get(state, ""))
    if disqualified:
        text.append(" DQ", style="bold red")
    return text


def score_cell(score: float | None, running: bool) -> Text:
    if score is None:
        return Text("-", style="dim")
    # The running score is a forecast from the studies finished so far: shown dim and marked.
    return Text(f"~{score:.3f}", style="dim italic") if running else Text(f"{score:.3f}", style="bold")


def age(seconds: float) -> str:
    """Coarse on purpose: a cell only changes when its text does (a handful of updates per minute)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def rank_change(before: int | None, now: int) -> Text:
    if before is None:
        return Text("new", style="cyan")
    if before == now:
        return Text("=", style="dim")
    moved = before - now
    return Text(f"▲{moved}", style="green") if moved > 0 else Text(f"▼{-moved}", style="red")
