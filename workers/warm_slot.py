"""The one warm sandbox a work horse may hold for its job: started before the job is known, taken by the job
for its first study, or closed.

A pre-forked work horse (workers/prefork.py) starts it while it waits for its job, with the backend and
limits of the worker's previous job; the job (workers/job.py) takes it if its own backend and limits are
the same, hands it the submission (`OptimizerProcess.load`) and so skips the sandbox's start-up, the
part of a job's first study that nothing else could hide. A warm sandbox never held anything of a team:
its host has imported the image's modules and waits for its first submission, which is its only one
(it is closed with its study, as every sandbox is). Its limits, network and isolation are those of any
study's sandbox; it was started with the same limits the job's spec asks for, or it is not used.

Its process is a child of the horse, started from the thread that runs the job, so it dies with the horse
(`dying_with_parent`; bwrap's --die-with-parent), which dies with its worker. A container of the docker
backend is removed by its cleanup; one whose horse was killed ends when its attached client does (end of
file on its stdin: a warm host that has not loaded anything exits) and is removed by the next sweep
(`docker.sweep`), like any container of a killed worker.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from runtime.spec import Limits
from workers.heartbeat import dying_with_parent
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import select
from workers.sandbox.base import SandboxBackend

# What a warm host prints (the image's own modules' warnings) before its job takes it, kept for the job's
# log: a bound, since nobody reads it until then.
EARLY_LINES = 50


@dataclass
class WarmSandbox:
    backend_name: str  # as jobs name it ("auto" included), which is what a job's backend is compared with
    backend: SandboxBackend
    limits: Limits
    proc: OptimizerProcess
    early: list[str]  # its organizer log until a job takes it


_held: WarmSandbox | None = None
_lock = threading.Lock()


def start(backend_name: str, limits: Limits) -> WarmSandbox:
    """Start the warm sandbox of this process (closing any it held), on the thread that will run the job.
    SandboxUnavailable and the backend's errors leave it without one."""
    discard()
    backend = select(backend_name)
    launch_warm = getattr(backend, "launch_warm", None)
    if launch_warm is None:
        raise ValueError(f"the {backend.name} backend has no warm sandboxes")
    early: list[str] = []

    def keep(line: str) -> None:
        if len(early) < EARLY_LINES:
            early.append(line)

    proc = OptimizerProcess(dying_with_parent(launch_warm(limits)), log=keep).start()
    warm = WarmSandbox(backend_name, backend, limits, proc, early)
    global _held
    with _lock:
        _held = warm
    return warm


def take(backend_name: str, limits: Limits) -> WarmSandbox | None:
    """The warm sandbox, now the caller's, if it was started for this backend and these limits and is
    still alive; otherwise it is closed and None."""
    global _held
    with _lock:
        warm, _held = _held, None
    if warm is None:
        return None
    if warm.backend_name == backend_name and warm.limits == limits and warm.proc.returncode is None:
        return warm
    _close(warm)
    return None


def discard() -> None:
    """Close the warm sandbox if one is held (a horse whose job did not take it, a worker stopping)."""
    global _held
    with _lock:
        warm, _held = _held, None
    if warm is not None:
        _close(warm)


def held() -> WarmSandbox | None:
    return _held


def _close(warm: WarmSandbox) -> None:
    with contextlib.suppress(Exception):
        warm.proc.kill()  # nothing to ask politely: it has loaded nothing
