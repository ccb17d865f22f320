"""Every RQ internal that runtime/rq_adapter.py relies on, one test each, against the installed RQ and a real
Redis: when an RQ upgrade breaks one, the failure names it and the adapter function to fix,
"RQ changed <internal>: runtime/rq_adapter.py::<function> relies on it".

Jobs are put into the started state the way RQ's worker does before it forks (dequeue, then
`prepare_execution` and `prepare_job_execution`), as tests/runtime/test_recovery.py does.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import rq
from rq import Queue, Retry, SimpleWorker, Worker
from rq.command import handle_command
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.utils import utcformat
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import get_keys

from queue_schema.connection import rq_connection
from runtime import rq_adapter
from runtime.errors import RQIncompatible
from tests.dispatch_helpers import RAN

ROOT = Path(__file__).resolve().parents[2]
RECORD = "tests.dispatch_helpers.record"
QUEUE = "adapter-test"


def relied(internal: str, function: str) -> str:
    return f"RQ changed {internal}: runtime/rq_adapter.py::{function} relies on it"


@contextmanager
def relies(internal: str, function: str) -> Iterator[None]:
    """Turn any failure inside (a wrong value, or RQ raising) into the one message that says what to fix."""
    try:
        yield
    except AssertionError as exc:
        pytest.fail(f"{relied(internal, function)}\n{exc}")
    except Exception as exc:
        pytest.fail(f"{relied(internal, function)}\n{type(exc).__name__}: {exc}")


def enqueue(conn: redis.Redis, tag: str = "x", queue: str = QUEUE, **options: Any) -> Job:
    return Queue(queue, connection=conn).enqueue_call(RECORD, args=(tag,), result_ttl=60, **options)


def start_job(conn: redis.Redis) -> tuple[Job, Worker]:
    """Take the next queued job into the started state the way an RQ worker does before it forks."""
    queues = Queue.all(connection=conn)
    worker = Worker(queues, connection=conn, name=f"adapter-{uuid.uuid4().hex[:8]}")
    worker.register_birth()
    job, _ = Queue.dequeue_any(queues, None, connection=conn)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    return job, worker


@pytest.fixture()
def conn(r) -> redis.Redis:
    return rq_connection()


@pytest.fixture()
def started(conn) -> tuple[Job, Worker]:
    enqueue(conn)
    return start_job(conn)


# -- the version ------------------------------------------------------------------------------------


def test_the_installed_rq_is_a_tested_version():
    with relies(
        f"its version to {rq_adapter.installed_rq_version()} (tested: {rq_adapter.TESTED_RQ})",
        "check_rq_version",
    ):
        rq_adapter.check_rq_version()


def test_pyproject_pins_rq_to_the_tested_range():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.replace(" ", "").startswith(("rq>", "rq=", "rq<", "rq~"))]
    assert pin.replace(" ", "") == f"rq{rq_adapter.TESTED_RQ}", (
        "pyproject.toml's rq pin and runtime/rq_adapter.py::TESTED_RQ must name the same range"
    )


@pytest.mark.parametrize("version", ["3.1.0", "2.6.1", "4.0.0", "not-a-version"])
def test_an_untested_rq_is_refused_with_a_clear_message(monkeypatch, version):
    monkeypatch.setattr(rq, "__version__", version)
    with pytest.raises(RQIncompatible) as refused:
        rq_adapter.check_rq_version()
    message = str(refused.value)
    assert f"RQ {version} is installed" in message
    assert f"rq{rq_adapter.TESTED_RQ}" in message and "tests/runtime/test_rq_adapter.py" in message


def test_the_worker_command_refuses_an_untested_rq_before_anything_else(monkeypatch):
    from workers import worker

    monkeypatch.setattr(rq, "__version__", "3.1.0")
    monkeypatch.setattr(worker, "preload", lambda: pytest.fail("the worker started under an untested RQ"))
    with pytest.raises(RQIncompatible, match="RQ 3.1.0 is installed"):
        worker.run_worker(burst=True)


# -- key layouts ------------------------------------------------------------------------------------


def test_a_queue_is_a_list_of_job_ids_under_queue_key(conn):
    first, second = enqueue(conn, "a"), enqueue(conn, "b")
    with relies("Queue.redis_queue_namespace_prefix or a queue's list of job ids", "queue_key"):
        assert rq_adapter.queue_key(QUEUE) == Queue(QUEUE, connection=conn).key
        assert conn.lrange(rq_adapter.queue_key(QUEUE), 0, -1) == [first.id.encode(), second.id.encode()]


def test_the_started_registry_is_under_started_registry_key(conn, started):
    job, _ = started
    with relies("StartedJobRegistry.key_template", "started_registry_key"):
        assert rq_adapter.started_registry_key(QUEUE) == StartedJobRegistry(QUEUE, connection=conn).key
        assert conn.zcard(rq_adapter.started_registry_key(QUEUE)) == 1


def test_a_worker_hash_is_under_worker_key(conn):
    worker = Worker([QUEUE], connection=conn, name="adapter-keyed")
    with relies("BaseWorker.redis_worker_namespace_prefix", "worker_key"):
        assert rq_adapter.worker_key("adapter-keyed") == worker.key


# -- started executions -----------------------------------------------------------------------------


def test_started_entries_are_composite_keys_of_job_and_execution(conn, started):
    job, worker = started
    execution = worker.execution
    with relies(
        "the started registry's members (job_id:execution_id) or parse_composite_key", "started_entries"
    ):
        assert rq_adapter.started_entries(conn, QUEUE) == [(f"{job.id}:{execution.id}", job.id, execution.id)]


def test_run_details_come_from_the_execution_hash(conn, started):
    job, worker = started
    composite = f"{job.id}:{worker.execution.id}"
    with relies("the execution hash's created_at/worker_name fields", "run_details"):
        ((name, start, timeout),) = rq_adapter.run_details(conn, [(composite, job.id)])
        assert name == worker.name
        assert start == pytest.approx(worker.execution.created_at.timestamp(), abs=1e-3)
        assert timeout == job.timeout


def test_run_details_fall_back_to_the_job_hash(conn, started):
    job, worker = started
    composite = f"{job.id}:{worker.execution.id}"
    conn.delete(worker.execution.key)  # expired: only the job's own record is left
    with relies("the job hash's started_at/timeout/worker_name fields or utcparse", "run_details"):
        ((name, start, timeout),) = rq_adapter.run_details(conn, [(composite, job.id)])
        assert name == worker.name
        fetched = Job.fetch(job.id, connection=conn)
        assert start == pytest.approx(fetched.started_at.timestamp(), abs=1)
        assert timeout == job.timeout


# Pipelines a running job opened on itself (the job runs in this process: SimpleWorker).
_WATCHES: dict[str, Any] = {}


def watch_own_run(outcome: str) -> str:
    """A job that WATCHes its own run through the adapter, then ends as `outcome` says."""
    job = rq.get_current_job()
    pipe = job.connection.pipeline()
    rq_adapter.watch_run(pipe, job.id)
    _WATCHES[job.id] = pipe
    if outcome != "success":
        raise RuntimeError(outcome)
    return outcome


@pytest.mark.parametrize("outcome", ["success", "failure", "retry"])
def test_every_end_of_a_run_writes_the_job_hash_that_watch_run_watches(conn, outcome):
    retry = Retry(max=1) if outcome == "retry" else None
    job = Queue(QUEUE, connection=conn).enqueue_call(
        f"{__name__}.watch_own_run", args=(outcome,), result_ttl=60, retry=retry
    )
    SimpleWorker([QUEUE], connection=conn).work(burst=True, max_jobs=1, logging_level="WARNING")
    pipe = _WATCHES.pop(job.id)
    with relies(f"what the end of a run ({outcome}) writes: the job hash (Job.key_for)", "watch_run"):
        pipe.multi()
        pipe.set("adapter-test:claimed", "1")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    pipe.reset()


def test_delete_execution_removes_every_trace_of_one_execution(conn, started):
    job, worker = started
    execution = worker.execution
    with relies("Execution(id, job_id, connection, worker_name) or Execution.delete", "delete_execution"):
        with conn.pipeline() as pipe:
            rq_adapter.delete_execution(conn, pipe, job, execution.id, worker.name)
            pipe.execute()
        assert StartedJobRegistry(QUEUE, connection=conn).get_job_ids(cleanup=False) == []
        assert not conn.exists(execution.key)
        assert not conn.sismember(worker.executions_key, execution.composite_key)
        assert Job.fetch(job.id, connection=conn).get_executions() == []


def test_fail_job_fails_a_job_for_good(conn, started):
    job, _ = started
    with relies("Job.set_status/Job.save with a pipeline or FailedJobRegistry.add(exc_string=)", "fail_job"):
        with conn.pipeline() as pipe:
            rq_adapter.fail_job(conn, pipe, job, "reaped 3 times")
            pipe.execute()
        assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.FAILED
        assert job.id in FailedJobRegistry(QUEUE, connection=conn).get_job_ids()


def test_requeue_at_front_puts_a_started_job_first_as_never_started(conn, started):
    job, _ = started
    waiting = enqueue(conn, "waiting")
    with relies("Queue.enqueue_job(job, pipeline=, at_front=) or Job.started_at", "requeue_at_front"):
        with conn.pipeline() as pipe:
            rq_adapter.requeue_at_front(conn, pipe, job)
            pipe.execute()
        fresh = Job.fetch(job.id, connection=conn)
        assert fresh.get_status() == JobStatus.QUEUED and fresh.started_at is None
        assert Queue(QUEUE, connection=conn).job_ids == [job.id, waiting.id]


def test_record_finished_leaves_a_job_as_rq_s_worker_does(conn):
    job = enqueue(conn, "done")
    internal = "Job.set_status, the job hash's ended_at, FinishedJobRegistry.add or Result.create"
    with relies(internal, "record_finished"):
        with conn.pipeline() as pipe:
            rq_adapter.record_finished(conn, pipe, job, utcformat(datetime.now(UTC)), 60, {"status": "done"})
            pipe.execute()
        fresh = Job.fetch(job.id, connection=conn)
        assert fresh.get_status() == JobStatus.FINISHED and fresh.ended_at is not None
        assert fresh.return_value() == {"status": "done"}
        assert job.id in FinishedJobRegistry(QUEUE, connection=conn).get_job_ids()
        assert job.id not in Queue(QUEUE, connection=conn).job_ids


def test_record_started_leaves_a_job_as_rq_s_worker_does(conn):
    job = enqueue(conn, "running")
    with relies("Job.prepare_for_execution or Execution.create", "record_started"):
        with conn.pipeline() as pipe:
            rq_adapter.record_started(conn, pipe, job, "seeded-worker", 60)
            pipe.execute()
        fresh = Job.fetch(job.id, connection=conn)
        assert fresh.get_status() == JobStatus.STARTED and fresh.worker_name == "seeded-worker"
        assert job.id not in Queue(QUEUE, connection=conn).job_ids
        # The reaper reads runs from the started registry: the seeded run must be there as RQ's own.
        assert [entry[1] for entry in rq_adapter.started_entries(conn, QUEUE)] == [job.id]


def test_push_front_puts_a_job_id_first(conn):
    first, popped = enqueue(conn, "a"), enqueue(conn, "b")
    conn.lrem(rq_adapter.queue_key(QUEUE), 1, popped.id)
    with relies("Queue.push_job_id(job_id, at_front=True)", "push_front"):
        rq_adapter.push_front(conn, QUEUE, popped.id)
        assert Queue(QUEUE, connection=conn).job_ids == [popped.id, first.id]


def test_stop_execution_is_a_command_rq_workers_still_obey(conn, started):
    job, worker = started
    channel = conn.pubsub(ignore_subscribe_messages=True)
    channel.subscribe(worker.pubsub_channel_name)
    try:
        with relies("the pub/sub command stop-execution (send_command, handle_command)", "stop_execution"):
            rq_adapter.stop_execution(conn, worker.name, job.id, worker.execution.id)
            message = None
            deadline = time.monotonic() + 5
            while message is None and time.monotonic() < deadline:
                message = channel.get_message(timeout=1)
            assert message is not None, "nothing reached the worker's channel"

            class Listener:
                log = logging.getLogger("adapter-test")
                stopped: list[str] = []

                def request_stop_execution(self, execution_id: str) -> None:
                    self.stopped.append(execution_id)

            listener = Listener()
            handle_command(listener, rq.command.parse_payload(message))  # type: ignore[arg-type]
            assert listener.stopped == [worker.execution.id]
    finally:
        channel.close()


# -- the worker -------------------------------------------------------------------------------------


class HookedWorker(rq_adapter.WorkerHooks, SimpleWorker):
    """The adapter's hooks on a plain worker: next_job pops the queues in order, and both hooks record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[tuple[int | None, int | None]] = []
        self.started_in_registry: list[bool] = []

    def next_job(self, timeout: int | None, max_idle_time: int | None) -> tuple[Job, Queue] | None:
        self.asked.append((timeout, max_idle_time))
        return Queue.dequeue_any(self.queues, None, connection=self.connection)

    def job_started(self, job: Job) -> None:
        ids = StartedJobRegistry(job.origin, connection=self.connection).get_job_ids(cleanup=False)
        self.started_in_registry.append(job.id in ids)


def test_rq_asks_the_dequeue_hook_for_every_job(conn, r):
    enqueue(conn, "one"), enqueue(conn, "two")
    worker = HookedWorker([QUEUE], connection=conn)
    with relies(
        "BaseWorker.work calling dequeue_job_and_maintain_ttl(timeout, max_idle_time)", "WorkerHooks"
    ):
        parameters = list(inspect.signature(BaseWorker.dequeue_job_and_maintain_ttl).parameters)
        assert parameters == ["self", "timeout", "max_idle_time"]
        assert worker.work(burst=True, logging_level="WARNING")
        assert r.lrange(RAN, 0, -1) == ["one", "two"]
        assert worker.asked == [(None, None)] * 3  # two jobs, then None: burst mode ends


def test_the_started_hook_runs_once_the_run_is_registered(conn):
    enqueue(conn)
    worker = HookedWorker([QUEUE], connection=conn)
    with relies("prepare_job_execution running once the run is in the started registry", "WorkerHooks"):
        worker.work(burst=True, logging_level="WARNING")
        assert worker.started_in_registry == [True]


def test_make_queue_builds_a_queue_as_rq_s_worker_does(conn):
    worker = SimpleWorker([QUEUE], connection=conn)
    with relies(
        "the Queue(name=, connection=, job_class=, serializer=, death_penalty_class=) call", "make_queue"
    ):
        queue = rq_adapter.make_queue(worker, "adapter-other")
        builtin = worker.queues[0]
        assert type(queue) is type(builtin) and queue.name == "adapter-other"
        assert queue.connection is builtin.connection and queue.serializer is builtin.serializer
        assert queue.job_class is builtin.job_class


def test_rq_s_own_dequeue_follows_set_queues(conn):
    worker = SimpleWorker([QUEUE], connection=conn)
    other = rq_adapter.make_queue(worker, "adapter-other")
    job = enqueue(conn, queue="adapter-other")
    with relies("BaseWorker._ordered_queues (the queues RQ's dequeue reads)", "set_queues"):
        rq_adapter.set_queues(worker, [worker.queues[0], other])
        got = BaseWorker.dequeue_job_and_maintain_ttl(worker, None)
        assert got is not None and got[0].id == job.id


def test_rq_lists_a_registered_worker_under_the_queues_set_queues_gives(conn):
    worker = SimpleWorker([QUEUE], connection=conn, name="adapter-requeued")
    worker.register_birth()
    other = rq_adapter.make_queue(worker, "adapter-other")
    with relies("worker_registration.register or the worker hash's queues field", "set_queues"):
        rq_adapter.set_queues(worker, [worker.queues[0], other])
        assert worker.key in get_keys(other)
        assert Worker.find_by_key(worker.key, connection=conn).queue_names() == [QUEUE, "adapter-other"]


def test_worker_idle_marks_the_worker_idle(conn):
    worker = SimpleWorker([QUEUE], connection=conn)
    worker.register_birth()
    with relies("BaseWorker.set_state or WorkerStatus.IDLE", "worker_idle"):
        rq_adapter.worker_idle(worker)
        assert Worker.find_by_key(worker.key, connection=conn).get_state() == WorkerStatus.IDLE


def test_worker_keepalive_refreshes_the_worker_and_runs_maintenance(conn):
    worker = SimpleWorker([QUEUE], connection=conn)
    worker.register_birth()
    conn.expire(worker.key, 5)
    with relies(
        "BaseWorker.heartbeat, should_run_maintenance_tasks or run_maintenance_tasks", "worker_keepalive"
    ):
        assert worker.should_run_maintenance_tasks  # never cleaned yet
        rq_adapter.worker_keepalive(worker)
        assert conn.ttl(worker.key) > 5
        assert not worker.should_run_maintenance_tasks  # just cleaned


def test_job_dequeued_notes_the_redis_version_on_the_job(conn):
    job = enqueue(conn)
    worker = SimpleWorker([QUEUE], connection=conn)
    worker.register_birth()
    with relies("Job.redis_server_version or BaseWorker.get_redis_server_version", "job_dequeued"):
        rq_adapter.job_dequeued(worker, job)
        assert job.redis_server_version == worker.get_redis_server_version()
        assert isinstance(job.redis_server_version, tuple)


def test_next_connection_wait_backs_off_as_rq_does(conn):
    worker = SimpleWorker([QUEUE], connection=conn)
    with relies("BaseWorker.exponential_backoff_factor or max_connection_wait_time", "next_connection_wait"):
        assert rq_adapter.next_connection_wait(worker, 1.0) == 1.0 * worker.exponential_backoff_factor
        assert rq_adapter.next_connection_wait(worker, 1e9) == worker.max_connection_wait_time


def test_a_warm_shutdown_is_seen_by_shutdown_requested(conn):
    worker = SimpleWorker([QUEUE], connection=conn)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with relies(
            "BaseWorker._shutdown_requested_date or StopRequested from the signal handler",
            "shutdown_requested",
        ):
            assert not rq_adapter.shutdown_requested(worker)
            with pytest.raises(rq_adapter.StopRequested):
                worker.request_stop(signal.SIGTERM, None)  # idle: RQ's handler raises StopRequested
            assert rq_adapter.shutdown_requested(worker)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_current_job_id_reads_the_worker_s_executions(conn, started):
    job, worker = started
    with relies("BaseWorker.executions (the in-memory executions)", "current_job_id"):
        assert rq_adapter.current_job_id(worker) == job.id
        assert rq_adapter.current_job_id(SimpleWorker([QUEUE], connection=conn)) is None


def test_registered_identity_reads_rq_s_worker_hash(conn):
    worker = SimpleWorker([QUEUE], connection=conn, name="adapter-identity")
    worker.register_birth()
    with relies("the worker hash's hostname/pid/death fields or register_death", "registered_identity"):
        assert rq_adapter.registered_identity(worker) == (socket.gethostname(), str(os.getpid()), "")
        rq_adapter.register_death(worker)
        host, pid, death = rq_adapter.registered_identity(worker)
        assert (host, pid) == (socket.gethostname(), str(os.getpid())) and death


def test_forget_registration_frees_the_name(conn):
    name = "adapter-namesake"
    SimpleWorker([QUEUE], connection=conn, name=name).register_birth()
    successor = SimpleWorker([QUEUE], connection=conn, name=name)
    with relies(
        "register_birth refusing a live name, worker_registration.unregister or the executions key",
        "forget_registration",
    ):
        with pytest.raises(ValueError):
            successor.register_birth()
        with conn.pipeline() as pipe:
            rq_adapter.forget_registration(successor, pipe)
            pipe.execute()
        assert successor.key not in get_keys(connection=conn)
        successor.register_birth()


def test_forget_workers_makes_rq_forget_them(conn, started):
    _, worker = started
    assert conn.exists(worker.executions_key)
    with relies("the worker key, executions key or worker_registration sets", "forget_workers"):
        with conn.pipeline() as pipe:
            rq_adapter.forget_workers(pipe, [worker.name], [QUEUE])
            pipe.execute()
        assert not conn.exists(worker.key) and not conn.exists(worker.executions_key)
        assert worker.name not in {w.name for w in Worker.all(connection=conn)}
        assert worker.key not in get_keys(Queue(QUEUE, connection=conn))


def test_a_job_past_its_timeout_raises_job_timeout(conn):
    Queue(QUEUE, connection=conn).enqueue_call("time.sleep", args=(5,), timeout=1, result_ttl=60)
    raised: list[BaseException] = []
    worker = SimpleWorker([QUEUE], connection=conn)
    worker.push_exc_handler(lambda job, exc_type, exc_value, tb: raised.append(exc_value))
    with relies("the exception a job's time limit raises (rq.timeouts.BaseTimeoutException)", "JobTimeout"):
        worker.work(burst=True, logging_level="WARNING")
        assert len(raised) == 1 and isinstance(raised[0], rq_adapter.JobTimeout)


def test_a_worker_stops_its_command_thread_without_waiting_out_rq_s_sleep(conn):
    """The stall RQ 3.0 and redis-py 8 make: a command thread left unsubscribed waits `sleep_time` (60 s)
    in get_message, and RQ's unsubscribe joins it without a limit. WorkerHooks bounds that join."""
    worker = HookedWorker([QUEUE], connection=conn)
    with relies("PubSubWorkerThread.stop(timeout) and the worker's pubsub/pubsub_thread", "unsubscribe"):
        worker.subscribe()
        worker.pubsub.unsubscribe()  # the thread reads the confirmation, then waits to be subscribed again
        deadline = time.monotonic() + 5
        while worker.pubsub.subscribed and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        started = time.monotonic()
        worker.unsubscribe()
        # RQ's own unsubscribe takes the whole 60 s here; a bound of 10 s tells the two apart on any machine.
        assert time.monotonic() - started < 10


# -- pre-forked horses --------------------------------------------------------------------------------


class PreforkingWorker(rq_adapter.PreforkHooks, Worker):
    """Forks the next horse as each job's horse starts, as workers/prefork.py does, with the bare minimum."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.handed: list[int] = []
        self.next: tuple[int, int] | None = None

    def horse_started(self, job: Job) -> None:
        self.calls.append("horse_started")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            os.setpgrp()
            line = b""
            while not line.endswith(b"\n"):
                chunk = os.read(read_end, 4096)
                if not chunk:
                    os._exit(0)
                line += chunk
            job_id, queue_name, execution_id = line.decode().split()
            rq_adapter.run_horse(self, job_id, queue_name, execution_id)
            os._exit(3)  # not reached: main_work_horse ends the process
        os.close(read_end)
        self.next = (pid, write_end)

    def horse_for(self, job: Job, queue: Queue, execution_id: str) -> int | None:
        self.calls.append("horse_for")
        if self.next is None:
            return None
        (pid, write_end), self.next = self.next, None
        os.write(write_end, f"{job.id} {queue.name} {execution_id}\n".encode())
        os.close(write_end)
        self.handed.append(pid)
        return pid

    def worker_ending(self) -> None:
        self.calls.append("worker_ending")
        if self.next is not None:
            pid, write_end = self.next
            os.close(write_end)  # end of file: it exits
            os.waitpid(pid, 0)


def test_a_horse_forked_before_its_job_runs_the_job_as_rq_s_own_would(conn, r):
    for tag in ("one", "two", "three"):
        enqueue(conn, tag)
    worker = PreforkingWorker([QUEUE], connection=conn, name=f"prefork-{uuid.uuid4().hex[:8]}")
    with relies(
        "Worker.execute_job forking through fork_work_horse and monitoring _horse_pid; main_work_horse, "
        "Execution.fetch and the execution setter in a child forked earlier",
        "PreforkHooks and run_horse",
    ):
        assert worker.work(burst=False, max_jobs=3, logging_level="WARNING")
        assert r.lrange(RAN, 0, -1) == ["one", "two", "three"]
        assert len(worker.handed) == 2  # the second and third ran in horses forked before they came
        finished = FinishedJobRegistry(QUEUE, connection=conn).get_job_ids()
        assert len(finished) == 3
        assert worker.calls[-1] == "worker_ending" and worker.calls.count("horse_started") == 3
        assert worker.burst is False
        # Each run ended under its own execution: nothing left in the started registry (a horse forked
        # while the previous job ran once ran under that job's execution and left its own entry behind).
        assert StartedJobRegistry(QUEUE, connection=conn).get_job_ids(cleanup=False) == []
        assert conn.scard(WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker.name)) == 0
