"""The `docker` provider against the real engine: real worker containers from the real worker image, the
real Redis (its unix socket bind-mounted), real studies in sibling sandbox containers (no mocks).

Two containers join the fleet, one scores a job in a docker sandbox and is drained while busy (the job
finishes, the container goes), a new provider object finds the same containers; the cap is a quota, the
container is locked down, bad options and a dead engine are one-line errors; the daemon grows a fleet for
a job and drains it back to zero; deleting a busy worker takes its sandboxes with it.

The worker image is built on demand and content-tagged: present, it is reused in about a second; after a
source change only its small project layer is rebuilt (~30 s); the first build takes minutes. Skipped when
no engine answers; with BBO_REQUIRE_DOCKER=1 (CI) that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import docker
import pytest

from artifacts import archive
from autoscaler.daemon import Daemon
from autoscaler.policy import PolicyConfig
from autoscaler.providers import CapacityExceeded, ProviderError, make
from autoscaler.providers.base import machines_key
from autoscaler.providers.docker import (
    FLEET_LABEL,
    MACHINE_LABEL,
    STORE_LABEL,
    DockerProvider,
    store_id,
)
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.records import load_submission, read_events, read_studies
from queue_schema.states import SubmissionState
from runtime import recovery
from sandbox_image.labels import WORKER_LABEL
from tests.conftest import SUBMISSIONS
from tests.live_server import free_port
from tests.scoring_helpers import PROBLEM, tiny_spec
from tests.waiting import wait_for


def _skip_reason() -> str | None:
    try:
        docker.from_env(timeout=10).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        return f"no Docker engine answers ({str(exc).splitlines()[0][:120]}); scripts/start-dockerd"
    return None


_REASON = _skip_reason()
if _REASON and os.environ.get("BBO_REQUIRE_DOCKER") == "1":
    raise RuntimeError(f"BBO_REQUIRE_DOCKER=1 but {_REASON}")
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.timeout(1200),  # the first test builds the image when it is missing: minutes on 2 cores
    pytest.mark.system,
]

CAP = 2


@pytest.fixture(scope="module")
def worker_image() -> str:
    from autoscaler.providers.docker_image import build

    return build()["tag"]


@pytest.fixture()
def make_provider(r, redis_server, state_dir, worker_image):
    """DockerProvider factory on a fleet of this test's own; every container it made is removed after."""
    fleet = f"t{uuid.uuid4().hex[:6]}"
    env = {key: value for key, value in os.environ.items() if key.startswith("DOCKER_")}
    env.update(BBO_REDIS_URL=redis_server, BBO_STATE_DIR=str(state_dir))
    made: list[DockerProvider] = []

    def build(**options) -> DockerProvider:
        options = {"fleet": fleet, "cap": CAP, "env": env, "image": worker_image, **options}
        provider = make("docker", r=r, **options)
        assert isinstance(provider, DockerProvider)
        made.append(provider)
        return provider

    yield build
    if made:
        for machine in made[0].list():
            made[0].delete(machine.name)
        assert made[0].list() == []


def beating(r, names) -> set[str]:
    return {hb.worker for hb in recovery.workers(r)} & set(names)


def test_workers_join_score_in_a_sibling_sandbox_drain_warmly_and_outlive_the_provider(r, make_provider):
    provider = make_provider()
    before = time.time()
    names = provider.create(2)
    assert names == [f"{provider.fleet}-1", f"{provider.fleet}-2"]
    machines = provider.list()
    assert [m.name for m in machines] == names
    for machine in machines:
        assert machine.state == "running" and before - 2 <= machine.created_at <= time.time() + 2
        assert machine.labels[FLEET_LABEL] == provider.fleet and machine.labels[MACHINE_LABEL] == machine.name
        assert machine.labels[STORE_LABEL] == store_id(provider.redis_url)
    logs = provider.log_dir

    # They join the fleet by themselves: heartbeats in Redis under the machine names.
    wait_for(lambda: beating(r, names) == set(names), 120, "both containers' workers to beat", logs)

    # A new provider object (a restarted daemon) finds the same containers through their labels.
    again = make_provider()
    assert [(m.name, m.labels["container"]) for m in again.list()] == [
        (m.name, m.labels["container"]) for m in machines
    ]

    # A real job: one study of a slow-thinking optimizer, its sandbox a sibling container on this engine.
    spec = tiny_spec()
    data = archive.pack(SUBMISSIONS / "sleepy", spec.submission)
    sub = create_submission(r, team="dock", data=data, spec=spec, phase="feedback", backend="docker")

    def busy_worker():
        return next((hb.worker for hb in recovery.workers(r) if hb.state == "busy"), None)

    busy = wait_for(busy_worker, 120, "a worker to take the job", logs, interval=0.1)
    assert busy in names
    again.drain(busy)  # warm: the running study finishes
    assert {m.name: m.state for m in again.list()}[busy] == "draining"

    def finished():
        current = load_submission(r, sub.id)
        return current if current.state not in (SubmissionState.QUEUED, SubmissionState.RUNNING) else None

    done = wait_for(finished, 180, "the submission to be scored", logs)
    assert done.state == SubmissionState.SCORED, done.failure
    studies = read_studies(r, sub.id, 1, PROBLEM)
    assert list(studies) == [0]
    assert studies[0].backend == "docker" and studies[0].worker.startswith(f"bbo-{busy}:")

    # The drained worker exits once its job is done; its container is collected, its log tail kept.
    wait_for(lambda: busy not in {m.name for m in again.list()}, 90, "the drained container to go", logs)
    assert (logs / f"{busy}.log").is_file()
    assert r.hget(machines_key("docker", provider.fleet), busy) is None
    (other,) = set(names) - {busy}
    assert [m.name for m in provider.list()] == [other]

    # Delete is immediate and idempotent.
    provider.delete(other)
    provider.delete(other)
    assert provider.list() == []


def test_the_cap_is_a_quota_and_errors_are_one_line(r, make_provider):
    provider = make_provider(cap=1, memory_mb="1024", pids="256")
    with pytest.raises(CapacityExceeded) as refused:
        provider.create(2)
    assert refused.value.created == [f"{provider.fleet}-1"]
    assert "cap of 1" in str(refused.value)
    assert [m.name for m in provider.list()] == refused.value.created
    with pytest.raises(CapacityExceeded) as again:
        provider.create(1)
    assert again.value.created == []

    # The worker container is unprivileged but for the engine's socket, and limited.
    engine = docker.from_env()
    attrs = engine.containers.get(f"bbo-{provider.fleet}-1").attrs
    host = attrs["HostConfig"]
    assert host["Memory"] == 1024 * 1024 * 1024 and host["PidsLimit"] == 256
    assert host["CapDrop"] == ["ALL"] and not host["Privileged"] and host["ReadonlyRootfs"]
    assert host["NetworkMode"] == "none" and host["Init"]
    assert "no-new-privileges" in host["SecurityOpt"]

    with pytest.raises(ProviderError, match="allow_unsafe"):
        make_provider(sandbox="process")
    with pytest.raises(ProviderError, match="bwrap"):
        make_provider(sandbox="bwrap")
    with pytest.raises(ProviderError, match="unknown_option"):
        make_provider(unknown_option="1")
    with pytest.raises(ProviderError, match="build-worker-image"):
        make_provider(image="bbo-worker:missing").create(1)

    unreachable = {**provider.env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    with pytest.raises(ProviderError) as down:
        make_provider(env=unreachable).list()
    assert "no Docker engine answers" in str(down.value) and "\n" not in str(down.value)


def test_the_daemon_grows_a_container_fleet_for_a_job_and_drains_it_back_to_zero(r, make_provider):
    r.delete(keys.lock(recovery.REAPER_LOCK))
    provider = make_provider(cap=1)
    config = PolicyConfig(
        max_workers=1, scale_down_cooldown_s=1.0, idle_before_drain_s=2.0, boot_timeout_s=120.0
    )
    daemon = Daemon(r, provider, config, fleet=provider.fleet)
    spec = tiny_spec()
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    sub = create_submission(r, team="dock", data=data, spec=spec, phase="feedback", backend="docker")

    report = daemon.step()
    assert report.created == [f"{provider.fleet}-1"] and report.error is None

    def scored():
        report = daemon.step()
        assert not report.deleted, "a healthy worker is never swept"
        current = load_submission(r, sub.id)
        return current if current.state not in (SubmissionState.QUEUED, SubmissionState.RUNNING) else None

    done = wait_for(scored, 180, "the daemon's worker to score the submission", provider.log_dir, interval=1)
    assert done.state == SubmissionState.SCORED, done.failure

    def drained_to_zero():
        daemon.step()
        return provider.list() == []

    wait_for(drained_to_zero, 120, "the fleet to drain back to zero", provider.log_dir, interval=1)
    drained = {
        name for e in read_events(r, count=1000) if e.kind == "autoscaler" for name in e.data["drained"]
    }
    assert drained == {f"{provider.fleet}-1"}


def test_deleting_a_busy_worker_removes_it_and_its_sandboxes_at_once(r, make_provider):
    provider = make_provider(cap=1)
    (name,) = provider.create(1)
    spec = tiny_spec()
    data = archive.pack(SUBMISSIONS / "sleepy", spec.submission)
    create_submission(r, team="dock", data=data, spec=spec, phase="feedback", backend="docker")
    engine = docker.from_env()

    def its_sandboxes():
        found = engine.containers.list(all=True, sparse=True, filters={"label": WORKER_LABEL})
        return [c for c in found if c.attrs["Labels"][WORKER_LABEL].startswith(f"bbo-{name}:")]

    wait_for(its_sandboxes, 120, "the worker to start a sandbox", provider.log_dir, interval=0.2)
    provider.delete(name)
    assert provider.list() == [] and its_sandboxes() == []


def test_a_tcp_redis_on_loopback_is_reached_over_host_networking(worker_image, state_dir, tmp_path):
    from queue_schema.connection import connect
    from runtime.redis_server import redis_server_binary

    port = free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = subprocess.Popen(
        [*argv, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        r = connect(url)
        wait_for(lambda: _pings(r), 30, "the TCP Redis to answer")
        env = {key: value for key, value in os.environ.items() if key.startswith("DOCKER_")}
        env.update(BBO_REDIS_URL=url, BBO_STATE_DIR=str(state_dir))
        provider = DockerProvider(r, fleet=f"t{uuid.uuid4().hex[:6]}", cap=1, env=env, image=worker_image)
        assert provider.network == "host"
        try:
            (name,) = provider.create(1)
            wait_for(lambda: beating(r, [name]), 120, "the worker to beat in the TCP Redis", provider.log_dir)
        finally:
            for machine in provider.list():
                provider.delete(machine.name)
        assert provider.list() == []
    finally:
        server.kill()
        server.wait(10)


def _pings(r) -> bool:
    try:
        return bool(r.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_build_worker_image_command_reports_the_image(worker_image):
    # Last in the file: a tree edited since the fixture's build makes this a rebuild, which untags the
    # fixture's image.
    done = subprocess.run(
        [sys.executable, "-m", "cli", "admin", "autoscaler", "build-worker-image", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["tag"].startswith("bbo-worker:") and record["sandbox_image"].startswith("bbo-sandbox:")
    assert record["size_bytes"] > 0
