"""Pre-forked work horses: as soon as a job's horse runs, the worker forks the next job's horse, which starts
a warm sandbox while the job runs and the worker then waits for its next job.

RQ forks a fresh horse per job once the job is dequeued, and the job then starts its first study's
sandbox: start-up on every job's critical path (a study's next sandbox is already pre-started inside a
job). Here, once a scoring job's horse runs, the worker forks the horse for the next job. That horse, on
its main thread (the one that will run the job, so the sandbox dies with it), starts a warm sandbox
(workers/warm_slot.py) with the running job's backend and spec limits, the likeliest next ones, then
blocks on a pipe. When the worker dequeues its next job it writes the run's ids into that pipe instead of
forking (runtime/rq_adapter.py's PreforkHooks and run_horse); the horse becomes the job's horse exactly as
a freshly forked one would, and the job takes the warm sandbox if its backend and limits match
(workers/job.py), else closes it and starts a cold one. Forked at the start of the running job rather
than at its end, the warm sandbox is ready for a next job that is already queued, which is the case
that matters: a busy fleet.

A worker that holds no such horse while it waits for a job (it just booted, or its last job was not a
scoring one) forks one for the backend and limits of runtime/warm_hint.py: the latest score version
enqueued, or the competition a gateway serves. So a fresh worker's first job finds its sandbox warm too,
where it once started cold on every new machine. A worker that has waited a whole turn with nothing
queued follows the hint when it changes (a new competition, another backend), replacing its horse. Jobs
other than scoring ones (baseline units) leave a held horse alone and get a horse forked by RQ as usual.

What the pre-forked horse holds is fresh: it was forked from the worker, which runs no job itself, and
its warm sandbox has loaded nothing of any team. It dies with the worker (the fork comes from the
worker's main thread: workers/heartbeat.py's horses_die_with_worker), and its sandbox with it. A worker
that stops closes the pipe: the horse closes its warm sandbox (a container is removed) and exits; one
that does not within STOP_WAIT_S is killed. Burst-mode workers (no next job worth waiting for) and jobs
other than scoring ones (no backend to warm) pre-fork nothing, nor does a worker started with
BBO_WARM_SANDBOXES=0 (every horse then forked by RQ when its job comes, as before).

A horse forked while the worker runs a job holds that job's RQ execution in its copy of the worker;
`rq_adapter.run_horse` empties it before taking its own run. It once did not, and each pre-forked horse
ran its job under the previous job's execution: the job's own started-registry entry stayed behind and
the reaper requeued it as dead (every `bench analysis` run; failed as `infrastructure` after MAX_REAPS),
so warm sandboxes were off by default for a while (37dd399).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from runtime import rq_adapter, warm_hint
from runtime.warm_hint import WarmTarget
from workers import warm_slot

log = logging.getLogger("bbo.worker")

WARM_ENV = "BBO_WARM_SANDBOXES"
SCORE_FUNCTION = "workers.job.score_problem"
HANDOFF_BYTES = 4096  # the run's ids, as one JSON line
STOP_WAIT_S = 10.0


@dataclass
class _Horse:
    pid: int
    handoff: int  # the write end of its pipe
    target: WarmTarget  # what its warm sandbox was started for


class PreforkedHorses(rq_adapter.PreforkHooks):
    """Mixin for the forking worker class (first in the bases)."""

    _next: _Horse | None = None

    @property
    def prefork(self) -> bool:
        return os.environ.get(WARM_ENV, "1").strip() != "0"

    # -- in the worker --
    def horse_started(self, job: Any) -> None:
        if self._may_prefork() and self._next is None:
            target = _target_of(job)
            if target is not None:
                self._fork_next(target)

    def worker_waiting(self, idle: bool) -> None:
        """Before each look at the queues: hold a horse for the hinted target if none is held, and follow a
        changed hint once nothing has been queued for a whole wait (`idle`): until then, a horse started for
        the last job suits the jobs still queued behind it."""
        if not self._may_prefork():
            return
        held = self._next
        if held is not None and not idle:
            return
        target = warm_hint.current(self.connection)
        if target is None or (held is not None and held.target == target):
            return
        if held is not None:
            self._next = None
            _end(held, wait_s=STOP_WAIT_S)
        self._fork_next(target)

    def horse_for(self, job: Any, queue: Any, execution_id: str) -> int | None:
        if not _scoring(job):
            return None  # no sandbox to take: the held horse waits for a scoring job
        horse, self._next = self._next, None
        if horse is None:
            return None
        line = json.dumps([job.id, queue.name, execution_id]).encode() + b"\n"
        try:
            os.write(horse.handoff, line)
        except OSError as exc:  # it died while waiting: fork as usual
            log.warning("worker: the pre-forked horse %s is gone (%s); forking a new one", horse.pid, exc)
            _end(horse, wait_s=0)
            return None
        os.close(horse.handoff)
        return horse.pid

    def worker_ending(self) -> None:
        horse, self._next = self._next, None
        if horse is not None:
            _end(horse, wait_s=STOP_WAIT_S)

    def _may_prefork(self) -> bool:
        return self.prefork and not self.burst and not rq_adapter.shutdown_requested(self)

    def _fork_next(self, target: WarmTarget) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the next horse
            try:
                os.close(write_end)
                os.setpgrp()  # as RQ's horse: the worker's signals to its group are not the horse's
                self._wait_for_job(read_end, target)
            except SystemExit:
                pass  # told to stop while waiting
            except BaseException:  # noqa: BLE001 - a child of a fork never returns into the worker's code
                log.exception("worker: the pre-forked horse failed")
            finally:
                warm_slot.discard()
                os._exit(1)
        os.close(read_end)
        self._next = _Horse(pid, write_end, target)

    # -- in the pre-forked horse --
    def _wait_for_job(self, read_end: int, target: WarmTarget) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _exit_cleanly)
        try:
            warm_slot.start(target.backend, target.limits)
        except Exception as exc:  # noqa: BLE001 - no warm sandbox: the job starts a cold one
            log.warning("worker: no warm sandbox for the next job: %s: %s", type(exc).__name__, exc)
        line = _read_line(read_end)
        if not line:
            warm_slot.discard()
            os._exit(0)
        job_id, queue_name, execution_id = json.loads(line)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        rq_adapter.run_horse(self, job_id, queue_name, execution_id)

    def horse_done(self) -> None:
        warm_slot.discard()  # a job that did not take it (skipped, failed early, another kind of job)


def _scoring(job: Any) -> bool:
    return getattr(job, "func_name", None) == SCORE_FUNCTION


def _target_of(job: Any) -> WarmTarget | None:
    """A scoring job's backend and its spec's limits: what the worker's next job most likely asks for."""
    if not _scoring(job) or not job.args:
        return None
    from queue_schema.payloads import ScoreJob
    from runtime.spec import stored_spec

    try:
        payload = ScoreJob.model_validate(job.args[0])
        spec = stored_spec(job.connection, payload.spec_hash)
    except Exception as exc:  # noqa: BLE001 - no warm sandbox then: the next job starts a cold one
        log.warning("worker: no warm sandbox for the next job: %s: %s", type(exc).__name__, exc)
        return None
    return None if spec is None else WarmTarget(payload.backend, spec.limits)


def _read_line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < HANDOFF_BYTES:
        try:
            chunk = os.read(fd, HANDOFF_BYTES)
        except InterruptedError:
            continue
        if not chunk:
            return b""
        data += chunk
    return data


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _end(horse: _Horse, wait_s: float) -> None:
    """Close its pipe (it closes its sandbox and exits), wait for it, kill its group past `wait_s`."""
    with contextlib.suppress(OSError):
        os.close(horse.handoff)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(horse.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            return
        if time.monotonic() >= deadline:
            with contextlib.suppress(OSError):
                os.killpg(horse.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(horse.pid, 0)
            return
        time.sleep(0.05)
