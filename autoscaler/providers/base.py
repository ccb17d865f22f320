"""The provider protocol: what the daemon needs from a source of worker machines.

A machine is one scoring worker (a process, a container, a cloud server) whose RQ worker name is the
machine's name, so the daemon joins the provider's list with the fleet's heartbeats by name. The
provider's own labels are the source of truth about which machines exist: a restarted daemon asks the
provider, not its memory.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis

from autoscaler.errors import CapacityExceeded, ProviderError  # noqa: F401 - re-exported for callers
from queue_schema import keys

MachineState = Literal["running", "draining"]


@dataclass(frozen=True)
class Machine:
    """A machine as the provider sees it (not whether its worker joined: that is the heartbeats' word)."""

    name: str
    created_at: float
    state: MachineState = "running"  # draining: asked to stop warmly, not gone yet
    labels: dict[str, str] = field(default_factory=dict)


def machines_key(provider: str, fleet: str) -> str:
    """The Redis hash of a provider's machine records for a fleet (name -> JSON object)."""
    return keys.autoscaler_machines(provider, fleet)


def counter_key(provider: str, fleet: str) -> str:
    """The counter numbering a fleet's machines (a name is never reused)."""
    return keys.autoscaler_seq(provider, fleet)


class MachineRecords:
    """What only the provider knows of its machines (when made, when asked to drain...), kept in Redis,
    one JSON object per machine name. `r` is a str client."""

    def __init__(self, r: redis.Redis, provider: str, fleet: str) -> None:
        self.r = r
        self.key = machines_key(provider, fleet)

    def all(self) -> dict[str, dict[str, Any]]:
        """Every record by machine name; an unreadable one is left out."""
        out = {}
        for name, raw in self.r.hgetall(self.key).items():
            with contextlib.suppress(ValueError):
                out[name] = json.loads(raw)
        return out

    def get(self, name: str) -> dict[str, Any]:
        return self.all().get(name, {})

    def put(self, name: str, record: dict[str, Any]) -> None:
        self.r.hset(self.key, name, json.dumps(record))

    def drop(self, *names: str) -> None:
        if names:
            self.r.hdel(self.key, *names)


class Provider(Protocol):
    name: str

    def create(self, n: int) -> list[str]:
        """Start n machines that join the fleet by themselves; return their names."""
        ...

    def list(self) -> list[Machine]:
        """Every machine of this fleet that exists now, found through the provider's labels."""
        ...

    def drain(self, name: str) -> None:
        """Warm stop: the worker finishes its running job, takes nothing new, and the machine goes away."""
        ...

    def delete(self, name: str) -> None:
        """Hard stop, for machines that never joined or went silent; gone machines are not an error."""
        ...
