"""`bbo admin baselines build --fleet`: the build's units on the running fleet, followed to the end.

The command enqueues the units not stored yet (runtime/baseline_fleet.py), shows units done / total with
an ETA while the workers run them, and aggregates them into the baseline file once every unit is stored.
Ctrl-C stops the following only: the units stay queued and running on the fleet, and the same command
run again resumes (enqueues nothing that is stored, queued or running) and follows it to the file.
"""

from __future__ import annotations

from typing import Any

import typer

from cli.output import err, fail

INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


def build_on_fleet(plan: Any, spec_arg: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Run the build on the fleet and return (the baseline file's content, a store client, what the
    fleet did); exits the command on an unreachable store, a unit that failed for good, or Ctrl-C."""
    from baselines.build import rich_progress
    from queue_schema import records
    from queue_schema.connection import RedisUnavailable, connect, ping
    from runtime import baseline_fleet, recovery

    try:
        ping()
    except RedisUnavailable as exc:
        fail(f"{exc}; the fleet's store must be up: start `bbo admin up`, or set BBO_REDIS_URL")
    r = connect()
    started = baseline_fleet.start(r, plan)
    err.print(
        f"baselines {plan.name} on the fleet: build {started.build_id}, {started.total} units; "
        f"{started.stored} stored already, {started.pending} queued or running, "
        f"{started.enqueued} enqueued now"
    )
    if not recovery.workers(r):
        err.print("no worker is up: the units wait on the organizers' queue for one (bbo admin worker)")
    try:
        with rich_progress(f"baselines {plan.name} (fleet)") as progress:
            baseline_fleet.follow(r, plan, progress)
    except baseline_fleet.FleetBuildFailed as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        state = records.build_progress(r, started.build_id)
        done = f"{state.done}/{state.total} units stored" if state else "its units"
        err.print(
            f"stopped following; the build goes on on the fleet ({done}). Run "
            f"`bbo admin baselines build --spec {spec_arg} --fleet` again to follow it and write the file."
        )
        raise typer.Exit(INTERRUPTED) from None
    data = baseline_fleet.aggregate(r, plan)
    fleet = {
        "build_id": started.build_id,
        "units": started.total,
        "stored_before": started.stored,
        "pending_before": started.pending,
        "enqueued": started.enqueued,
    }
    return data, r, fleet
