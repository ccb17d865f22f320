"""Start an RQ worker on the bbo queues, with numerical libraries pinned to one thread per job."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.errors import store_refusal
from queue_schema.settings import pin_threads
from runtime import rq_adapter
from runtime.processes import process_alive
from workers.fair_worker import FairWorker
from workers.heartbeat import WorkerHeartbeat, horses_die_with_worker
from workers.sandbox import docker

log = logging.getLogger("bbo.worker")

# While the store refuses writes, a worker probes it this often (with a key that lives this long).
STORE_POLL_S = 5.0
STORE_PROBE_TTL_S = 30
# How often a worker with a container engine removes the containers its horses left behind.
SWEEP_S = 10.0


def preload() -> None:
    """Import the heavy scoring stack once in the parent; RQ's forked work horses inherit it. (Imports
    inside on purpose: preloading is this function's whole point, and importing this module stays cheap.)"""
    import bayesmark.experiment  # noqa: F401
    import bayesmark.sklearn_funcs  # noqa: F401

    import workers.baseline_unit  # noqa: F401
    import workers.job  # noqa: F401

    # The preloaded stack is the worker's for good: moved out of the collector's sight, a horse's collections
    # no longer walk (and copy, page by page, from the forked parent) these hundreds of thousands of
    # objects while its study runs.
    gc.collect()
    gc.freeze()


def _sweep_orphan_sandboxes() -> bool:
    """Containers left by a worker that died on this host would otherwise hold memory forever. Whether
    an engine answered (then the worker keeps sweeping: see _keep_sweeping)."""
    with contextlib.suppress(Exception):
        if docker.available():
            docker.sweep()
            return True
    return False


def _keep_sweeping() -> None:
    """A study's container is removed off the job's path (workers/sandbox/docker.py), so one whose horse
    ended first is left, killed: removed here, on the worker's own time."""
    while True:
        time.sleep(SWEEP_S)
        with contextlib.suppress(Exception):
            docker.sweep()


def run_worker(*, burst: bool = False, name: str | None = None, priority_only: bool = False) -> bool:
    # Before anything else: the fair worker and the reaper rely on RQ internals, tested for one RQ series.
    rq_adapter.check_rq_version()
    pin_threads()
    preload()
    sweeping = _sweep_orphan_sandboxes()
    if sweeping:
        threading.Thread(target=_keep_sweeping, name="sandbox-sweeper", daemon=True).start()
    queues = [keys.PRIORITY_QUEUE] if priority_only else [keys.PRIORITY_QUEUE, keys.SCORE_QUEUE]
    worker_name = name or f"bbo-{socket.gethostname()}-{os.getpid()}"
    # Recovery (workers/heartbeat.py): the work horse dies with this process, a thread beats and reaps.
    horses_die_with_worker()
    worked = False
    while True:
        worker = FairWorker(queues, connection=rq_connection(), name=worker_name, teams=not priority_only)
        _forget_dead_namesake(worker)
        heartbeat = WorkerHeartbeat(worker).start()
        try:
            worked = worker.work(burst=burst, logging_level="WARNING") or worked
            refusal = None if burst or _stopping(worker) else _refusal_now(worker)
        except redis.ResponseError as exc:
            refusal = store_refusal(exc)
            if refusal is None or _stopping(worker):
                raise
        finally:
            heartbeat.stop()
        if refusal is None:
            if sweeping:  # what its last horses left, before this worker goes
                _sweep_orphan_sandboxes()
            return worked
        # RQ quits on an error it does not expect, and every write failing is one. Quitting would take the
        # whole fleet down with the store (and have the autoscaler replace machines that are fine): wait
        # for the store instead, then work again under the same name. The job that was cut short is
        # requeued by the reaper, and resumes at its next unfinished study.
        log.error(
            "worker %s: the store refuses writes (%s); waiting for it to take them again",
            worker.name,
            refusal,
        )
        if not _wait_for_writes(worker):
            return worked
        log.warning("worker %s: the store takes writes again; back to work", worker.name)


def _forget_dead_namesake(worker: Any) -> None:
    """A worker restarted under its old name (by `bbo admin up`, or a service manager) finds its killed
    predecessor still registered: RQ keeps a worker's key for 8 minutes and refuses a second worker of that
    name, and the reaper that would clear it runs on workers, perhaps none but this one. A predecessor
    that ran on this host under a PID that is gone (or is ours: a new PID namespace) is forgotten now;
    its job is requeued by the reaper as any dead worker's."""
    with contextlib.suppress(redis.RedisError):
        host, pid, death = rq_adapter.registered_identity(worker)
        if death or host != socket.gethostname() or not pid.isdigit():
            return
        if int(pid) != os.getpid() and process_alive(int(pid)):
            return
        pipe = worker.connection.pipeline()
        rq_adapter.forget_registration(worker, pipe)
        pipe.execute()
        log.warning(
            "worker %s: forgot its predecessor (pid %s), which died without leaving", worker.name, pid
        )


def _refusal_now(worker: Any) -> str | None:
    """Why the store refuses this worker's writes right now, or None if it takes them (a probe key)."""
    try:
        worker.connection.set(keys.lock(f"probe:{worker.name}"), "1", ex=STORE_PROBE_TTL_S)
    except redis.ResponseError as exc:
        return store_refusal(exc)
    except redis.RedisError:
        return None  # not a refusal: unreachable, which RQ and the supervisor already handle
    return None


def _stopping(worker: Any) -> bool:
    """Whether the worker was asked to stop (a signal: RQ records when, busy or not)."""
    return rq_adapter.shutdown_requested(worker)


def _wait_for_writes(worker: Any) -> bool:
    """Poll until the store takes writes; False if the worker was told to stop meanwhile (RQ's signal
    handlers are still installed: a SIGTERM raises StopRequested when no job runs)."""
    try:
        while not _stopping(worker) and _refusal_now(worker) is not None:
            time.sleep(STORE_POLL_S)
    except rq_adapter.StopRequested:
        return False
    # The worker's own teardown failed on the refusal: finish it, so that its name is free again.
    with contextlib.suppress(redis.RedisError):
        rq_adapter.register_death(worker)
    return not _stopping(worker)
