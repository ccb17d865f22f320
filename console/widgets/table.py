"""A keyed, virtualized table for thousands of rows: only the lines on screen are ever rendered.

Textual's DataTable measures every cell of every row it is given (column auto-width, row heights), which
costs seconds for the few thousand submissions of a competition. Here columns have fixed widths and rows
one line each, so adding, updating or reordering rows is dictionary and list work, and a refresh renders
the twenty-odd lines in view (each row's line is cached until its cells change).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from queue_schema.untrusted import safe_text


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    width: int


class RowTable(ScrollView, can_focus=True):
    """Rows by key, newest on top; a cursor row; `enter` posts `RowTable.Selected`.

    A row is any object; `cells(row)` turns it into the cells of its line, only when the line is drawn (or
    a cell is asked for), so loading thousands of rows costs no rendering at all."""

    BINDINGS = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "Top", show=False),
        Binding("end", "jump(-1)", "Bottom", show=False),
        Binding("enter", "select", "Open", show=False),
    ]

    DEFAULT_CSS = """
    RowTable { background: $surface; }
    RowTable > .rowtable--header { text-style: bold; background: $panel; }
    RowTable > .rowtable--cursor { background: $accent 40%; }
    RowTable:focus > .rowtable--cursor { background: $accent; }
    RowTable > .rowtable--odd { background: $boost; }
    """
    COMPONENT_CLASSES = {"rowtable--header", "rowtable--cursor", "rowtable--odd"}

    class Selected(Message):
        def __init__(self, table: RowTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

    def __init__(
        self, columns: Sequence[Column], cells: Callable[[Any], Sequence[Any]], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.columns = list(columns)
        self.cells = cells
        self._order = {c.key: i for i, c in enumerate(self.columns)}
        self.keys: list[str] = []  # display order
        self._index: dict[str, int] = {}
        self._rows: dict[str, Any] = {}
        self._lines: dict[str, list[Segment]] = {}  # rendered rows, dropped when the row changes
        self.cursor_row = 0

    # -- data ------------------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.keys)

    def clear(self) -> None:
        self.keys, self._index, self._rows, self._lines = [], {}, {}, {}
        self.cursor_row = 0
        self._resized()

    def add_row(self, key: str, row: Any) -> None:
        """Appended at the bottom; `sort` puts rows in order afterwards (once per batch)."""
        if key in self._index:
            raise KeyError(f"row {key!r} exists")
        self._index[key] = len(self.keys)
        self.keys.append(key)
        self._rows[key] = row
        self._resized()

    def add_rows(self, rows: Sequence[tuple[str, Any]]) -> None:
        for key, row in rows:
            self._index[key] = len(self.keys)
            self.keys.append(key)
            self._rows[key] = row
        self._resized()

    def update_row(self, key: str, row: Any) -> None:
        if row != self._rows[key]:
            self._rows[key] = row
            self.invalidate(key)

    def invalidate(self, key: str) -> None:
        """The row's line must be drawn again (its cells depend on something else that changed)."""
        self._lines.pop(key, None)
        self._refresh_row(key)

    def get_row(self, key: str) -> Any:
        return self._rows[key]

    def get_cell(self, key: str, column: str) -> Any:
        return self.cells(self._rows[key])[self._order[column]]

    def column_text(self, column: str) -> list[str]:
        at = self._order[column]
        return [str(self.cells(self._rows[key])[at]) for key in self.keys]

    def remove_row(self, key: str) -> None:
        selected = self.selected_key()
        self.keys.remove(key)
        del self._rows[key]
        self._lines.pop(key, None)
        self._reindex(selected)
        self._resized()

    def sort(self, key: Callable[[str], Any], reverse: bool = False) -> None:
        """Reorder rows by `key(row key)`; the cursor stays on its row."""
        selected = self.selected_key()
        self.keys.sort(key=key, reverse=reverse)
        self._reindex(selected)
        self.refresh()

    def _reindex(self, selected: str | None) -> None:
        self._index = {k: i for i, k in enumerate(self.keys)}
        if selected is not None and selected in self._index:
            self.cursor_row = self._index[selected]
        self.cursor_row = max(0, min(self.cursor_row, len(self.keys) - 1))

    def selected_key(self) -> str | None:
        return self.keys[self.cursor_row] if 0 <= self.cursor_row < len(self.keys) else None

    def visible_keys(self) -> list[str]:
        first = int(self.scroll_y)
        return self.keys[first : first + max(0, self.size.height - 1)]

    # -- rendering -------------------------------------------------------------------------------------

    def _resized(self) -> None:
        width = 1 + sum(c.width + 1 for c in self.columns)
        self.virtual_size = Size(width, len(self.keys) + 1)  # + the header line
        self.refresh()

    def _refresh_row(self, key: str) -> None:
        index = self._index.get(key)
        if index is None:
            return
        y = index - int(self.scroll_y) + 1
        if 1 <= y < self.size.height:
            self.refresh_line(y)

    def _row_text(self, cells: Sequence[Any]) -> Text:
        line = Text(" ", no_wrap=True, end="")
        for column, cell in zip(self.columns, cells, strict=False):
            # A str cell may be a team's (a name, a message): controls made visible. A Text cell was
            # built by a view from data the store's reader already made safe.
            text = cell.copy() if isinstance(cell, Text) else Text(safe_text(cell))
            text.truncate(column.width, overflow="ellipsis", pad=True)
            line.append_text(text)
            line.append(" ")
        return line

    def _segments(self, text: Text) -> list[Segment]:
        return list(text.render(self.app.console))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            header = self._row_text([c.title for c in self.columns])
            style = self.get_component_rich_style("rowtable--header")
            strip = Strip(self._segments(header)).apply_style(style)
            return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, style)
        index = scroll_y + y - 1
        base = self.rich_style
        if index >= len(self.keys):
            return Strip.blank(width, base)
        key = self.keys[index]
        segments = self._lines.get(key)
        if segments is None:
            segments = self._lines[key] = self._segments(self._row_text(self.cells(self._rows[key])))
        style: Style = base
        if index == self.cursor_row:
            style = base + self.get_component_rich_style("rowtable--cursor")
        elif index % 2:
            style = base + self.get_component_rich_style("rowtable--odd")
        strip = Strip(segments).apply_style(style)
        return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, style)

    # -- cursor ----------------------------------------------------------------------------------------

    def move_cursor(self, row: int) -> None:
        if not self.keys:
            return
        old = self.cursor_row
        self.cursor_row = max(0, min(row, len(self.keys) - 1))
        view = max(1, self.size.height - 1)
        if self.cursor_row < self.scroll_y:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= self.scroll_y + view:
            self.scroll_to(y=self.cursor_row - view + 1, animate=False)
        for index in (old, self.cursor_row):
            if 0 <= index < len(self.keys):
                self._refresh_row(self.keys[index])

    def action_move(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor_row + direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        self.move_cursor(0 if where == 0 else len(self.keys) - 1)

    def action_select(self) -> None:
        key = self.selected_key()
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: Click) -> None:
        if event.y >= 1:
            self.move_cursor(int(self.scroll_y) + event.y - 1)
            if event.chain >= 2:
                self.action_select()
