"""The simulator's picture: workers (machines and busy ones) and queue length over simulated time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from autoscaler.simulator import Result


def _thin(values: list, every: int) -> list:
    return values[::every] if every > 1 else values


def _fleet(ax, when: list, workers: list, busy: list, cap: int) -> None:
    # Steps, not lines: the simulator records nothing while the fleet is empty and the clock jumps.
    ax.plot(when, workers, lw=0.6, drawstyle="steps-post", label="machines (booting + idle + busy)")
    ax.plot(when, busy, lw=0.6, drawstyle="steps-post", label="busy workers")
    ax.axhline(cap, color="red", ls="--", lw=0.8, label=f"cap {cap}")
    ax.set_ylabel("workers")
    ax.legend(loc="upper left", fontsize=7)


def _busiest_day(t: list[float], queued: list[int]) -> tuple[int, int]:
    """Index range of the 24 hours with the most queued job-steps (a sliding window)."""
    best, best_lo, lo, total = -1, 0, 0, 0
    hi_best = 0
    for hi, (moment, depth) in enumerate(zip(t, queued, strict=True)):
        total += depth
        while t[lo] < moment - 86400:
            total -= queued[lo]
            lo += 1
        if total > best:
            best, best_lo, hi_best = total, lo, hi + 1
    return best_lo, hi_best


def write_png(result: Result, path: Path, max_points: int = 20_000) -> Path:
    """Write the plot as PNG (Agg backend: no display needed); returns the path."""
    import matplotlib  # heavy, and only the plot needs it: imported here, not with the simulator

    matplotlib.use("Agg")  # before pyplot, hence these imports' order
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    timeline = result.timeline
    every = max(1, len(timeline.t) // max_points)
    when = [datetime.fromtimestamp(t, UTC) for t in _thin(timeline.t, every)]
    summary = result.summary
    figure, axes = plt.subplot_mosaic(
        [["fleet", "fleet"], ["queue", "queue"], ["zoom", "zoom_queue"]],
        figsize=(12, 9),
        layout="constrained",
    )
    _fleet(axes["fleet"], when, _thin(timeline.workers, every), _thin(timeline.busy, every), summary["cap"])
    axes["queue"].sharex(axes["fleet"])
    axes["queue"].plot(when, _thin(timeline.queued, every), lw=0.6, color="tab:purple")
    axes["queue"].set_ylabel("jobs queued")
    axes["queue"].xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    # Months of bursts blur together: the busiest day, step by step, shows the fleet follow the queue.
    lo, hi = _busiest_day(timeline.t, timeline.queued)
    day = [datetime.fromtimestamp(t, UTC) for t in timeline.t[lo:hi]]
    _fleet(axes["zoom"], day, timeline.workers[lo:hi], timeline.busy[lo:hi], summary["cap"])
    axes["zoom_queue"].plot(day, timeline.queued[lo:hi], lw=0.8, drawstyle="steps-post", color="tab:purple")
    axes["zoom_queue"].set_ylabel("jobs queued")
    for name in ("zoom", "zoom_queue"):
        axes[name].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        if day:
            axes[name].set_title(f"busiest day, {day[0]:%Y-%m-%d %H:%M} UTC + 24 h", fontsize=9)
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
