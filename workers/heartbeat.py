"""Heartbeats, and processes that die with their parent.

- `WorkerHeartbeat`: a thread of the worker's main process publishes the worker's Heartbeat every few
  seconds (a hash with a TTL, plus the fleet index) and, through a fleet-wide lock, runs the reaper
  (runtime/recovery.py) on its turn.
- `JobBeat`: the running job's own heartbeat, refreshed by the job's watcher thread in the work horse.
- A worker SIGKILLed mid-job must not leave its work horse running as an orphan: RQ no longer accounts
  for it and it would race the requeued run. So the horse asks the kernel for SIGKILL when its worker
  dies (PR_SET_PDEATHSIG, `horses_die_with_worker`), and so does every optimizer process a horse starts
  (`dying_with_parent`): one kill of the worker takes its whole tree down. (bwrap sandboxes have
  `--die-with-parent` of their own; a dead worker's docker containers are swept at the next start.)
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import redis

from queue_schema import keys
from queue_schema.payloads import Heartbeat, JobHeartbeat
from queue_schema.settings import redis_url
from runtime import recovery, rq_adapter
from workers.optimizer_process import LaunchSpec

log = logging.getLogger("bbo.heartbeat")

_PR_SET_PDEATHSIG = 1


def _resolve_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once at import, in the parent: a child between fork and exec should not load libraries.
_PRCTL = _resolve_prctl()


def die_with_parent(parent_pid: int) -> None:
    """In a freshly forked child: be SIGKILLed when the parent dies (strictly, the parent's thread that
    forked us), and exit now if it already has (we were reparented before we could ask)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


_horse_hook_installed = False


def horses_die_with_worker() -> None:
    """From now on every child this process forks from its main thread (RQ forks the work horse there)
    dies with this process. Children forked by those children are left alone: a horse's own sandboxes
    use `dying_with_parent`."""
    global _horse_hook_installed
    if _horse_hook_installed:
        return
    _horse_hook_installed = True
    worker_pid = os.getpid()
    forking = {"pid": 0, "main": False}

    def before() -> None:
        forking["pid"] = os.getpid()
        forking["main"] = threading.current_thread() is threading.main_thread()

    def after_in_child() -> None:
        if forking["pid"] == worker_pid and forking["main"]:
            die_with_parent(worker_pid)

    os.register_at_fork(before=before, after_in_child=after_in_child)


def dying_with_parent(launch: LaunchSpec) -> LaunchSpec:
    """The same launch, whose process is SIGKILLed when the calling thread's process dies. Call it on the
    thread that starts the process and outlives it (PR_SET_PDEATHSIG follows the forking thread)."""
    parent = os.getpid()
    inner = launch.preexec

    def preexec() -> None:
        die_with_parent(parent)
        if inner is not None:
            inner()

    return dataclasses.replace(launch, preexec=preexec)


class JobBeat:
    """A running job's heartbeat: call it often (the job's watcher does, every half second); it writes at
    most every JOB_BEAT_S. Set `study` when a study starts, so the fleet view can say where the job is.

    The key is never deleted, only left to expire: deleting it as the job ends would open a moment in
    which a job still finishing looks dead to the reaper."""

    def __init__(self, r: redis.Redis, job_id: str, worker: str | None) -> None:
        self.r = r
        self.job_id = job_id
        self.worker = worker or os.environ.get("RQ_WORKER_ID", "")
        self.study: int | None = None
        self.started_at = time.time()
        self._last = -math.inf

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < recovery.JOB_BEAT_S:
            return
        beat = JobHeartbeat(
            job_id=self.job_id,
            worker=self.worker,
            host=socket.gethostname(),
            pid=os.getpid(),
            study=self.study,
            started_at=self.started_at,
        )
        self.r.set(keys.job_heartbeat(self.job_id), beat.to_json(), ex=recovery.JOB_HEARTBEAT_TTL_S)
        self._last = now


class WorkerHeartbeat:
    """The worker's heartbeat and its turn at reaping, on a daemon thread of the worker's main process.

    `worker` is the RQ worker: its name, the job it runs and whether it is shutting down are read from it.
    """

    def __init__(self, worker: Any, url: str | None = None) -> None:
        self.worker = worker
        url = url or redis_url()
        # Clients of its own: this thread must never hold a connection of the pool the forking thread uses.
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30)
        self.rq = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bbo-heartbeat", daemon=True)
        self._next_reap = 0.0

    def start(self) -> WorkerHeartbeat:
        """Beat and take a turn at reaping now (a fresh worker is often the first to notice a dead one's
        job), then keep at it in the background."""
        self._tick()
        self._thread.start()
        return self

    def stop(self) -> None:
        """A clean exit: stop beating and leave the fleet at once rather than by expiry."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with contextlib.suppress(redis.RedisError):
            pipe = self.r.pipeline()
            pipe.delete(keys.heartbeat(self.worker.name))
            pipe.zrem(keys.heartbeats_index(), self.worker.name)
            pipe.execute()
        self.r.close()
        self.rq.close()

    def beat(self) -> None:
        job = self._current_job()
        busy = "busy" if job else "idle"
        state = "draining" if rq_adapter.shutdown_requested(self.worker) else busy
        heartbeat = Heartbeat(
            worker=self.worker.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            state=state,
            current_job=job,
            started_at=self.started_at,
        )
        key = keys.heartbeat(self.worker.name)
        pipe = self.r.pipeline()
        # `job` beside the payload: the reaper reads it without parsing (a newer worker's payload).
        pipe.hset(key, mapping={"json": heartbeat.to_json(), "job": job or ""})
        pipe.expire(key, recovery.WORKER_HEARTBEAT_TTL_S)
        pipe.zadd(keys.heartbeats_index(), {self.worker.name: heartbeat.ts})
        pipe.execute()

    def _current_job(self) -> str | None:
        # The in-memory executions only: RQ's `execution` property would fall back to a Redis read
        # through the worker's own connection.
        return rq_adapter.current_job_id(self.worker)

    def _tick(self) -> None:
        try:
            self.beat()
        except Exception as exc:  # a missed beat is retried in a few seconds; the thread must go on
            log.warning("heartbeat of %s failed: %s", self.worker.name, exc)
        if time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + recovery.REAP_INTERVAL_S
        try:
            recovery.reap_if_due(self.r, self.worker.name, rq_conn=self.rq)
        except Exception:
            log.exception("reaper run on %s failed", self.worker.name)

    def _run(self) -> None:
        while not self._stop.wait(recovery.WORKER_BEAT_S):
            self._tick()
