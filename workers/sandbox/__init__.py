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
    # Imported lazily: the docker SDK and the bwrap probe cost time a process-backend run never needs.
    from workers.sandbox import bwrap, docker

    if name == "docker":
        return docker.DockerBackend()  # SandboxUnavailable when no engine answers or no image is built
    if name == "bwrap":
        return bwrap.BwrapBackend()  # SandboxUnavailable naming the reason when it cannot run here
    if docker.available():
        return docker.DockerBackend()
    if bwrap.available():
        return bwrap.BwrapBackend()
    raise SandboxUnavailable(
        "no isolating sandbox here: start a container engine and run `bbo admin sandbox build`, or install "
        "bubblewrap; `--backend process` (with BBO_ALLOW_UNSAFE_SANDBOX=1) runs without isolation"
    )


__all__ = ["BACKENDS", "SandboxBackend", "SandboxRefused", "SandboxUnavailable", "select"]
