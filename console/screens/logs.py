"""View 3: a job's organizer-only log (sandbox stderr, harness events), with follow mode and search.

Textual's `Log` renders only the lines on screen, so it stays fast with 100k lines; lines are read from the
job's Redis stream in batches, then followed from the last stream id read. A log archived with its score
version is read from the archive, under a notice saying so; an expired one shows only a notice.
"""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Log, OptionList, Static
from textual.widgets.option_list import Option

from console.widgets.cells import safe_cell

FOLLOW_S = 0.5
MAX_LINES = 200_000


class LogsScreen(Screen):
    AUTO_FOCUS = "#logs-log"  # the data, never a hidden input box
    BINDINGS = [
        Binding("f", "toggle_follow", "Follow"),
        Binding("slash", "search", "Search"),
        Binding("escape", "clear_search", "Clear search", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="logs")
        self.sid: str | None = None
        self.job: str | None = None
        self.follow = True
        self.search = ""
        self.lines: list[str] = []
        self._last_id = "-"
        self._generation = 0  # bumps when the job changes: late reads of the previous job are dropped
        self._reading = False
        self._noticed = -1  # the generation whose missing-log notice is shown (each follow read finds it)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("select a submission in view 1 first", id="logs-title")
        yield Input(placeholder="search (enter: show matching lines; empty: all)", id="logs-search")
        with Horizontal():
            with Vertical(id="logs-jobs-pane"):
                yield OptionList(id="logs-jobs")
            yield Log(id="logs-log", max_lines=MAX_LINES, auto_scroll=True)
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(FOLLOW_S, self._tick)

    def on_screen_resume(self) -> None:
        sid = self.app.selected_sid
        if sid is not None and sid != self.sid:
            self.sid = sid
            self._load_jobs(sid)

    @work(thread=True, exclusive=True, group="log-jobs")
    def _load_jobs(self, sid: str) -> None:
        jobs = self.app.data.job_ids(sid)
        self.app.deliver(self._show_jobs, sid, jobs)

    def _show_jobs(self, sid: str, jobs: list[str]) -> None:
        options = self.query_one("#logs-jobs", OptionList)
        options.clear_options()
        options.add_options([Option(safe_cell(job), id=job) for job in jobs])
        self._set_title(f"{sid}: {len(jobs)} job(s)" if jobs else f"{sid}: no jobs")
        if jobs:
            options.highlighted = 0
            self.open_job(jobs[0])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.open_job(event.option.id)

    def open_job(self, job: str) -> None:
        self.job = job
        self._generation += 1
        self.lines = []
        self._last_id = "-"
        self.query_one("#logs-log", Log).clear()
        self._start_read(job, self._generation, "-")

    def _tick(self) -> None:
        # One reader at a time: a thread cannot be interrupted, so a second one would only read the same
        # lines again (a big log takes several ticks to load).
        if self.follow and self.job is not None and self.is_current and not self._reading:
            self._start_read(self.job, self._generation, self._last_id)

    def _start_read(self, job: str, generation: int, after: str) -> None:
        self._reading = True
        self._read(job, generation, after)

    @work(thread=True, group="log-read")
    def _read(self, job: str, generation: int, after: str) -> None:
        try:
            if after == "-" and self.sid is not None:
                # Said before the lines: an archived log is shown (from the archive) with its notice; an
                # expired or unwritten one has only the notice.
                notice = self.app.data.log_notice(self.sid, job)
                if notice is not None:
                    self.app.deliver(self._notice, generation, notice)
            while generation == self._generation:
                lines, last = self.app.data.log_lines(job, after)
                if not lines:
                    return
                self.app.deliver(self._append, generation, after, lines, last)
                after = last
        finally:
            self._reading = False

    def _append(self, generation: int, after: str, lines: list[str], last: str) -> None:
        # A batch must start where the shown log ends: a follow read that overlapped another (a slow
        # store) would otherwise show its lines twice.
        if generation != self._generation or after != self._last_id:
            return
        self._last_id = last
        self.lines.extend(lines)
        shown = [line for line in lines if self.search in line] if self.search else lines
        if shown:
            self.query_one("#logs-log", Log).write_lines(shown)
        self._set_title()

    def _notice(self, generation: int, notice: str) -> None:
        if generation == self._generation and self._noticed != generation:
            self._noticed = generation
            self.query_one("#logs-log", Log).write_line(f"[console] {notice}")

    def _set_title(self, text: str | None = None) -> None:
        if text is None:
            mode = "following" if self.follow else "paused"
            search = f", search {self.search!r}" if self.search else ""
            text = f"{self.sid} / {self.job}: {len(self.lines)} lines ({mode}{search})"
        # The organizer's search words, shown as typed (a `[` of theirs is not markup).
        self.query_one("#logs-title", Static).update(safe_cell(text))

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.query_one("#logs-log", Log).auto_scroll = self.follow
        self._set_title()

    def action_search(self) -> None:
        box = self.query_one("#logs-search", Input)
        box.display = True
        box.focus()

    def action_clear_search(self) -> None:
        box = self.query_one("#logs-search", Input)
        box.value = ""
        box.display = False
        self.apply_search("")

    def apply_search(self, text: str) -> None:
        self.search = text
        log = self.query_one("#logs-log", Log)
        log.clear()
        log.write_lines([line for line in self.lines if text in line] if text else self.lines)
        self._set_title()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "logs-search":
            self.apply_search(event.value)
            self.query_one("#logs-log", Log).focus()

    def selected(self) -> str | None:
        return self.sid
