"""The simulator's picture: workers (machines and busy ones) and queue length over simulated time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from autoscaler.simulator import Result


def _thin(values: list, every: int) -> list:
    return values[::every] if every > 1 else values


def write_png(result: Result, path: Path, max_points: int = 20_000) -> Path:
    """Write the plot as PNG (Agg backend: no display needed); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    timeline = result.timeline
    every = max(1, len(timeline.t) // max_points)
    when = [datetime.fromtimestamp(t, UTC) for t in _thin(timeline.t, every)]
    summary = result.summary
    figure, (fleet, queue) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True, layout="constrained")
    fleet.plot(when, _thin(timeline.workers, every), lw=0.6, label="machines (booting + idle + busy)")
    fleet.plot(when, _thin(timeline.busy, every), lw=0.6, label="busy workers")
    fleet.axhline(summary["cap"], color="red", ls="--", lw=0.8, label=f"cap {summary['cap']}")
    fleet.set_ylabel("workers")
    fleet.legend(loc="upper left", fontsize=8)
    queue.plot(when, _thin(timeline.queued, every), lw=0.6, color="tab:purple")
    queue.set_ylabel("jobs queued")
    queue.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    figure.suptitle(
        f"trace {summary['trace']}: {summary['submissions']} submissions, "
        f"p95 time to score {summary['p95_time_to_score_s'] / 3600:.2f} h, "
        f"{summary['machine_hours']:,.0f} machine-h for {summary['busy_machine_hours']:,.0f} busy, "
        f"peak {summary['peak_workers']}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
