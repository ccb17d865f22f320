"""Prometheus text exposition (format 0.0.4), written by hand from `service.metrics_snapshot`."""

from __future__ import annotations

from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snapshot: dict[str, Any]) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{inner}}} {value:g}")
            else:
                lines.append(f"{name} {value:g}")

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
    return "\n".join(lines) + "\n"
