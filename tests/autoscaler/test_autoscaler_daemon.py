"""The autoscaler daemon with the `local` provider: real Redis, real `bbo admin worker` processes.

A demo submission is queued, daemon steps grow the fleet from nothing to the cap, the workers score it,
and once the queue is empty and the workers have idled a while the daemon drains them back to zero, with
no job lost or killed. A daemon restarted in the middle takes over the same workers; dry-run acts on
nothing; machines that never join are swept; a worker frozen mid-job is deleted and its job requeued and
scored; the real loop runs in a thread and stops cleanly; `bbo admin autoscaler run` and
`bbo admin up --autoscale local` run as commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from artifacts import archive
from autoscaler.daemon import EVENT_KIND, Daemon, read_status
from autoscaler.policy import PolicyConfig
from autoscaler.providers import CapacityExceeded
from autoscaler.providers.base import machines_key
from autoscaler.providers.local import LocalProvider
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.records import load_submission, read_events, read_studies
from queue_schema.states import SubmissionState
from runtime import dispatch, recovery
from runtime.spec import load
from tests.conftest import SUBMISSIONS
from tests.live_server import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.system

CAP = 2
FAST = PolicyConfig(
    min_workers=0,
    max_workers=CAP,
    scale_up_cooldown_s=1.0,
    scale_down_cooldown_s=1.0,
    idle_before_drain_s=3.0,
    boot_timeout_s=120.0,
    error_backoff_s=2.0,
)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)", "{name}"]


@pytest.fixture(autouse=True)
def _no_leftover_reaper_lock(r):
    r.delete(keys.lock(recovery.REAPER_LOCK))


@pytest.fixture()
def make_provider(r, redis_server, state_dir, tmp_path):
    """LocalProvider factory on a fleet of this test's own; every process it made is killed afterwards."""
    fleet = f"t{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "BBO_REDIS_URL": redis_server,
        "BBO_STATE_DIR": str(state_dir),
        "BBO_ALLOW_UNSAFE_SANDBOX": "1",
    }
    made: list[LocalProvider] = []

    def make(**options) -> LocalProvider:
        options = {"fleet": fleet, "cap": CAP, "env": env, "log_dir": tmp_path / "logs", **options}
        provider = LocalProvider(r, **options)
        made.append(provider)
        return provider

    yield make
    if made:
        for machine in made[-1].list():
            made[-1].delete(machine.name)
        assert made[-1].list() == []


def submit(r, folder: str = "random_search"):
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / folder, spec.submission)
    return create_submission(r, team="auto", data=data, spec=spec, phase="feedback", backend="process")


def autoscaler_events(r) -> list:
    return [e for e in read_events(r, count=1000) if e.kind == EVENT_KIND]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pids(provider: LocalProvider) -> dict[str, int]:
    return {m.name: int(m.labels["pid"]) for m in provider.list()}


def test_scales_up_to_the_cap_scores_and_drains_back_to_zero_across_a_restart(r, make_provider, tmp_path):
    provider = make_provider()
    sub = submit(r)
    daemon = Daemon(r, provider, FAST, fleet=provider.fleet)

    first = daemon.step()
    assert first.decision.add == CAP and len(first.created) == CAP and first.error is None
    assert len(provider.list()) == CAP
    assert {w.state for w in daemon.step().observation.workers} <= {"booting", "idle", "busy"}

    def all_joined():
        report = daemon.step()
        assert len(report.observation.workers) <= CAP and not report.decision.add
        return report if all(w.state != "booting" for w in report.observation.workers) else None

    wait_for(all_joined, 120, "both workers to join", tmp_path / "logs")
    before = pids(provider)

    # A restart: a new daemon and a new provider (no child handles, no memory but Redis) find the fleet.
    provider = make_provider()
    daemon = Daemon(r, provider, FAST, fleet=provider.fleet)
    assert pids(provider) == before
    report = daemon.step()
    assert {w.name for w in report.observation.workers} == set(before)
    assert report.decision.add == 0 and not report.created

    def scored():
        report = daemon.step()
        assert len(report.observation.workers) <= CAP
        assert not report.deleted, "no worker of a healthy fleet is swept"
        current = load_submission(r, sub.id)
        return current if current.state not in (SubmissionState.QUEUED, SubmissionState.RUNNING) else None

    done = wait_for(scored, 240, "the submission to be scored", tmp_path / "logs")
    assert done.state == SubmissionState.SCORED, done.failure

    def drained_to_zero():
        daemon.step()
        return provider.list() == []

    wait_for(drained_to_zero, 90, "the fleet to drain back to zero", tmp_path / "logs")
    # A process in the middle of exiting has already left the scan (its command line is gone with its
    # memory) but is not yet a zombie: its exit is a moment behind.
    wait_for(lambda: all(gone(pid) for pid in before.values()), 10, "the drained workers to exit")

    # Nothing lost, killed or counted twice.
    spec = load("demo")
    feedback = spec.phases["feedback"]
    assert (
        done.progress.studies_done == done.progress.studies_total == len(feedback.problems) * feedback.studies
    )
    for problem in feedback.problems:
        assert sorted(read_studies(r, sub.id, 1, problem)) == list(range(feedback.studies))
    assert not [e for e in read_events(r, sub.id, count=1000) if e.kind == "job_requeued"]

    events = autoscaler_events(r)
    assert any(e.data["add"] == CAP and len(e.data["created"]) == CAP for e in events)
    drained = {name for e in events for name in e.data["drained"]}
    assert drained == set(before)
    assert all(not e.data["dry_run"] for e in events)
    daemon.step()
    status = read_status(r, provider.fleet)  # the metrics: the last step's figures
    assert status["machine_hours"] > 0 and status["workers"] == dict.fromkeys(status["workers"], 0)
    assert status["queued"] == status["running"] == 0 and not status["dry_run"]


def test_dry_run_decides_and_records_but_acts_on_nothing(r, make_provider):
    provider = make_provider()
    submit(r)
    config = dataclasses.replace(FAST, scale_up_cooldown_s=600.0)
    daemon = Daemon(r, provider, config, fleet=provider.fleet, dry_run=True)
    report = daemon.step()
    assert report.decision.add == CAP and report.created == []
    assert provider.list() == [] and r.hlen(machines_key("local", provider.fleet)) == 0
    (event,) = autoscaler_events(r)
    assert event.data["dry_run"] is True and event.data["add"] == CAP
    # It remembers its own pretend scale-up (a cooldown now), but the same reason twice is one event.
    held = daemon.step()
    assert held.decision.held and held.recorded and held.created == []
    assert not daemon.step().recorded
    assert len(autoscaler_events(r)) == 2 and provider.list() == []
    assert r.get(f"{keys.PREFIX}:autoscaler:{provider.fleet}:policy") is None, "no real daemon's memory"


def test_machines_that_never_join_are_swept_and_the_cap_is_a_quota(r, make_provider):
    provider = make_provider(argv=SLEEPER, cap=1)
    (name,) = provider.create(1)
    with pytest.raises(CapacityExceeded) as refused:
        provider.create(1)
    assert refused.value.created == []
    # The process table is the source of truth: a lost Redis record does not lose the machine.
    r.delete(machines_key("local", provider.fleet))
    (machine,) = make_provider(argv=SLEEPER, cap=1).list()
    assert machine.name == name
    pid = int(machine.labels["pid"])

    config = PolicyConfig(min_workers=0, max_workers=1, boot_timeout_s=0.5)
    daemon = Daemon(r, provider, config, fleet=provider.fleet)
    time.sleep(1.0)
    report = daemon.step()
    assert report.deleted == [name]
    assert provider.list() == []
    assert gone(pid)
    (event,) = autoscaler_events(r)
    assert event.data["deleted"] == [name]


def test_the_loop_runs_in_a_thread_stops_cleanly_and_leaves_the_fleet_running(r, make_provider, tmp_path):
    provider = make_provider()
    config = PolicyConfig(min_workers=1, max_workers=CAP, scale_up_cooldown_s=1.0)
    seen: list[dict] = []
    daemon = Daemon(r, provider, config, fleet=provider.fleet, interval_s=0.5, on_event=seen.append)
    stop = threading.Event()
    loop = threading.Thread(target=daemon.run, args=(stop,))
    loop.start()
    try:
        wait_for(lambda: len(recovery.workers(r)) == 1, 120, "the minimum worker to join", tmp_path / "logs")
    finally:
        stop.set()
        loop.join(30)
    assert not loop.is_alive()
    (name,) = pids(provider)
    assert seen and seen[0]["created"] == [name]
    assert r.get(keys.lock(f"autoscaler:{provider.fleet}")) is None, "a clean stop frees the lock"
    time.sleep(1.0)
    assert list(pids(provider)) == [name], "stopping the daemon leaves its workers running"

    # --drain-on-exit: a warm stop of every worker; the process exits by itself.
    (pid,) = pids(provider).values()
    stop_now = threading.Event()
    stop_now.set()
    Daemon(r, make_provider(), config, fleet=provider.fleet).run(stop_now, drain_on_exit=True)
    wait_for(lambda: gone(pid), 60, "the drained worker to exit")
    assert pids(provider) == {}


def test_a_worker_that_goes_silent_is_deleted_and_its_job_requeued_and_scored(r, make_provider, tmp_path):
    provider = make_provider(cap=1)
    config = dataclasses.replace(FAST, max_workers=1)
    sub = submit(r, "ponderer")  # a few seconds per study: the worker is caught mid-job
    daemon = Daemon(r, provider, config, fleet=provider.fleet)
    (frozen,) = daemon.step().created

    def joined():
        report = daemon.step()
        return any(w.name == frozen and w.state != "booting" for w in report.observation.workers)

    wait_for(joined, 120, "the worker to join", tmp_path / "logs")
    (pid,) = pids(provider).values()

    def signal_tree(signum: int) -> None:
        worker = psutil.Process(pid)
        for proc in [worker, *worker.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signum)

    def frozen_mid_job():
        if not r.keys(keys.job_heartbeat("*")):
            return False
        signal_tree(signal.SIGSTOP)  # a frozen machine: worker and work horse stop beating, stay around
        if r.keys(keys.job_heartbeat("*")) and dispatch.queue_depths(r)["running"] == 1:
            return True
        signal_tree(signal.SIGCONT)  # the job ended just then: try the next one
        return False

    wait_for(frozen_mid_job, 120, "the worker to be caught mid-job", tmp_path / "logs")

    def swept():
        report = daemon.step()
        return frozen in report.deleted

    wait_for(swept, 90, "the silent worker to be deleted", tmp_path / "logs")
    assert gone(pid)

    def finished():
        report = daemon.step()
        assert len(report.observation.workers) <= 1
        current = load_submission(r, sub.id)
        return current if current.state not in (SubmissionState.QUEUED, SubmissionState.RUNNING) else None

    done = wait_for(finished, 240, "a new worker to score the submission", tmp_path / "logs")
    assert done.state == SubmissionState.SCORED, done.failure
    assert [e for e in read_events(r, sub.id, count=1000) if e.kind == "job_requeued"]
    assert done.progress.studies_done == done.progress.studies_total
    assert any(frozen in e.data["deleted"] for e in autoscaler_events(r))


# -- the commands ------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def command_env(redis_server: str, state_dir: Path) -> dict[str, str]:
    env = {**os.environ, "BBO_REDIS_URL": redis_server, "BBO_STATE_DIR": str(state_dir)}
    return env | {"BBO_ALLOW_UNSAFE_SANDBOX": "1"}


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_autoscaler_run_dry_run_prints_its_decisions_as_json(r, redis_server, state_dir):
    submit(r)
    fleet = f"t{uuid.uuid4().hex[:6]}"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cli", "admin", "autoscaler", "run", "--dry-run", "--json-events"]
        + ["--max", "2", "--interval", "0.5", "--fleet", fleet],
        env=command_env(redis_server, state_dir),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(daemon.stdout.readline())
    finally:
        code = stop(daemon)
    assert code == 0, daemon.stderr.read()
    assert first["add"] == 2 and first["dry_run"] is True and first["created"] == []
    assert first["fleet"] == fleet and first["queued"] == 4
    assert LocalProvider(r, fleet=fleet, env=command_env(redis_server, state_dir)).list() == []


def test_up_with_local_autoscaling_scores_and_leaves_no_worker_behind(
    r, redis_server, state_dir, tmp_path, make_provider
):
    env = command_env(redis_server, state_dir)
    provider = make_provider(fleet="local")  # the fleet `up` runs, on this store; cleaned up after
    assert provider.list() == []
    sub = submit(r)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "cli", "admin", "up", "--autoscale", "local", "--workers", "1"]
            + ["--port", str(free_port()), "--backend", "process"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:

        def finished():
            current = load_submission(r, sub.id)
            return current if current.state not in (SubmissionState.QUEUED, SubmissionState.RUNNING) else None

        done = wait_for(finished, 240, "the submission to be scored", tmp_path)
        (worker,) = pids(provider).values()
    finally:
        code = stop(up)
    assert code == 0, log.read_text(errors="replace")[-3000:]
    assert done.state == SubmissionState.SCORED, done.failure
    assert gone(worker), "up drains its autoscaled workers when it stops"
    assert provider.list() == []
    events = autoscaler_events(r)
    assert events[0].data["add"] == 1 and events[-1].data["reason"].startswith("drain on exit")


def test_the_lock_of_a_dead_daemon_on_this_machine_is_taken_over_at_once_and_no_other(r):
    from autoscaler.daemon_lock import AnotherDaemonRuns, DaemonLock

    key = keys.lock(f"autoscaler:lock-test-{uuid.uuid4().hex[:6]}")
    first = DaemonLock(r, key, 60, "fleet 'x'")
    first.take()
    first.take()  # renewing its own lock
    with pytest.raises(AnotherDaemonRuns, match="another autoscaler runs for fleet 'x'"):
        DaemonLock(r, key, 60, "fleet 'x'").take()  # alive: this very process

    host, namespace, _, _ = first.token.split("|")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen(SLEEPER[:3])
    try:
        for holder, taken in (
            (f"{host}|{namespace}|{gone.pid}|dead", True),  # a crashed daemon here: no wait for its TTL
            (f"{host}|{namespace}|{alive.pid}|live", False),
            (f"elsewhere|{namespace}|{gone.pid}|far", False),  # another machine's: only its TTL frees it
            (f"{host}|pid:[1]|{gone.pid}|container", False),  # another PID namespace's
        ):
            r.set(key, holder, ex=60)
            second = DaemonLock(r, key, 60, "fleet 'x'")
            if taken:
                second.take()
                assert r.get(key) == second.token and r.ttl(key) > 50
            else:
                with pytest.raises(AnotherDaemonRuns):
                    second.take()
                assert r.get(key) == holder
            second.release()
    finally:
        alive.kill()
        alive.wait()
        r.delete(key)
