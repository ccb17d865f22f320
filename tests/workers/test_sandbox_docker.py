"""The docker backend against the real engine and the real sandbox image (no mocks).

Skipped when no engine answers or the content-tagged image is not built (`bbo admin sandbox build`);
with BBO_REQUIRE_DOCKER=1 (CI) that is a failure instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from queue_schema.states import FailureCause, StudyState
from tests.conftest import SUBMISSIONS
from tests.sandbox_helpers import run_launched
from workers.harness import FatalOptimizerError, run_one_study
from workers.optimizer_process import OptimizerProcess
from workers.sandbox.base import InstallFailed, SandboxUnavailable


def _skip_reason() -> str | None:
    from sandbox_image.build import image_tag
    from workers.sandbox import docker as docker_backend

    if docker_backend.available():
        return None
    return (
        f"docker backend unavailable: no engine answers or image {image_tag()} is not built "
        "(scripts/start-dockerd; bbo admin sandbox build)"
    )


_REASON = _skip_reason()
if _REASON and os.environ.get("BBO_REQUIRE_DOCKER") == "1":
    raise RuntimeError(f"BBO_REQUIRE_DOCKER=1 but {_REASON}")
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.usefixtures("state_dir"),
    pytest.mark.system,
]

STUDY_ENV_KEYS = {
    "HOME", "TMPDIR", "LANG", "PATH", "HOSTNAME", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
    "PYTHONHASHSEED", "PYTHONPATH", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_CONFIG_FILE",
    "GIT_PYTHON_REFRESH", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
}  # fmt: skip


@pytest.fixture(scope="module")
def backend(state_dir):
    from workers.sandbox.docker import DockerBackend

    return DockerBackend()


@pytest.fixture(scope="module")
def engine(backend):
    return backend.client


def run(backend, submission: Path, spec, problem: str = "DT-iris-acc", study: int = 0):
    """One study through the harness; returns (result or the FatalOptimizerError, log lines, container id)."""
    backend.prepare(submission, spec.limits)
    launch = backend.launch(submission, spec.limits, study=f"test-{study}")
    outcome, lines = run_launched(backend, launch, spec, problem, study)
    return outcome, lines, launch.argv[-1]


def assert_gone(engine, container_id: str, within_s: float = 10.0) -> None:
    """Removed (off the study's path, on a thread of the backend's: within moments)."""
    from docker.errors import NotFound

    deadline = time.monotonic() + within_s
    while True:
        try:
            engine.containers.get(container_id)
        except NotFound:
            return
        assert time.monotonic() < deadline, f"container {container_id} still there after {within_s} s"
        time.sleep(0.05)


def probe_of(lines: list[str]) -> dict:
    found = [line for line in lines if line.startswith("PROBE ")]
    assert found, "\n".join(lines[-20:])
    return json.loads(found[0][len("PROBE ") :])


# -- well-behaved -----------------------------------------------------------------------------------


def test_describe_names_the_content_tagged_image(backend):
    from sandbox_image.build import image_tag

    described = backend.describe()
    assert described["backend"] == "docker"
    assert described["image"] == image_tag()
    assert described["image_digest"].startswith("sha256:")


@pytest.mark.usefixtures("unsafe_ok")
def test_random_search_same_losses_as_process_backend(backend, engine, small_spec):
    from workers.sandbox import select

    process = select("process")
    for study in (0, 1):
        docker_result, _, container_id = run(backend, SUBMISSIONS / "random_search", small_spec, study=study)
        assert docker_result.state == StudyState.COMPLETE
        assert docker_result.backend == "docker" and docker_result.image_digest == backend.image.id
        proc = OptimizerProcess(process.launch(SUBMISSIONS / "random_search", small_spec.limits)).start()
        plain = run_one_study(proc, "DT-iris-acc", study, small_spec, process.describe(), lambda _: None)
        assert docker_result.losses == plain.losses
        assert docker_result.suggestions == plain.suggestions
        assert_gone(engine, container_id)


# -- the sandbox itself ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_run(backend, tmp_path_factory):
    """The probe optimizer, once, with a real TCP service listening on the host's loopback."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("BBO_CANARY_SECRET", "canary-4c1d")
        return _probe(backend, tmp_path_factory.mktemp("probe"))


def _probe(backend, tmp_path: Path):
    from runtime.spec import load

    spec = load("demo")
    limits = dataclasses.replace(spec.limits, suggest_budget_s=30.0, call_timeout_s=10.0)
    small_spec = dataclasses.replace(spec, rounds=3, batch=3, limits=limits)
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[object] = []

    def serve() -> None:
        server.settimeout(20)
        try:
            while True:
                conn, peer = server.accept()
                accepted.append(peer)
                conn.close()
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    submission = tmp_path / "probe"
    shutil.copytree(SUBMISSIONS / "docker_probe", submission)
    port = server.getsockname()[1]
    (submission / "probe_port.txt").write_text(str(port))
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the service answers the host
    time.sleep(0.1)
    accepted.clear()
    result, lines, container_id = run(backend, submission, small_spec)
    server.close()
    return result, probe_of(lines), accepted, container_id


def test_no_network(probe_run):
    result, probe, accepted, _ = probe_run
    assert result.state == StudyState.COMPLETE
    assert probe["interfaces"] == ["lo"]
    assert probe["loopback"].startswith("ConnectionRefusedError"), probe["loopback"]
    assert probe["public_ip"].startswith("OSError"), probe["public_ip"]  # network is unreachable
    assert probe["public_ip_2"] != "connected"
    assert probe["dns"].startswith("gaierror")
    assert accepted == []  # nothing reached the host's service


def test_read_only_root_and_private_tmp(probe_run):
    _, probe, _, _ = probe_run
    for place in ("write_root", "write_opt", "write_submission"):
        assert probe[place].startswith("OSError: [Errno 30] Read-only file system"), (place, probe[place])
    assert probe["write_tmp"] == "written"
    assert probe["write_home"] == "written"  # HOME is /tmp


def test_unprivileged_and_no_host_environment(probe_run):
    _, probe, _, _ = probe_run
    from workers.sandbox import uids

    assert uids.in_range(probe["uid"]), probe["uid"]  # a uid of its own, shared with no other container
    assert int(probe["cap_eff"], 16) == 0
    assert probe["no_new_privs"] == "1"
    env = probe["env"]
    assert "canary-4c1d" not in json.dumps(env)
    assert set(env) <= STUDY_ENV_KEYS, set(env) - STUDY_ENV_KEYS
    assert env["HOME"] == env["TMPDIR"] == "/tmp" and env["OMP_NUM_THREADS"] == "1"


def test_container_removed_after_study(probe_run, engine):
    assert_gone(engine, probe_run[3])


# -- hostile optimizers -----------------------------------------------------------------------------


def test_memory_hog_is_a_resource_limit(backend, engine, small_spec):
    limits = dataclasses.replace(small_spec.limits, memory_mb=256)
    spec = dataclasses.replace(small_spec, limits=limits)
    fatal, lines, container_id = run(backend, SUBMISSIONS / "docker_memory_hog", spec)
    assert isinstance(fatal, FatalOptimizerError), fatal
    assert fatal.cause == FailureCause.RESOURCE_LIMIT
    assert "hogging 1024 MB" in "\n".join(lines)
    assert "backend's cause resource_limit" in "\n".join(lines)  # docker's OOMKilled, not a guess
    assert_gone(engine, container_id)


def test_fork_bomb_is_contained_by_the_pids_limit(backend, engine, small_spec):
    limits = dataclasses.replace(small_spec.limits, pids=32)
    spec = dataclasses.replace(small_spec, limits=limits)
    started = time.monotonic()
    result, lines, container_id = run(backend, SUBMISSIONS / "docker_fork_bomb", spec)
    assert not isinstance(result, BaseException), result
    assert result.state in (StudyState.COMPLETE, StudyState.CUT_OFF)
    counts = [int(line.split()[1]) for line in lines if line.startswith("PIDS ")]
    assert counts and 16 <= max(counts) <= 32, counts  # the bomb ran, up to the limit
    assert time.monotonic() - started < 60
    assert_gone(engine, container_id)
    # The worker is fine: it can still start processes.
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0


def test_signal_ignoring_sleeper_is_killed_at_the_call_timeout(backend, engine, small_spec):
    limits = dataclasses.replace(small_spec.limits, call_timeout_s=2.0, suggest_budget_s=30.0)
    spec = dataclasses.replace(small_spec, rounds=4, limits=limits)
    started = time.monotonic()
    result, _, container_id = run(backend, SUBMISSIONS / "slow", spec)
    assert time.monotonic() - started < 20
    assert result.state == StudyState.CUT_OFF
    assert "call timeout" in result.cut_off_reason
    assert len(result.losses) == 2
    assert_gone(engine, container_id)


def test_a_container_is_killed_from_the_host_without_the_engine(backend, engine, small_spec):
    """The job's end kills its sandboxes through their cgroup (44-72 ms faster than the engine's kill):
    every process of the container ends, and the engine sees it exited."""
    from workers.sandbox.docker import kill_on_host

    backend.prepare(SUBMISSIONS / "random_search", small_spec.limits)
    launched = backend.launch(SUBMISSIONS / "random_search", small_spec.limits, study="test-kill")
    proc = OptimizerProcess(launched).start()
    container_id = launched.argv[-1]
    try:
        proc.wait_hello(60)
        container = engine.containers.get(container_id)
        assert container.status == "running"
        assert kill_on_host(container_id)
        deadline = time.monotonic() + 10
        while container.status == "running":
            assert time.monotonic() < deadline, "the container still runs after its kill"
            time.sleep(0.05)
            container.reload()
        assert container.attrs["State"]["ExitCode"] == 137  # SIGKILL
    finally:
        proc.kill()
    assert_gone(engine, container_id)


# -- bundled packages -------------------------------------------------------------------------------


def _tiny_wheel(tmp_path: Path) -> Path:
    """A pure-python wheel built here, offline; it depends on numpy, which the image provides."""
    source = tmp_path / "tiny-src"
    (source / "bbo_tiny_dep").mkdir(parents=True)
    (source / "bbo_tiny_dep" / "__init__.py").write_text("VALUE = 42\n")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "bbo-tiny-dep"\nversion = "0.1.0"\ndependencies = ["numpy>=1.20"]\n'
    )
    out = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "-w", str(out), str(source)], check=True, capture_output=True, timeout=120)
    (wheel,) = out.glob("bbo_tiny_dep-0.1.0-*.whl")
    return wheel


def test_bundled_wheel_installed_once_and_importable(backend, engine, small_spec, tmp_path):
    from workers.sandbox.docker import DockerBackend

    submission = tmp_path / "bundled"
    shutil.copytree(SUBMISSIONS / "docker_bundled", submission)
    shutil.copy(_tiny_wheel(tmp_path), submission)
    (submission / "requirements.txt").write_text("bbo-tiny-dep==0.1.0\n")

    first = backend.prepare(submission, small_spec.limits)
    assert not first.cached and first.install is not None
    started = time.monotonic()
    second = DockerBackend().prepare(submission, small_spec.limits)  # another worker, same artifact
    assert second.cached and second.install == first.install
    assert time.monotonic() - started < 2

    for study in (0, 1):
        result, lines, container_id = run(backend, submission, small_spec, study=study)
        assert not isinstance(result, BaseException), (result, lines[-10:])
        assert result.state == StudyState.COMPLETE
        assert any(line.startswith("TINY 42 from /install/") for line in lines), lines[-10:]
        assert_gone(engine, container_id)
    assert not any(c.labels.get("bbo-arena.role") == "install" for c in engine.containers.list(all=True))


def test_install_order_is_honoured(backend, small_spec, tmp_path):
    submission = tmp_path / "ordered"
    shutil.copytree(SUBMISSIONS / "docker_bundled", submission)
    wheel = shutil.copy(_tiny_wheel(tmp_path), submission)
    (submission / "install_order.txt").write_text(Path(wheel).name + "\n")
    prepared = backend.prepare(submission, small_spec.limits)
    assert prepared.install is not None
    assert list(prepared.install.glob("lib/python3.11/site-packages/bbo_tiny_dep/__init__.py"))


def test_empty_requirements_install_nothing(backend, small_spec, tmp_path):
    submission = tmp_path / "empty-reqs"
    shutil.copytree(SUBMISSIONS / "random_search", submission)
    (submission / "requirements.txt").write_text("# nothing\n\n")
    assert backend.prepare(submission, small_spec.limits).install is None


def test_requirement_not_bundled_fails_install(backend, engine, small_spec, tmp_path):
    submission = tmp_path / "unbundled"
    shutil.copytree(SUBMISSIONS / "docker_bundled", submission)
    (submission / "requirements.txt").write_text("bbo-tiny-dep==0.1.0\n")  # the wheel is not in the zip
    with pytest.raises(InstallFailed) as info:
        backend.prepare(submission, small_spec.limits)
    message = str(info.value)
    assert "bbo-tiny-dep" in message and "no network" in message
    assert "/root" not in message and os.environ.get("HOME", "/nonexistent") not in message
    assert not any(c.labels.get("bbo-arena.role") == "install" for c in engine.containers.list(all=True))
    # A failed install is not cached: nothing is left for a later prepare to mistake for success.
    from queue_schema.settings import state_dir
    from workers.sandbox.install import content_sha256

    assert not list((state_dir() / "sandbox" / "artifacts").glob(f"*/{content_sha256(submission)}"))


# -- infrastructure ---------------------------------------------------------------------------------


def test_missing_image_is_an_infrastructure_failure():
    from workers.sandbox.docker import DockerBackend

    with pytest.raises(SandboxUnavailable, match="bbo admin sandbox build"):
        DockerBackend(image="bbo-sandbox:does-not-exist")


def test_unreachable_engine_is_an_infrastructure_failure(monkeypatch):
    from workers.sandbox import docker as docker_backend

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert docker_backend.available() is False
    with pytest.raises(SandboxUnavailable, match="start-dockerd"):
        docker_backend.DockerBackend()


def test_sweep_removes_containers_of_dead_workers(backend, engine):
    from sandbox_image.labels import ROLE_LABEL, WORKER_LABEL
    from workers.sandbox.docker import sweep

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = engine.containers.create(
        backend.image.id,
        command=["/submission"],
        network_mode="none",
        labels={ROLE_LABEL: "sandbox", WORKER_LABEL: f"{socket.gethostname()}:{dead.pid}"},
    )
    alive = engine.containers.create(
        backend.image.id,
        command=["/submission"],
        network_mode="none",
        labels={ROLE_LABEL: "sandbox", WORKER_LABEL: f"{socket.gethostname()}:{os.getpid()}"},
    )
    try:
        assert sweep() >= 1
        assert_gone(engine, orphan.id)
        engine.containers.get(alive.id)  # a live worker's container stays
    finally:
        alive.remove(force=True)


# -- the admin command ------------------------------------------------------------------------------


def test_cli_build_reuses_the_tagged_image(backend):
    from typer.testing import CliRunner

    from cli.sandbox_cmd import app

    started = time.monotonic()
    outcome = CliRunner().invoke(app, ["build", "--json"])
    assert outcome.exit_code == 0, outcome.output
    record = json.loads(outcome.stdout.strip().splitlines()[-1])
    assert record["reused"] is True and record["tag"] == backend.tag
    assert record["image_id"] == backend.image.id
    assert time.monotonic() - started < 10
    status = CliRunner().invoke(app, ["status", "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["present"] is True


def test_cli_without_engine_says_how_to_start_one(monkeypatch):
    from typer.testing import CliRunner

    from cli.sandbox_cmd import app

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    outcome = CliRunner().invoke(app, ["build"])
    assert outcome.exit_code == 2
    assert "start-dockerd" in outcome.output and "Traceback" not in outcome.output


def test_container_removed_behind_our_back_is_infrastructure(backend, engine, small_spec):
    launch = backend.launch(SUBMISSIONS / "random_search", small_spec.limits)
    proc = OptimizerProcess(launch).start()
    try:
        assert proc.wait_hello(20).ok
        engine.containers.get(launch.argv[-1]).remove(force=True)
        proc.proc.wait(10)
        assert launch.exit_cause(proc.returncode) == FailureCause.INFRASTRUCTURE.value
    finally:
        proc.kill()


def test_container_that_never_started_is_infrastructure(backend, engine, small_spec):
    launch = backend.launch(SUBMISSIONS / "random_search", small_spec.limits)
    try:
        assert launch.exit_cause(1) == FailureCause.INFRASTRUCTURE.value
    finally:
        launch.cleanup()
    assert_gone(engine, launch.argv[-1])
