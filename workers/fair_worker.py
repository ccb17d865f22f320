"""RQ workers that serve organizer work first, then the teams round-robin across the whole fleet.

RQ's own worker listens to a fixed list of queues, in a fixed order. A team queue appears whenever a
new team submits, and a fixed order would serve the first team's whole backlog before the next team's
first job. So before every dequeue the worker re-reads the set of team queues and pops through
`dispatch.fair_pop` (priority, then the team after the one any worker served last, then the legacy
shared queue). When everything is empty it blocks on all the queues it knows for a few seconds at most,
then looks again, so a new team's queue is served within seconds.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import SimpleWorker, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue

from queue_schema import keys
from runtime import dispatch, rq_adapter
from workers.prefork import PreforkedHorses


class FairQueues(rq_adapter.WorkerHooks):
    """Mixin for an RQ worker class (first in the bases): fair dequeueing over discovered team queues.
    RQ's own hooks and internals are reached through runtime/rq_adapter.py only.

    `queues` are the fixed queues (default: priority and the legacy shared queue): those in
    `dispatch.HEAD_QUEUES` come before the team queues, the others after. `teams=False` makes a worker
    that serves only its fixed queues (an organizer-only worker).
    """

    # Longest a worker blocks on a queue list that may be stale (a new team's queue).
    refresh_seconds = 3

    def __init__(self, queues: list[str] | None = None, *args: Any, teams: bool = True, **kwargs: Any):
        fixed = list(queues) if queues is not None else [*dispatch.HEAD_QUEUES, *dispatch.TAIL_QUEUES]
        self._head = [name for name in fixed if name in dispatch.HEAD_QUEUES]
        self._tail = [name for name in fixed if name not in dispatch.HEAD_QUEUES]
        self._teams = teams
        self._ring: list[str] = []
        super().__init__(fixed, *args, **kwargs)
        self._refresh_queues()

    def _refresh_queues(self) -> None:
        ring = dispatch.team_queue_names(self.connection) if self._teams else []
        if ring == self._ring:
            return
        self._ring = ring
        known = {queue.name: queue for queue in self.queues}
        names = [*self._head, *ring, *self._tail]
        # Registered already: RQ's views of workers per queue (and its registry cleaning) follow.
        rq_adapter.set_queues(self, [known.get(name) or rq_adapter.make_queue(self, name) for name in names])

    def _blocking_pop(self, seconds: int) -> tuple[str, str] | None:
        """All queues were empty a moment ago: take whichever job arrives first, fair enough. A new team
        queue's token (dispatch.team_queue) ends the wait at once: None, and the caller looks again."""
        by_key = {queue.key: queue.name for queue in self.queues}
        changed = keys.team_queues_changed() if self._teams else None
        got = self.connection.blpop([*by_key, *([changed] if changed else [])], seconds)
        if got is None:
            return None
        key, job_id = (v.decode() if isinstance(v, bytes) else v for v in got)
        if key == changed:
            return None
        name = by_key[key]
        dispatch.note_dequeued(self.connection, name, job_id)
        return name, job_id

    def next_job(self, timeout: int | None, max_idle_time: int | None = None) -> tuple[Job, Queue] | None:
        """RQ's contract (rq_adapter.WorkerHooks): a (job, queue), or None when in burst mode (timeout
        None) nothing is queued or the worker has been idle for `max_idle_time` seconds. A warm shutdown
        while idle raises StopRequested from the signal handler, as in RQ."""
        rq_adapter.worker_idle(self)
        idle_since = time.monotonic()
        connection_wait = 1.0
        waited = False  # a whole blocking wait found nothing queued
        while True:
            try:
                rq_adapter.worker_keepalive(self)
                self._refresh_queues()
                self.worker_waiting(waited)
                self.procline("Listening on " + ",".join(self.queue_names()))
                popped = dispatch.fair_pop(self.connection, self._head, self._ring, self._tail)
                if popped is None and timeout is not None:
                    wait = min(self.refresh_seconds, timeout)
                    if max_idle_time is not None:
                        left = max_idle_time - (time.monotonic() - idle_since)
                        if left <= 0:
                            return None
                        wait = min(wait, max(1, int(left)))
                    popped = self._blocking_pop(wait)
                if popped is None:
                    if timeout is None:
                        return None
                    waited = True
                    continue
                name, job_id = popped
                try:
                    job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
                except NoSuchJobError:
                    continue  # deleted while queued, as RQ's own dequeue skips it
                queue = next((q for q in self.queues if q.name == name), None) or rq_adapter.make_queue(
                    self, name
                )
                self.log.info("Worker %s: %s: %s (%s)", self.name, name, job.description, job.id)
                rq_adapter.job_dequeued(self, job)
                return job, queue
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self.log.error(
                    "Worker %s: Redis unreachable (%s), retrying in %.0f s", self.name, exc, connection_wait
                )
                time.sleep(connection_wait)
                connection_wait = rq_adapter.next_connection_wait(self, connection_wait)

    def job_started(self, job: Job) -> None:
        dispatch.note_started(self.connection, job.id)

    def worker_waiting(self, idle: bool) -> None:
        """Before each look at the queues (the worker's main thread; `idle`: a whole wait found nothing):
        nothing here; the pre-forking worker starts a warm sandbox (workers/prefork.py)."""


class FairWorker(PreforkedHorses, FairQueues, Worker):
    """The scoring worker: a work horse per job, forked before its job comes (workers/prefork.py) with a
    warm sandbox; dequeues fairly."""


class FairSimpleWorker(FairQueues, SimpleWorker):
    """Runs jobs in its own process (no fork): for tests and in-process tools."""
