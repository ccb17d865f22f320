"""Prometheus text exposition (format 0.0.4), written by hand from `service.metrics_snapshot`."""

from __future__ import annotations

from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value in full: `:g` would round a unix timestamp to six digits."""
    number = float(value)
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "+Inf" if number > 0 else "-Inf"
    return str(int(number)) if number.is_integer() else repr(number)


def render(snapshot: dict[str, Any]) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")

    family("bbo_up", "gauge", "1 when the gateway reaches its store.", [({}, 1)])
    queues = snapshot["queues"]
    family(
        "bbo_queue_depth",
        "gauge",
        "Jobs waiting in each RQ queue.",
        [({"queue": q}, v["depth"]) for q, v in queues.items()],
    )
    family(
        "bbo_jobs_running",
        "gauge",
        "Jobs being worked on (RQ started-job registry) per queue.",
        [({"queue": q}, v["running"]) for q, v in queues.items()],
    )
    # Queues are per team, so the totals the fleet is sized by are given too.
    family(
        "bbo_jobs",
        "gauge",
        "Jobs over all queues, waiting (queued) or being worked on (running).",
        [({"state": s}, n) for s, n in snapshot["jobs"].items()],
    )
    family(
        "bbo_submissions",
        "gauge",
        "Submissions by state.",
        [({"state": s}, n) for s, n in snapshot["submissions"].items()],
    )
    family(
        "bbo_scores_done_total",
        "counter",
        "Submissions scored so far (state scored).",
        [({}, snapshot["submissions"].get("scored", 0))],
    )
    family(
        "bbo_failures_total",
        "counter",
        "Failed submissions by cause.",
        [({"cause": c}, n) for c, n in snapshot["failures"].items()],
    )
    family("bbo_workers", "gauge", "Workers with a live heartbeat.", [({}, snapshot["workers"])])
    family("bbo_teams", "gauge", "Registered teams.", [({}, snapshot["teams"])])
    family(
        "bbo_studies_done_total",
        "counter",
        "Studies finished, all submissions.",
        [({}, snapshot["studies_done"])],
    )
    _autoscaler_families(family, snapshot.get("autoscaler", {}))
    return "\n".join(lines) + "\n"


def _autoscaler_families(family: Any, fleets: dict[str, dict[str, Any]]) -> None:
    """Each fleet's autoscaler status (`autoscaler.daemon.read_status`): its last step's figures."""
    family(
        "bbo_autoscaler_workers",
        "gauge",
        "Autoscaled workers by state (booting, idle, busy, draining) at the daemon's last step.",
        [
            ({"fleet": fleet, "state": state}, n)
            for fleet, status in fleets.items()
            for state, n in (status.get("workers") or {}).items()
        ],
    )
    family(
        "bbo_autoscaler_cap",
        "gauge",
        "The fleet's safety cap (most machines the autoscaler may run).",
        [({"fleet": f}, s["cap"]) for f, s in fleets.items() if s.get("cap") is not None],
    )
    family(
        "bbo_autoscaler_machine_hours",
        "gauge",
        "Machine-hours the fleet has spent so far (every machine the provider lists counts).",
        [({"fleet": f}, s.get("machine_hours", 0.0)) for f, s in fleets.items()],
    )
    family(
        "bbo_autoscaler_last_step_timestamp_seconds",
        "gauge",
        "Unix time of the daemon's last step (a stale value: the daemon is down).",
        [({"fleet": f}, s["ts"]) for f, s in fleets.items() if s.get("ts") is not None],
    )
    family(
        "bbo_autoscaler_held",
        "gauge",
        "1 when the last step wanted to act but a cooldown, error, cap or budget held it.",
        [({"fleet": f}, 1 if s.get("held") else 0) for f, s in fleets.items()],
    )
    family(
        "bbo_autoscaler_provider_error",
        "gauge",
        "1 when the last step's provider call failed (quota refused, API down).",
        [({"fleet": f}, 1 if s.get("error") else 0) for f, s in fleets.items()],
    )
