"""View 5: the workers (heartbeat age, current job), queue depth over time, the autoscaler's decisions, and
a row per baseline build running on the fleet (units done / total, ETA)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Sparkline, Static

from console.widgets.cells import age, safe_cell
from queue_schema.payloads import Event, utc_iso
from queue_schema.records import BuildProgress
from queue_schema.untrusted import safe_text

STALE_HEARTBEAT_S = 30.0


class FleetScreen(Screen):
    AUTO_FOCUS = "#fleet-workers"  # the data, never a hidden input box

    def __init__(self) -> None:
        super().__init__(id="fleet")

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="fleet-summary")
        yield Static("", id="fleet-pipelines")
        with Horizontal(id="fleet-top"):
            with Vertical(id="fleet-queue"):
                yield Static("queue depth", id="fleet-queue-label", classes="section")
                yield Sparkline([], id="fleet-sparkline")
            yield Static("", id="fleet-autoscaler")
        yield Static("workers", classes="section")
        workers: DataTable = DataTable(id="fleet-workers", cursor_type="row", zebra_stripes=True)
        for name in ("worker", "host", "state", "backend", "heartbeat", "current job"):
            workers.add_column(name, key=name)
        yield workers
        yield Static("autoscaler decisions (newest first)", classes="section")
        decisions: DataTable = DataTable(id="fleet-decisions", cursor_type="row")
        for name in ("time (UTC)", "fleet", "add", "drain", "held", "reason"):
            decisions.add_column(name, key=name)
        yield decisions
        yield Footer()

    def on_screen_resume(self) -> None:
        self.app.refresh_fleet_view()

    def show(self, fleet: dict[str, Any], depths: list[int], events: list[Event], now: float) -> None:
        """The fleet's latest snapshot; the tables are small (workers, a few dozen decisions)."""
        workers = fleet["workers"]
        busy = sum(1 for hb in workers if hb.state == "busy")
        self.query_one("#fleet-summary", Static).update(
            f"{len(workers)} worker(s), {busy} busy  |  "
            f"jobs queued {fleet['queued']}, running {fleet['running']}"
        )
        # An all-zero history would draw as full bars (the sparkline scales to its own range): none then.
        pipelines = self.query_one("#fleet-pipelines", Static)
        pipelines.display = bool(fleet.get("pipelines"))  # no room taken when no build runs
        pipelines.update(_pipelines(fleet.get("pipelines") or [], now))
        self.query_one("#fleet-sparkline", Sparkline).data = list(depths) if any(depths) else []
        now_depth, peak = (depths[-1] if depths else 0), max(depths, default=0)
        self.query_one("#fleet-queue-label", Static).update(
            f"jobs waiting, last {len(depths)} refreshes: now {now_depth}, peak {peak}"
        )
        table = self.query_one("#fleet-workers", DataTable)
        table.clear()
        for hb in workers:
            since = now - hb.ts
            beat = Text(age(since), style="red" if since > STALE_HEARTBEAT_S else "green")
            table.add_row(
                safe_cell(hb.worker),
                safe_cell(hb.host),
                safe_cell(hb.state),
                safe_cell(hb.backend),
                beat,
                safe_cell(hb.current_job or "-"),
                key=hb.worker,
            )
        self.query_one("#fleet-autoscaler", Static).update(_autoscalers(fleet["fleets"]))
        decisions = self.query_one("#fleet-decisions", DataTable)
        decisions.clear()
        for event in reversed(events):
            data = event.data
            decisions.add_row(
                utc_iso(event.ts)[11:19],
                safe_cell(data.get("fleet", "")),
                safe_cell(data.get("add", 0)),
                safe_cell(", ".join(map(str, data.get("drain") or [])) or "-"),
                "held" if data.get("held") else "",
                safe_cell(data.get("error") or data.get("reason", "")),  # a provider's words among them
            )


def _pipelines(builds: list[BuildProgress], now: float) -> Text:
    """One line per baseline build: its spec, units done / total, and its ETA or where its file went."""
    out = Text()
    for build in builds:
        out.append(f"baselines {safe_text(build.spec)}", style="bold")
        out.append(f"  {build.done}/{build.total} units  ")
        if build.written_at is not None:
            out.append(f"written {safe_text(build.path)}", style="green")
        elif build.complete:
            out.append("all units stored: the build command writes the file", style="yellow")
        else:
            eta = build.eta_s(now)
            out.append("ETA -" if eta is None else f"ETA {_duration(eta)}")
        out.append(f"  ({build.build_id})\n", style="dim")
    out.rstrip()
    return out


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _autoscalers(fleets: dict[str, dict[str, Any]]) -> Text:
    if not fleets:
        return Text("no autoscaler has run (workers are managed by hand)", style="dim")
    out = Text()
    for name, status in fleets.items():
        counts = status.get("workers") or {}
        cap = status.get("max_workers", status.get("cap"))
        out.append(f"autoscaler {safe_text(name)}", style="bold")
        dry = ", dry run" if status.get("dry_run") else ""
        out.append(f" ({safe_text(status.get('provider', '?'))}{dry})\n")
        out.append(f"  cap {cap if cap is not None else '-'}  ")
        out.append("  ".join(f"{state} {n}" for state, n in counts.items()) + "\n")
        out.append(f"  queued {status.get('queued', '-')}  running {status.get('running', '-')}  ")
        out.append(f"machine-hours {status.get('machine_hours', 0):.2f}\n")
        out.append(f"  last: {safe_text(status.get('reason', '-'))}\n", style="dim")
    return out
