"""The one module that touches RQ's internals: private attributes and methods, undocumented hooks, and the
layout of RQ's keys in Redis.

RQ's public API (Queue.enqueue_call, Queue.all, Job.fetch, Job.get_status, Retry, Callback, subclassing
Worker/SimpleWorker, send_shutdown_command) is used where it is needed. Everything else the fair worker
(workers/fair_worker.py), the worker command (workers/worker.py), its heartbeat (workers/heartbeat.py),
the reaper (runtime/recovery.py) and the queue readers (runtime/dispatch.py) need from RQ goes through
here, and each function's docstring names the internal it relies on and why.

tests/runtime/test_rq_adapter.py holds one test per internal, against the installed RQ and a real Redis;
each failure reads "RQ changed <internal>: runtime/rq_adapter.py::<function> relies on it". RQ is pinned
to the minor series those tests pass with (TESTED_RQ, and the same range in pyproject.toml), and the
worker refuses to start under any other (`check_rq_version`). To move to a new RQ: install it, run
tests/runtime/test_rq_adapter.py, fix the functions it names, then widen TESTED_RQ and the pin together.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import rq
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from rq.command import send_command
from rq.exceptions import StopRequested
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.timeouts import BaseTimeoutException
from rq.utils import parse_composite_key, utcparse
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY, register, unregister

from runtime.errors import RQIncompatible

if TYPE_CHECKING:
    import redis

__all__ = ["TESTED_RQ", "JobTimeout", "PreforkHooks", "RQIncompatible", "StopRequested", "WorkerHooks"]

# The RQ versions this module is tested with; pyproject.toml pins rq to the same range.
TESTED_RQ = ">=3.0,<3.1"

# What a job's time limit raises in the work horse (RQ's death penalty): rq.timeouts.JobTimeoutException
# derives from it. workers/failures.py counts it as our failure, not the team's.
JobTimeout = BaseTimeoutException

# -- the version ------------------------------------------------------------------------------------


def installed_rq_version() -> str:
    """The installed RQ's version string (`rq.__version__`)."""
    return str(getattr(rq, "__version__", "unknown"))


def check_rq_version(version: str | None = None) -> str:
    """Raise RQIncompatible unless `version` (default: the installed RQ's) is in TESTED_RQ; return it.

    Called when a worker starts (workers/worker.py): every function here relies on RQ internals that
    may change in any release, so an untested RQ stops the worker with this message rather than
    misbehaving later (requeueing the wrong jobs, or serving no queue)."""
    version = version or installed_rq_version()
    try:
        ok = Version(version) in SpecifierSet(TESTED_RQ)
    except InvalidVersion:
        ok = False
    if not ok:
        raise RQIncompatible(
            f"RQ {version} is installed, but bbo-arena is tested with rq{TESTED_RQ} only (pyproject.toml "
            "pins that range): runtime/rq_adapter.py relies on RQ internals that change between releases. "
            f"Install a tested RQ (pip install 'rq{TESTED_RQ}'), or, to move to RQ {version}, run "
            "tests/runtime/test_rq_adapter.py, fix what it names, then widen TESTED_RQ and the pin together."
        )
    return version


# -- key layouts ------------------------------------------------------------------------------------


def queue_key(name: str) -> str:
    """The Redis list of a queue's waiting job ids.

    Relies on `Queue.redis_queue_namespace_prefix` ("rq:queue:") and on a queue being a plain list of job
    ids, enqueued at the tail: the fair pop (runtime/dispatch.py) LPOPs it in a Lua script, and the queue
    readers LLEN it for every queue in one round trip."""
    return Queue.redis_queue_namespace_prefix + name


def started_registry_key(queue_name: str) -> str:
    """The sorted set of a queue's started executions.

    Relies on `StartedJobRegistry.key_template` ("rq:wip:{queue}"): the queue readers ZCARD it for every
    queue in one round trip, and the reaper reads it without RQ's own cleanup (which would fail expired
    jobs through the failure callback instead of requeueing them)."""
    return StartedJobRegistry.key_template.format(queue_name)


def worker_key(name: str) -> str:
    """The hash RQ keeps for a registered worker.

    Relies on `BaseWorker.redis_worker_namespace_prefix` ("rq:worker:"): the reaper forgets a dead worker
    at once instead of waiting for RQ's key to expire."""
    return BaseWorker.redis_worker_namespace_prefix + name


# -- started executions (the reaper) ----------------------------------------------------------------


def started_entries(conn: redis.Redis, queue_name: str) -> list[tuple[str, str, str]]:
    """Every entry of a queue's started registry, as (composite key, job id, execution id), read as is.

    Relies on the started registry's members being "job_id:execution_id" composite keys, split by the
    private `rq.utils.parse_composite_key`: one job can have several executions, and the reaper claims
    exactly one."""
    out = []
    for raw in conn.zrange(started_registry_key(queue_name), 0, -1):
        composite = raw.decode() if isinstance(raw, bytes) else raw
        job_id, execution_id = parse_composite_key(composite)
        out.append((composite, job_id, execution_id))
    return out


def run_details(conn: redis.Redis, runs: list[tuple[str, str]]) -> list[tuple[str, float | None, int | None]]:
    """For each (composite key, job id): (worker name, start time as a Unix time, job timeout), in one
    round trip; "" / None where RQ has not recorded it.

    Relies on the execution hash (`Execution.key`, "rq:execution:<composite>") holding `created_at` (a
    Unix time) and `worker_name`, and on the job hash (`Job.key_for`) holding `started_at` (RQ's UTC
    string, read with the private `rq.utils.utcparse`), `timeout` and `worker_name`: the reaper judges a
    run dead or stuck from these without loading each job."""
    pipe = conn.pipeline(transaction=False)
    for composite, job_id in runs:
        pipe.hmget(Execution.from_composite_key(composite, conn).key, "created_at", "worker_name")
        pipe.hmget(Job.key_for(job_id), "started_at", "timeout", "worker_name")
    replies = pipe.execute()
    out = []
    for i in range(len(runs)):
        created_at, exec_worker = replies[2 * i]
        started_at, timeout, job_worker = replies[2 * i + 1]
        if created_at:
            start: float | None = float(created_at)
        elif started_at:
            start = utcparse(_text(started_at)).timestamp()
        else:
            start = None
        out.append((_text(exec_worker or job_worker or b""), start, _int_or_none(timeout)))
    return out


def watch_run(pipe: Any, job_id: str) -> None:
    """WATCH what every end of a job's run writes, so that a transaction claiming the run fails if the run
    ended (or another reaper claimed it) meanwhile.

    Relies on RQ writing the job hash (`Job.key_for`) whenever a run ends: success, failure, retry, its
    own cleanup of an abandoned job. RQ promises no such thing; the reaper's once-only claim rests on it."""
    pipe.watch(Job.key_for(job_id))


def delete_execution(conn: redis.Redis, pipe: Any, job: Job, execution_id: str, worker: str) -> None:
    """Queue on `pipe` the removal of one execution: its hash, its started-registry entry, the job's
    execution registry entry and the worker's execution index.

    Relies on the constructor `Execution(id, job_id, connection, worker_name=...)` and `Execution.delete`,
    neither documented: RQ only ever deletes an execution from inside its own worker."""
    Execution(execution_id, job.id, conn, worker_name=worker).delete(job, pipe)


def fail_job(conn: redis.Redis, pipe: Any, job: Job, reason: str) -> None:
    """Queue on `pipe` failing a job for good: status FAILED, saved, in its queue's failed registry with
    `reason` as its exception text.

    Relies on `Job.set_status`/`Job.save` taking a pipeline and on `FailedJobRegistry.add(job, ttl,
    exc_string=..., pipeline=...)`, which RQ calls from its worker only."""
    job.set_status(JobStatus.FAILED, pipeline=pipe)
    job.save(pipeline=pipe)
    FailedJobRegistry(job.origin, connection=conn).add(
        job, ttl=job.failure_ttl, exc_string=reason, pipeline=pipe
    )


def requeue_at_front(conn: redis.Redis, pipe: Any, job: Job) -> None:
    """Queue on `pipe` putting a started job back at the front of its own queue, as never started.

    Relies on `Queue.enqueue_job(job, pipeline=..., at_front=True)` accepting a job that has run (it
    resets its status and pushes its id) and on `Job.started_at` being a plain attribute saved with it."""
    job.started_at = None
    Queue(job.origin, connection=conn).enqueue_job(job, pipeline=pipe, at_front=True)


def record_finished(conn: redis.Redis, pipe: Any, job: Job, ended_at: str, ttl: int, value: Any) -> None:
    """Queue on `pipe` what RQ's worker leaves of a job that ran and succeeded, without running it: out of
    its queue, FINISHED with `ended_at` (RQ's utcformat), in the finished registry, with a successful
    result. For bench/seed_data.py, which lays down a competition's worth of RQ state in bulk.

    Relies on `Job.set_status(pipeline=)`, the job hash's `ended_at` field, `FinishedJobRegistry.add(job,
    ttl, pipeline=)` and `Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=, pipeline=)`, which
    RQ calls from its worker only."""
    queue = Queue(job.origin, connection=conn)
    queue.remove(job, pipeline=pipe)
    job.set_status(JobStatus.FINISHED, pipeline=pipe)
    pipe.hset(job.key, "ended_at", ended_at)
    FinishedJobRegistry(queue.name, connection=conn).add(job, ttl=ttl, pipeline=pipe)
    Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=value, pipeline=pipe)


def record_started(conn: redis.Redis, pipe: Any, job: Job, worker: str, ttl: int) -> None:
    """Queue on `pipe` what RQ's worker leaves of a job it has just started: out of its queue, STARTED by
    `worker`, with an execution (in the started registry). For bench/seed_data.py, as above.

    Relies on `Job.prepare_for_execution(worker_name, pipeline=)` and `Execution.create(job, ttl,
    pipeline=, worker_name=)`, which RQ calls from its worker only."""
    Queue(job.origin, connection=conn).remove(job, pipeline=pipe)
    job.prepare_for_execution(worker, pipeline=pipe)
    Execution.create(job, ttl=ttl, pipeline=pipe, worker_name=worker)


def push_front(conn: redis.Redis, queue_name: str, job_id: str) -> None:
    """Put a queued job's id back at the front of its queue (a worker popped it and died before starting
    it; the job itself is still `queued`).

    Relies on `Queue.push_job_id(job_id, at_front=True)`, undocumented."""
    Queue(queue_name, connection=conn).push_job_id(job_id, at_front=True)


def stop_execution(conn: redis.Redis, worker: str, job_id: str, execution_id: str) -> None:
    """Ask `worker` (best effort: it may be gone) to stop one execution of a job.

    Relies on the pub/sub command "stop-execution" with `job_id` and `execution_id`, sent with
    `rq.command.send_command`: RQ's own `send_stop_execution_command` looks the execution up first, and
    the reaper has just deleted it."""
    send_command(conn, worker, "stop-execution", job_id=job_id, execution_id=execution_id)


# -- the worker -------------------------------------------------------------------------------------


class WorkerHooks:
    """Mixin for an RQ worker class (before it in the bases) that turns RQ's undocumented worker hooks
    into two methods of ours: `next_job(timeout, max_idle_time)`, which replaces RQ's dequeueing, and
    `job_started(job)`, called once the run is registered with RQ.

    Relies on `BaseWorker.work` calling `dequeue_job_and_maintain_ttl(timeout, max_idle_time)` for the
    next (job, queue), None to stop (burst mode with nothing queued, or idle too long), and on
    `prepare_job_execution(job, ...)` running once the run is in the started registry."""

    def next_job(self, timeout: int | None, max_idle_time: int | None) -> tuple[Job, Queue] | None:
        raise NotImplementedError

    def job_started(self, job: Job) -> None:
        """Nothing by default."""

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        return self.next_job(timeout, max_idle_time)

    def prepare_job_execution(self, job: Job, *args: Any, **kwargs: Any) -> None:
        super().prepare_job_execution(job, *args, **kwargs)  # type: ignore[misc]
        self.job_started(job)

    def unsubscribe(self) -> None:
        """RQ's own, with the wait for the command thread bounded.

        RQ starts the thread with `pubsub.run_in_thread(sleep_time=60)` and stops it with
        `thread.stop()`, which in redis-py 8 joins it with no limit. A thread caught between the
        unsubscribe and its next `get_message` waits up to `sleep_time` to be subscribed again, so about
        one worker stop in 30 took exactly 60 s (tests/runtime/test_rq_adapter.py reproduces it). Relies on
        the worker's `pubsub` and `pubsub_thread` attributes and `PubSubWorkerThread.stop(timeout)`."""
        thread = getattr(self, "pubsub_thread", None)
        if thread is None:
            return
        self.pubsub.unsubscribe()  # type: ignore[attr-defined]
        # A thread still waiting is a daemon: it notices the cleared flag within sleep_time, then closes.
        thread.stop(timeout=1)
        if not thread.is_alive():
            self.pubsub.close()  # type: ignore[attr-defined]


class PreforkHooks:
    """Mixin for a forking RQ worker class (before it in the bases) that lets a work horse be forked before
    its job is known (workers/prefork.py), through four methods of ours:

    - `horse_for(job, queue, execution_id)`: in the worker, in place of RQ's fork: the pid of a child it
      forked earlier from its main thread and has now handed this run (which calls `run_horse`), or None
      to fork as RQ does;
    - `horse_started(job)`: in the worker, on its main thread, once the job's horse runs (forked or
      handed the run), before the worker waits for it: the time to fork the next one;
    - `horse_done()`: in the horse, once the job has been performed, whatever its outcome;
    - `worker_ending()`: in the worker, when it stops (RQ's `teardown`, not called in a horse).

    Relies on `Worker.execute_job(job, queue)` forking through `fork_work_horse(job, queue)` after
    `prepare_execution` (so the run's Execution is in Redis and in `executions`), then
    `monitor_work_horse` waiting for `_horse_pid` with `os.wait4` on that pid (so other children of the
    worker are left alone); on the horse calling
    `perform_job(job, queue, execution)` (from `main_work_horse`); on `teardown()` running once in the
    worker as `work` ends; on `work(burst, ...)` taking burst mode first (`burst` is kept: there is no next
    job worth a horse in burst mode)."""

    burst = False

    def horse_started(self, job: Job) -> None:
        """Nothing by default."""

    def horse_for(self, job: Job, queue: Queue, execution_id: str) -> int | None:
        return None

    def horse_done(self) -> None:
        """Nothing by default."""

    def worker_ending(self) -> None:
        """Nothing by default."""

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        self.burst = burst
        return super().work(burst, *args, **kwargs)  # type: ignore[misc]

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        pid = self.horse_for(job, queue, self.execution.id)  # type: ignore[attr-defined]
        if pid is None:
            super().fork_work_horse(job, queue)  # type: ignore[misc]
        else:
            self._horse_pid = pid
            self.procline(f"Forked {pid} at {time.time()}")  # type: ignore[attr-defined]
        self.horse_started(job)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        try:
            return super().perform_job(job, queue, execution)  # type: ignore[misc]
        finally:
            self.horse_done()

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[misc]
        finally:
            if not self.is_horse:  # type: ignore[attr-defined]
                self.worker_ending()


def run_horse(worker: Any, job_id: str, queue_name: str, execution_id: str) -> None:
    """In a child the worker forked before the run was known: become its work horse, as the child branch
    of RQ's `fork_work_horse` does (the caller has already left the worker's process group), and end the
    process (`main_work_horse` never returns).

    Relies on the environment RQ sets for a horse (RQ_WORKER_ID, RQ_JOB_ID, RQ_EXECUTION_ID), on
    `Execution.fetch(id, job_id, connection=)` with its private `_job`, on the worker's `executions`
    (emptied first: the child was forked while the worker ran the previous job, whose execution is still
    in its copy, and the `execution` setter adds to the dict, while `main_work_horse` runs the job under
    the first execution it holds; under the stale one the job ended by cleaning up the previous job's
    started-registry entry and left its own, which the reaper then took for a dead run), and on
    `main_work_horse(job, queue)`: what RQ's SpawnWorker rebuilds in its spawned child from the same
    three ids, in a worker of its own with no executions."""
    os.environ["RQ_WORKER_ID"] = worker.name
    os.environ["RQ_JOB_ID"] = job_id
    os.environ["RQ_EXECUTION_ID"] = execution_id
    job = worker.job_class.fetch(job_id, connection=worker.connection, serializer=worker.serializer)
    queue = make_queue(worker, queue_name)
    execution = Execution.fetch(execution_id, job.id, connection=worker.connection)
    execution._job = job
    worker.executions.clear()
    worker.execution = execution
    worker.main_work_horse(job, queue)


def make_queue(worker: Any, name: str) -> Queue:
    """A queue built the way RQ's worker builds the queues it is given by name.

    Relies on `Queue(name=, connection=, job_class=, serializer=, death_penalty_class=)`, the constructor
    call in `BaseWorker.__init__`: a queue the fair worker discovers later must behave like those."""
    return worker.queue_class(
        name=name,
        connection=worker.connection,
        job_class=worker.job_class,
        serializer=worker.serializer,
        death_penalty_class=worker.death_penalty_class,
    )


def set_queues(worker: Any, queues: list[Queue]) -> None:
    """Make `queues` the worker's queues, in this order, for RQ as for us.

    Relies on the private `_ordered_queues` (the copy of `queues` RQ's dequeue and `reorder_queues`
    read), on `rq.worker_registration.register` (RQ's per-queue worker sets, which its registry
    cleaning and `Worker.all(queue=...)` read) and on the worker hash's "queues" field (what
    `Worker.find_by_key` and `rq info` show), updated once the worker is registered (`birth_date`)."""
    worker.queues = queues
    worker._ordered_queues = queues[:]
    if worker.birth_date is not None:
        with worker.connection.pipeline() as pipe:
            register(worker, pipe)
            pipe.hset(worker.key, "queues", ",".join(q.name for q in queues))
            pipe.execute()


def worker_idle(worker: Any) -> None:
    """Mark the worker idle, as RQ's dequeue does before it waits.

    Relies on `BaseWorker.set_state` and `WorkerStatus.IDLE`."""
    worker.set_state(WorkerStatus.IDLE)


def worker_keepalive(worker: Any) -> None:
    """What RQ's dequeue does on every turn of its wait: refresh the worker's key, and run RQ's
    maintenance (its registries' cleaning, the scheduler) when due.

    Relies on `BaseWorker.heartbeat()`, `should_run_maintenance_tasks` and `run_maintenance_tasks()`."""
    worker.heartbeat()
    if worker.should_run_maintenance_tasks:
        worker.run_maintenance_tasks()


def job_dequeued(worker: Any, job: Job) -> None:
    """What RQ's dequeue does with the job it returns: note the Redis version on it, refresh the worker.

    Relies on `Job.redis_server_version` (RQ picks commands by it) and
    `BaseWorker.get_redis_server_version()`."""
    job.redis_server_version = worker.get_redis_server_version()
    worker.heartbeat()


def next_connection_wait(worker: Any, wait: float) -> float:
    """The next wait before retrying an unreachable Redis, as RQ's dequeue backs off.

    Relies on `BaseWorker.exponential_backoff_factor` and `max_connection_wait_time`."""
    return min(wait * worker.exponential_backoff_factor, worker.max_connection_wait_time)


def shutdown_requested(worker: Any) -> bool:
    """Whether the worker was asked to stop (a signal, busy or idle).

    Relies on the private `_shutdown_requested_date`, which RQ's signal handler sets (None until then)."""
    return getattr(worker, "_shutdown_requested_date", None) is not None


def current_job_id(worker: Any) -> str | None:
    """The job the worker runs now, from its memory only (None when idle).

    Relies on `BaseWorker.executions`, the worker's in-memory {execution id: Execution}: RQ's own
    `execution` property falls back to a Redis read through the worker's connection, which a thread
    other than the worker's must not use."""
    executions = list(getattr(worker, "executions", {}).values())
    return executions[0].job_id if executions else None


def registered_identity(worker: Any) -> tuple[str, str, str]:
    """(hostname, pid, death) from RQ's hash for a worker of this name; "" where missing.

    Relies on the worker hash's fields "hostname", "pid" (written by `register_birth`) and "death"
    (written by `register_death`): a worker restarted under its old name finds its predecessor here."""
    values = worker.connection.hmget(worker.key, "hostname", "pid", "death")
    return tuple(_text(v) if v is not None else "" for v in values)  # type: ignore[return-value]


def forget_registration(worker: Any, pipe: Any) -> None:
    """Queue on `pipe` forgetting RQ's registration of a worker of this name (its hash, its executions
    index, its place in the worker sets), so that a worker of the same name can register.

    Relies on `register_birth` refusing a name whose hash exists without "death", on
    `rq.worker_registration.unregister` and on the executions index key
    (`rq.executions.WORKER_EXECUTIONS_KEY_TEMPLATE`)."""
    pipe.delete(worker.key, WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker.name))
    unregister(worker, pipe)


def forget_workers(pipe: Any, names: list[str], queue_names: list[str]) -> None:
    """Queue on `pipe` forgetting dead workers by name, without their objects: their hashes, their
    executions indexes, and their places in RQ's worker sets.

    Relies on the worker key layout (`worker_key`), `rq.executions.WORKER_EXECUTIONS_KEY_TEMPLATE`, and
    `rq.worker_registration.REDIS_WORKER_KEYS` / `WORKERS_BY_QUEUE_KEY` (the sets RQ lists workers from):
    RQ would list a dead worker for up to 90 s busy or 8 min idle, until its own key expires."""
    for name in names:
        key = worker_key(name)
        pipe.delete(key, WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))
        pipe.srem(REDIS_WORKER_KEYS, key)
        for queue in queue_names:
            pipe.srem(WORKERS_BY_QUEUE_KEY % queue, key)


def register_death(worker: Any) -> None:
    """Finish a worker's teardown (leave RQ's worker sets, mark its hash dead) after it failed midway.

    Relies on `BaseWorker.register_death()`, which RQ calls from its own teardown only."""
    worker.register_death()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int_or_none(value: bytes | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
