"""A sandbox that fails to start is ours (`infrastructure`: retried, never charged), and a team cannot
make its own failure look like one.

The sandbox's bootstrap writes a start marker to a private descriptor the worker passed it, after the
seccomp filter is in place and before anything of the submission loads, then closes it; the backend's
`exit_cause` says `infrastructure` when the process ended without it. Real bubblewrap and docker.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from queue_schema.states import FailureCause
from tests.conftest import SUBMISSIONS
from tests.sandbox_helpers import run_launched
from workers.harness import FatalOptimizerError, SandboxInfrastructureError
from workers.sandbox import bwrap

_REASON = bwrap.unavailable_reason()
if _REASON and os.environ.get("BBO_REQUIRE_BWRAP") == "1":
    raise RuntimeError(f"BBO_REQUIRE_BWRAP=1 but the bwrap backend is unavailable: {_REASON}")
needs_bwrap = pytest.mark.skipif(_REASON is not None, reason=f"bwrap backend unavailable: {_REASON}")
pytestmark = [pytest.mark.usefixtures("state_dir"), pytest.mark.system]

# An optimizer that fakes a failed start: it prints what the sandbox prints when its seccomp filter does
# not install, and the start marker itself, lists its open descriptors and writes the marker to every one
# past the protocol's (fds 3 and 4, the host's copies of stdin and stdout), and exits with the code of a
# failed seccomp prelude (or of a failed exec) before it ever says hello.
FAKER = """\
import os, sys

sys.stderr.write("[sandbox] cannot install the seccomp filter: Operation not permitted\\n")
sys.stderr.write("bbo-sandbox-started\\n")
for fd in sorted(os.listdir("/proc/self/fd"), key=int):
    try:
        sys.stderr.write(f"FD {fd} {os.readlink('/proc/self/fd/' + fd)}\\n")
    except OSError:
        pass  # the listing's own descriptor, closed by now
sys.stderr.flush()
for fd in range(5, 1024):
    try:
        os.write(fd, b"bbo-sandbox-started\\n")
    except OSError:
        pass
os._exit(int(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "code.txt")).read()))
"""


def faker(tmp_path: Path, code: int) -> Path:
    target = tmp_path / f"faker-{code}"
    target.mkdir()
    (target / "optimizer.py").write_text(FAKER)
    (target / "code.txt").write_text(str(code))
    return target


def outcome(backend, launch, spec):
    """(the harness's verdict: a result, a FatalOptimizerError or SandboxInfrastructureError, log lines)."""
    try:
        return run_launched(backend, launch, spec, "DT-iris-acc", 0)
    except SandboxInfrastructureError as lost:
        return lost, []


# -- bwrap ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["cgroup", "rlimit"])
def each_mode(request, state_dir) -> bwrap.BwrapBackend:
    if request.param == "cgroup" and not bwrap.cgroups_usable():
        pytest.skip("this worker cannot create cgroup v1 memory and pids groups")
    return bwrap.BwrapBackend(cgroups=request.param == "cgroup")


@needs_bwrap
def test_bwrap_interpreter_gone_is_infrastructure(small_spec, tmp_path):
    # A real interpreter when the backend is made, gone when the sandbox starts: setpriv cannot exec it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    backend = bwrap.BwrapBackend(python=str(venv / "bin" / "python"), cgroups=False)
    launch = backend.launch(SUBMISSIONS / "random_search", small_spec.limits)
    (venv / "bin" / "python").unlink()
    verdict, _ = outcome(backend, launch, small_spec)
    assert isinstance(verdict, SandboxInfrastructureError), verdict


@needs_bwrap
def test_bwrap_memory_too_small_to_start_python_is_infrastructure(small_spec):
    # The spec's memory limit is too small for the interpreter itself: nothing of the team's ran.
    backend = bwrap.BwrapBackend(cgroups=False)
    limits = dataclasses.replace(small_spec.limits, memory_mb=4)
    spec = dataclasses.replace(small_spec, limits=limits)
    verdict, lines = outcome(backend, backend.launch(SUBMISSIONS / "random_search", limits), spec)
    assert isinstance(verdict, SandboxInfrastructureError), (verdict, lines[-5:])


@needs_bwrap
@pytest.mark.parametrize("code", [bwrap.SECCOMP_EXIT, 127])
def test_bwrap_team_faking_a_failed_start_is_charged(each_mode, small_spec, tmp_path, code):
    launch = each_mode.launch(faker(tmp_path, code), small_spec.limits)
    verdict, lines = outcome(each_mode, launch, small_spec)
    assert isinstance(verdict, FatalOptimizerError), (verdict, lines[-5:])
    assert verdict.cause == FailureCause.OPTIMIZER_CRASHED
    assert f"exit code {code}, backend's cause None" in "\n".join(lines)
    assert "cannot install the seccomp filter" in "\n".join(lines)  # it did print the fake message
    # The only pipes it holds are stderr (1 and 2 point at it) and the protocol's (3 and 4, the host's
    # copies of stdin and stdout): the marker's descriptor was closed before the submission loaded.
    fds = dict(line.split()[1:3] for line in lines if line.startswith("FD "))
    assert {fd for fd, target in fds.items() if target.startswith("pipe:")} == {"1", "2", "3", "4"}, fds


@needs_bwrap
def test_bwrap_started_sandbox_that_crashes_is_the_teams(small_spec):
    backend = bwrap.BwrapBackend(cgroups=False)
    verdict, lines = outcome(backend, backend.launch(SUBMISSIONS / "exits", small_spec.limits), small_spec)
    assert isinstance(verdict, FatalOptimizerError), (verdict, lines[-5:])
    assert verdict.cause == FailureCause.OPTIMIZER_CRASHED


# -- docker -----------------------------------------------------------------------------------------


def _docker_reason() -> str | None:
    from workers.sandbox import docker as docker_backend

    if docker_backend.available():
        return None
    return "docker backend unavailable: no engine answers or the sandbox image is not built"


_DOCKER_REASON = _docker_reason()
if _DOCKER_REASON and os.environ.get("BBO_REQUIRE_DOCKER") == "1":
    raise RuntimeError(f"BBO_REQUIRE_DOCKER=1 but {_DOCKER_REASON}")
needs_docker = pytest.mark.skipif(_DOCKER_REASON is not None, reason=_DOCKER_REASON or "")


@pytest.fixture(scope="module")
def docker_backend(state_dir):
    from workers.sandbox.docker import DockerBackend

    return DockerBackend()


@needs_docker
def test_docker_memory_too_small_to_start_python_is_infrastructure(docker_backend, small_spec):
    # 6 MB (the engine's minimum): the interpreter is OOM-killed before the submission loads. Docker says
    # OOMKilled, which alone would read as the team's resource_limit; without the marker it is ours.
    limits = dataclasses.replace(small_spec.limits, memory_mb=6)
    spec = dataclasses.replace(small_spec, limits=limits)
    launch = docker_backend.launch(SUBMISSIONS / "random_search", limits)
    verdict, lines = outcome(docker_backend, launch, spec)
    assert isinstance(verdict, SandboxInfrastructureError), (verdict, lines[-5:])


@needs_docker
@pytest.mark.parametrize("code", [127, 137])
def test_docker_team_faking_a_failed_start_is_charged(docker_backend, small_spec, tmp_path, code):
    launch = docker_backend.launch(faker(tmp_path, code), small_spec.limits)
    verdict, lines = outcome(docker_backend, launch, small_spec)
    assert isinstance(verdict, FatalOptimizerError), (verdict, lines[-5:])
    expected = FailureCause.RESOURCE_LIMIT if code == 137 else FailureCause.OPTIMIZER_CRASHED
    assert verdict.cause == expected  # 137 reads as a kill for memory: still the team's, never a refund
    assert f"exit code {code}, backend's cause None" in "\n".join(lines)
    fds = dict(line.split()[1:3] for line in lines if line.startswith("FD "))
    assert not [fd for fd, target in fds.items() if "bbo-start" in target], fds  # the marker FIFO is closed


@needs_docker
def test_docker_started_sandbox_that_crashes_is_the_teams(docker_backend, small_spec):
    launch = docker_backend.launch(SUBMISSIONS / "exits", small_spec.limits)
    verdict, lines = outcome(docker_backend, launch, small_spec)
    assert isinstance(verdict, FatalOptimizerError), (verdict, lines[-5:])
    assert verdict.cause == FailureCause.OPTIMIZER_CRASHED
