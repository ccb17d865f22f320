"""The provider protocol: what the daemon needs from a source of worker machines.

A machine is one scoring worker (a process, a container, a cloud server) whose RQ worker name is the
machine's name, so the daemon joins the provider's list with the fleet's heartbeats by name. The
provider's own labels are the source of truth about which machines exist: a restarted daemon asks the
provider, not its memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

MachineState = Literal["running", "draining"]


@dataclass(frozen=True)
class Machine:
    """A machine as the provider sees it (not whether its worker joined: that is the heartbeats' word)."""

    name: str
    created_at: float
    state: MachineState = "running"  # draining: asked to stop warmly, not gone yet
    labels: dict[str, str] = field(default_factory=dict)


class ProviderError(Exception):
    """The provider could not do what was asked (API down, process failed to start); one line for people."""


class QuotaExceeded(ProviderError):
    """The provider refused more machines (a cap or a cloud quota). `created` lists the ones it did make
    before refusing, so a partial success is not lost."""

    def __init__(self, message: str, created: list[str] | None = None) -> None:
        super().__init__(message)
        self.created = list(created or [])


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
