"""Sandbox backends: where a study's optimizer process runs.

`docker` and `bwrap` isolate (see the Sandboxes issue); `process` runs the optimizer as a plain child
process with no isolation and is refused unless BBO_ALLOW_UNSAFE_SANDBOX=1.
"""

from __future__ import annotations

from workers.sandbox.base import SandboxBackend, SandboxRefused, SandboxUnavailable
from workers.sandbox.process import ProcessBackend

BACKENDS = ("auto", "docker", "bwrap", "process")


def select(name: str) -> SandboxBackend:
    """The backend called `name`; `auto` picks docker, then bwrap, and never the unsafe process backend."""
    if name not in BACKENDS:
        raise SandboxUnavailable(f"unknown sandbox backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "process":
        return ProcessBackend()
    if name in ("auto", "docker", "bwrap"):
        raise SandboxUnavailable(
            f"sandbox backend {name!r} is not available on this build: docker and bwrap backends are not "
            "installed yet; use --backend process with BBO_ALLOW_UNSAFE_SANDBOX=1 for development"
        )
    raise AssertionError(name)


__all__ = ["BACKENDS", "SandboxBackend", "SandboxRefused", "SandboxUnavailable", "select"]
