"""Start an RQ worker on the bbo queues, with numerical libraries pinned to one thread per job."""

from __future__ import annotations

import os
import socket

from queue_schema.settings import pin_threads


def preload() -> None:
    """Import the heavy scoring stack once in the parent; RQ's forked work horses inherit it."""
    import bayesmark.experiment  # noqa: F401
    import bayesmark.sklearn_funcs  # noqa: F401

    import workers.job  # noqa: F401


def _sweep_orphan_sandboxes() -> None:
    """Containers left by a worker that died on this host would otherwise hold memory forever."""
    import contextlib

    from workers.sandbox import docker

    with contextlib.suppress(Exception):
        if docker.available():
            docker.sweep()


def run_worker(*, burst: bool = False, name: str | None = None, priority_only: bool = False) -> bool:
    pin_threads()
    from queue_schema import keys
    from queue_schema.connection import rq_connection
    from workers.fair_worker import FairWorker

    preload()
    _sweep_orphan_sandboxes()
    queues = [keys.PRIORITY_QUEUE] if priority_only else [keys.PRIORITY_QUEUE, keys.SCORE_QUEUE]
    worker_name = name or f"bbo-{socket.gethostname()}-{os.getpid()}"
    worker = FairWorker(queues, connection=rq_connection(), name=worker_name, teams=not priority_only)
    # Recovery (workers/heartbeat.py): the work horse dies with this process, a thread beats and reaps.
    from workers.heartbeat import WorkerHeartbeat, horses_die_with_worker

    horses_die_with_worker()
    heartbeat = WorkerHeartbeat(worker).start()
    try:
        return worker.work(burst=burst, logging_level="WARNING")
    finally:
        heartbeat.stop()
