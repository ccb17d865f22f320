"""The organizers' audit log: every organizer action, who took it, on what, and why.

One append-only Redis stream, never trimmed (organizer actions are rare: thousands, not millions), so a
dispute months later can be answered from it. Every competition function that changes something on an
organizer's behalf records itself here, whichever face (CLI, console) called it.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from queue_schema import keys
from queue_schema.payloads import utc_iso


@dataclass(frozen=True)
class AuditEntry:
    ts: float
    actor: str
    action: str
    target: str
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": utc_iso(self.ts),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "details": self.details,
        }


def default_actor() -> str:
    """Who is acting: `BBO_ACTOR` when set (a shared organizer account), else the login name."""
    actor = os.environ.get("BBO_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "organizer"


def record(r: redis.Redis, action: str, target: str, *, actor: str | None = None, **details: Any) -> None:
    """Append one organizer action; `details` must be JSON-serializable (a reason, a count, a version)."""
    r.xadd(
        keys.audit_log(),
        {
            "ts": repr(time.time()),
            "actor": actor or default_actor(),
            "action": action,
            "target": target,
            "details": json.dumps(details, sort_keys=True, default=str),
        },
    )


def read(r: redis.Redis, count: int = 100, target: str | None = None) -> list[AuditEntry]:
    """The newest `count` entries (optionally about one target), oldest first."""
    entries = []
    for _, fields in r.xrevrange(keys.audit_log(), count=count if target is None else None):
        if target is not None and fields.get("target") != target:
            continue
        entries.append(
            AuditEntry(
                ts=float(fields["ts"]),
                actor=fields["actor"],
                action=fields["action"],
                target=fields["target"],
                details=json.loads(fields.get("details") or "{}"),
            )
        )
        if len(entries) >= count:
            break
    return entries[::-1]
