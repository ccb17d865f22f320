"""What every sandbox backend provides."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

from queue_schema.settings import THREAD_ENV  # noqa: F401 - the backends take it from here
from runtime.spec import Limits
from workers.errors import InstallFailed, SandboxRefused, SandboxUnavailable  # noqa: F401 - re-exported for callers
from workers.optimizer_process import LaunchSpec
from workers.sandbox import uids

# RLIMIT_CPU above the study's time: a backstop against CPU burnt outside calls where the harness cannot
# read the sandbox's counter (the harness counts it against the budget where it can).
CPU_SLACK_S = 10


def cpu_backstop_s(limits: Limits) -> int:
    """The soft RLIMIT_CPU of a study's processes: its cpus x (budget + one call) + slack."""
    per_call = limits.suggest_budget_s + limits.call_timeout_s
    return math.ceil(max(1.0, limits.cpus) * per_call) + CPU_SLACK_S


def sandbox_uid_slot(backend: str, per_sandbox_uids: bool) -> uids.Slot | None:
    """A uid of the sandbox's own (held until released), or None where the backend's sandboxes share one
    uid (cgroups keep them apart, or the operator opted in); no free uid is ours: SandboxUnavailable."""
    if not per_sandbox_uids:
        return None
    try:
        return uids.acquire()
    except uids.NoSlot as exc:
        raise SandboxUnavailable(f"{backend} backend: no sandbox uid free: {exc}") from None


class SandboxBackend(Protocol):
    name: str

    def prepare(self, submission_dir: Path, limits: Limits) -> None:
        """Once per artifact on this worker, before any study (e.g. install bundled wheels)."""

    def launch(self, submission_dir: Path, limits: Limits) -> LaunchSpec:
        """How to start a fresh optimizer host for one study; nothing is shared with other studies."""

    def describe(self) -> dict[str, str]:
        """Provenance recorded with every study (backend, image digest)."""
