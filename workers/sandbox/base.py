"""What every sandbox backend provides."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from competition.spec import Limits
from queue_schema.settings import THREAD_ENV  # noqa: F401 - the backends take it from here
from workers.optimizer_process import LaunchSpec


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here (no engine, no image, unknown name): an infrastructure problem."""


class InstallFailed(RuntimeError):
    """The submission's bundled requirements did not install; the message is safe to show the team."""


class SandboxRefused(RuntimeError):
    """The backend was asked for but is not allowed (the unsafe process backend without the opt-in)."""


class SandboxBackend(Protocol):
    name: str

    def prepare(self, submission_dir: Path, limits: Limits) -> None:
        """Once per artifact on this worker, before any study (e.g. install bundled wheels)."""

    def launch(self, submission_dir: Path, limits: Limits) -> LaunchSpec:
        """How to start a fresh optimizer host for one study; nothing is shared with other studies."""

    def describe(self) -> dict[str, str]:
        """Provenance recorded with every study (backend, image digest)."""
