"""Sandboxes on one worker never share a limit, and a sandbox that fails to start is never the team's.

Real bubblewrap and docker (no mocks). Issue 14, finding 8: under bwrap's rlimit mode every sandbox ran as
uid 65534, and RLIMIT_NPROC counts every process of a uid on the machine, so one team's fork bomb made the
next team's sandbox fail to exec (EAGAIN) and that team was charged `optimizer_crashed`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from queue_schema import protocol
from queue_schema.states import StudyState
from suites.bayesmark_suite import BayesmarkObjective
from tests.conftest import SUBMISSIONS
from tests.sandbox_helpers import run_launched
from workers.harness import FatalOptimizerError, run_one_study
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import bwrap, uids
from workers.sandbox.base import SandboxUnavailable

_REASON = bwrap.unavailable_reason()
if _REASON and os.environ.get("BBO_REQUIRE_BWRAP") == "1":
    raise RuntimeError(f"BBO_REQUIRE_BWRAP=1 but the bwrap backend is unavailable: {_REASON}")
needs_bwrap = pytest.mark.skipif(_REASON is not None, reason=f"bwrap backend unavailable: {_REASON}")
pytestmark = [pytest.mark.usefixtures("state_dir"), pytest.mark.system]


def marked_copy(tmp_path: Path, name: str, marker: str) -> Path:
    target = tmp_path / f"{name}-{marker}"
    shutil.copytree(SUBMISSIONS / name, target)
    (target / "marker.txt").write_text(marker)
    return target


# Random search that, like many real optimizers, starts a thread and a child process in every suggest.
WORKING_OPTIMIZER = """\
import subprocess, sys, threading

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class UsesProcesses(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        worker = threading.Thread(target=lambda: None)
        worker.start()
        worker.join()
        out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
        assert out.stdout.strip() == "42"
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(UsesProcesses)
"""


def working_optimizer(tmp_path: Path) -> Path:
    target = tmp_path / "uses_processes"
    target.mkdir()
    (target / "optimizer.py").write_text(WORKING_OPTIMIZER)
    return target


def processes_named(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,stat=,comm=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and line.split()[1][:1] != "Z"]


@needs_bwrap
def test_a_fork_bomb_does_not_stop_another_teams_sandbox_rlimit_mode(small_spec, tmp_path):
    backend = bwrap.BwrapBackend(cgroups=False)  # no pids group: RLIMIT_NPROC is the only process limit
    limits = dataclasses.replace(small_spec.limits, pids=32)
    spec = dataclasses.replace(small_spec, limits=limits)
    marker = f"bbo{uuid.uuid4().hex[:12]}"
    bomb_lines: list[str] = []
    bomb = OptimizerProcess(
        backend.launch(marked_copy(tmp_path, "marked_fork_bomb", marker), limits), log=bomb_lines.append
    ).start()
    try:
        assert bomb.wait_hello(30).ok, bomb_lines[-10:]
        api_config = BayesmarkObjective("DT-iris-acc", 0, spec.batch).get_api_config()
        assert bomb.call({"op": protocol.OP_INIT, "api_config": api_config, "seed": 1}, 30).ok
        assert bomb.call({"op": protocol.OP_SUGGEST, "n": 1}, 30).ok  # the bomb is forking now
        deadline = time.monotonic() + 20
        while len(processes_named(marker)) < limits.pids - 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(processes_named(marker)) >= limits.pids - 4  # team A sits at its process limit

        # Team B runs two studies while A's bomb keeps forking; like a job, it starts the second study's
        # sandbox before it runs the first, and its optimizer starts a thread and a process per suggest.
        team_b = working_optimizer(tmp_path)
        logs: list[list[str]] = [[], []]
        running = [OptimizerProcess(backend.launch(team_b, limits), log=log.append).start() for log in logs]
        for study, proc in enumerate(running):
            log = logs[study].append
            try:
                result = run_one_study(proc, "DT-iris-acc", study, spec, backend.describe(), log)
            except FatalOptimizerError as fatal:
                raise AssertionError(f"team B's study {study}: {fatal} {logs[study][-5:]}") from None
            assert result.state == StudyState.COMPLETE and len(result.losses) == spec.rounds
            assert result.suggest_fallbacks == 0, logs[study][-10:]  # its threads and processes started
        assert len(processes_named(marker)) >= limits.pids - 4  # A was at its limit all along
    finally:
        bomb.kill()
    deadline = time.monotonic() + 10
    while processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_named(marker) == []


@needs_bwrap
def test_a_worker_that_cannot_separate_sandboxes_refuses_bwrap_unless_opted_in(
    small_spec, tmp_path, monkeypatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(uids.SLOT_DIR_ENV, str(blocker / "slots"))  # no uid slots can be made here
    monkeypatch.delenv(bwrap.SHARED_LIMITS_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match=bwrap.SHARED_LIMITS_ENV) as refused:
        bwrap.BwrapBackend(cgroups=False)
    assert "not usable" in str(refused.value)  # the reason is named
    if bwrap.cgroups_usable():  # a pids group per sandbox separates them: accepted
        assert bwrap.BwrapBackend(cgroups=True).describe()["uids"] == "shared"

    monkeypatch.setenv(bwrap.SHARED_LIMITS_ENV, "1")
    shared = bwrap.BwrapBackend(cgroups=False)
    assert shared.describe()["uids"] == "shared" and shared.describe()["limits"] == "rlimit"
    result, lines = run_launched(
        shared, shared.launch(SUBMISSIONS / "random_search", small_spec.limits), small_spec, "DT-iris-acc", 0
    )
    assert not isinstance(result, BaseException), (result, lines[-10:])
    assert result.state == StudyState.COMPLETE


# -- docker: the engine's cgroups are per container, but some kernel limits are per uid ---------------

# Holds every inotify instance its uid may have (fs.inotify.max_user_instances) from its first suggest on.
INOTIFY_HOG = """\
import ctypes, sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

LIBC = ctypes.CDLL(None, use_errno=True)
HELD = []


class Hog(AbstractOptimizer):
    primary_import = None

    def suggest(self, n_suggestions=1):
        while not HELD or HELD[-1] >= 0:
            HELD.append(LIBC.inotify_init1(0))
        print(f"HELD {len(HELD) - 1}", file=sys.stderr, flush=True)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Hog)
"""

# Random search that needs one inotify instance per suggest.
INOTIFY_USER = """\
import ctypes, os

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

LIBC = ctypes.CDLL(None, use_errno=True)


class Watcher(AbstractOptimizer):
    primary_import = None

    def suggest(self, n_suggestions=1):
        fd = LIBC.inotify_init1(0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        os.close(fd)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Watcher)
"""


def _docker_reason() -> str | None:
    from workers.sandbox import docker as docker_backend

    return None if docker_backend.available() else "no engine answers or the sandbox image is not built"


_DOCKER_REASON = _docker_reason()
if _DOCKER_REASON and os.environ.get("BBO_REQUIRE_DOCKER") == "1":
    raise RuntimeError(f"BBO_REQUIRE_DOCKER=1 but {_DOCKER_REASON}")


@pytest.mark.skipif(_DOCKER_REASON is not None, reason=f"docker backend unavailable: {_DOCKER_REASON}")
def test_docker_containers_do_not_share_per_uid_kernel_limits(small_spec, tmp_path):
    from workers.sandbox.docker import DockerBackend

    backend = DockerBackend()
    hog_dir, user_dir = tmp_path / "hog", tmp_path / "user"
    for folder, source in ((hog_dir, INOTIFY_HOG), (user_dir, INOTIFY_USER)):
        folder.mkdir()
        (folder / "optimizer.py").write_text(source)
    hog_lines: list[str] = []
    hog = OptimizerProcess(backend.launch(hog_dir, small_spec.limits), log=hog_lines.append).start()
    try:
        assert hog.wait_hello(30).ok, hog_lines[-5:]
        api_config = BayesmarkObjective("DT-iris-acc", 0, small_spec.batch).get_api_config()
        assert hog.call({"op": protocol.OP_INIT, "api_config": api_config, "seed": 1}, 30).ok
        assert hog.call({"op": protocol.OP_SUGGEST, "n": 1}, 30).ok
        deadline = time.monotonic() + 10  # its stderr arrives on the log reader's own time
        while not [line for line in hog_lines if line.startswith("HELD ")] and time.monotonic() < deadline:
            time.sleep(0.05)
        held = [int(line.split()[1]) for line in hog_lines if line.startswith("HELD ")]
        with open("/proc/sys/fs/inotify/max_user_instances") as handle:
            assert held and held[0] >= int(handle.read()) - 1, (held, hog_lines[-5:])  # all of its uid's

        result, lines = run_launched(
            backend, backend.launch(user_dir, small_spec.limits), small_spec, "DT-iris-acc", 0
        )
        assert not isinstance(result, BaseException), (result, lines[-10:])
        assert result.state == StudyState.COMPLETE and result.suggest_fallbacks == 0, lines[-10:]
    finally:
        hog.kill()


@pytest.mark.skipif(uids.unusable_reason() is not None, reason=f"no uid slots here: {uids.unusable_reason()}")
def test_a_dead_workers_uid_slots_are_free_again():
    import fcntl
    import signal
    import sys

    worker = "from workers.sandbox import uids; s = uids.acquire(); print(s.uid, flush=True); input()"
    held = subprocess.Popen(
        [sys.executable, "-c", worker],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        uid = int(held.stdout.readline())
        lock = uids.slot_dir() / f"{uid}.lock"
        with open(lock, "a") as handle:
            with pytest.raises(BlockingIOError):  # held by the live worker
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.send_signal(signal.SIGKILL)
            held.wait(10)
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # gone with it: free, no sweep needed
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        held.kill()
        held.wait(10)
    slots = [uids.acquire() for _ in range(8)]
    assert len({slot.uid for slot in slots}) == 8 and all(uids.in_range(slot.uid) for slot in slots)
    for slot in slots:
        slot.release()
