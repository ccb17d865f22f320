"""The bwrap backend with real bubblewrap (no mocks): isolation and limits against hostile optimizers.

Skipped when `workers.sandbox.bwrap.available()` is False (no bwrap or setpriv, not root, or a trial
sandbox does not run); with BBO_REQUIRE_BWRAP=1 (CI) that is a failure instead. Hostile optimizers run
under both limit modes: `cgroup` (memory and pids groups, where the worker can make them) and `rlimit`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from queue_schema.states import FailureCause, StudyState
from tests.conftest import SUBMISSIONS
from tests.sandbox_helpers import run_launched
from workers.harness import FatalOptimizerError, run_one_study
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import bwrap, uids
from workers.sandbox.base import CPU_SLACK_S

_REASON = bwrap.unavailable_reason()
if _REASON and os.environ.get("BBO_REQUIRE_BWRAP") == "1":
    raise RuntimeError(f"BBO_REQUIRE_BWRAP=1 but the bwrap backend is unavailable: {_REASON}")
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=f"bwrap backend unavailable: {_REASON}"),
    pytest.mark.usefixtures("state_dir"),
    pytest.mark.system,
]

STUDY_ENV_KEYS = set(bwrap.STUDY_ENV) | {"PWD", "LC_CTYPE"}  # the last two: set by Python or the shell


@pytest.fixture(scope="module")
def backend(state_dir) -> bwrap.BwrapBackend:
    return bwrap.BwrapBackend()


@pytest.fixture(scope="module", params=["cgroup", "rlimit"])
def each_mode(request, state_dir) -> bwrap.BwrapBackend:
    if request.param == "cgroup" and not bwrap.cgroups_usable():
        pytest.skip("this worker cannot create cgroup v1 memory and pids groups")
    return bwrap.BwrapBackend(cgroups=request.param == "cgroup")


def run(backend, submission: Path, spec, problem: str = "DT-iris-acc", study: int = 0):
    """One study through the harness: (result or the FatalOptimizerError, organizer log lines)."""
    return run_launched(backend, backend.launch(submission, spec.limits), spec, problem, study)


def copy_with(tmp_path: Path, name: str, **files: str) -> Path:
    target = tmp_path / name
    shutil.copytree(SUBMISSIONS / name, target)
    for filename, text in files.items():
        (target / filename).write_text(text)
    return target


def tagged(lines: list[str], tag: str) -> list[str]:
    return [line[len(tag) + 1 :] for line in lines if line.startswith(tag + " ")]


def survivors(marker: str) -> list[str]:
    """Processes anywhere on the machine whose name or argv carries the marker (zombies excluded)."""
    out = subprocess.run(["ps", "-eo", "pid=,stat=,comm=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and line.split()[1][:1] != "Z"]


def assert_no_survivors(marker: str, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert survivors(marker) == []


def assert_nothing_left(state_dir: Path) -> None:
    assert not list((state_dir / "scratch").glob("bwrap-*"))
    # Only this process's groups: other workers on the machine (CI runs beside a live system) have theirs.
    mine = f"{bwrap.CGROUP_PREFIX}{os.getpid()}-"
    for controller in ("memory", "pids", "cpu"):
        base = bwrap._cgroup_v1_base(controller)
        if base is not None:
            assert not [p.name for p in base.glob(f"{mine}*")], controller


# -- well-behaved -----------------------------------------------------------------------------------


def test_available_and_describe(backend):
    assert bwrap.available()
    described = backend.describe()
    assert described["backend"] == "bwrap" and described["bwrap"][0].isdigit()
    assert described["limits"] in ("cgroup", "rlimit")


@pytest.mark.usefixtures("unsafe_ok")
def test_random_search_same_losses_as_process_backend(backend, small_spec, state_dir):
    from workers.sandbox import select

    process = select("process")
    for study in (0, 1):
        result, lines = run(backend, SUBMISSIONS / "random_search", small_spec, study=study)
        assert not isinstance(result, BaseException), (result, lines[-10:])
        assert result.state == StudyState.COMPLETE and result.backend == "bwrap"
        proc = OptimizerProcess(process.launch(SUBMISSIONS / "random_search", small_spec.limits)).start()
        plain = run_one_study(proc, "DT-iris-acc", study, small_spec, process.describe(), lambda _: None)
        assert result.losses == plain.losses
        assert result.suggestions == plain.suggestions
    assert_nothing_left(state_dir)


def test_starter_kit_zip_given_directly(backend, small_spec, tmp_path):
    from artifacts import archive

    upload = tmp_path / "upload.zip"
    upload.write_bytes(archive.pack(SUBMISSIONS / "bundled_module", small_spec.submission))
    result, lines = run(backend, upload, small_spec)
    assert not isinstance(result, BaseException), (result, lines[-10:])
    assert result.state == StudyState.COMPLETE


# -- what the sandbox can see and do ----------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_run(backend, state_dir, tmp_path_factory):
    """The probe optimizer once, with a TCP service on the host's loopback, a unix socket in the state
    folder (where the embedded Redis puts its socket), an abstract unix socket, and host files to find."""
    from runtime.spec import load

    spec = load("demo")
    limits = dataclasses.replace(spec.limits, suggest_budget_s=30.0, call_timeout_s=10.0)
    spec = dataclasses.replace(spec, rounds=3, batch=3, limits=limits)
    tmp_path = tmp_path_factory.mktemp("probe")

    tcp = socket.create_server(("127.0.0.1", 0))
    unix_path = state_dir / f"probe-{uuid.uuid4().hex[:6]}.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    unix.listen()
    abstract_name = f"bbo-probe-{uuid.uuid4().hex[:8]}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    accepted: list[str] = []

    def serve(server: socket.socket, label: str) -> None:
        server.settimeout(30)
        try:
            while True:
                conn, _ = server.accept()
                accepted.append(label)
                conn.close()
        except OSError:
            return

    for server, label in ((tcp, "tcp"), (unix, "unix"), (abstract, "abstract")):
        threading.Thread(target=serve, args=(server, label), daemon=True).start()
    socket.create_connection(("127.0.0.1", tcp.getsockname()[1]), timeout=2).close()  # the host reaches it
    time.sleep(0.1)
    accepted.clear()

    secret = state_dir / "secret.txt"
    secret.write_text("state-folder-secret")
    other_study = state_dir / "scratch" / "bwrap-other-study"
    other_study.mkdir(parents=True, exist_ok=True)
    (other_study / "left.txt").write_text("another study's file")
    project = Path(__file__).resolve().parents[2]
    config = {
        "port": tcp.getsockname()[1],
        "unix": [str(unix_path), "@" + abstract_name],
        "read": [
            str(secret), str(state_dir), str(other_study / "left.txt"), str(project / "pyproject.toml"),
            str(project), "/root", "/home", "/etc/shadow", "/etc/hostname", "/run", "/var", "/sys",
            "/proc/1/root/etc/shadow", str(Path.home()),
        ],
    }  # fmt: skip
    submission = copy_with(tmp_path, "sandbox_probe", **{"probe.json": json.dumps(config)})
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv("BBO_CANARY_SECRET", "canary-77f3")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws")
            result, lines = run(backend, submission, spec)
    finally:
        for server in (tcp, unix, abstract):
            server.close()
        shutil.rmtree(other_study, ignore_errors=True)
    found = tagged(lines, "PROBE")
    assert found, "\n".join(lines[-20:])
    return result, json.loads(found[0]), accepted, lines


def test_no_network(probe_run):
    result, probe, accepted, lines = probe_run
    assert not isinstance(result, BaseException), (result, lines[-10:])
    assert result.state == StudyState.COMPLETE
    assert result.suggest_fallbacks == 0  # no suggest reached the service
    assert probe["import_loopback"].startswith("ConnectionRefusedError"), probe["import_loopback"]
    assert probe["loopback"].startswith("ConnectionRefusedError"), probe["loopback"]
    assert tagged(lines, "SUGGEST-LOOPBACK") and all(
        r.startswith("ConnectionRefusedError") for r in tagged(lines, "SUGGEST-LOOPBACK")
    )
    assert probe["public_ip"].startswith("OSError"), probe["public_ip"]  # network is unreachable
    assert "gaierror" in probe["dns"] or "Error" in probe["dns"], probe["dns"]
    assert probe["interfaces"] == ["lo"]
    unix, abstract = probe["unix"].values()
    assert unix.startswith("FileNotFoundError"), unix  # the state folder is not there at all
    assert abstract.startswith("ConnectionRefusedError"), abstract  # abstract sockets are per network ns
    assert accepted == []


def test_no_host_files(probe_run, backend):
    _, probe, _, _ = probe_run
    # Folders on the way to the bound Python runtime exist (empty but for that way); nothing else does.
    on_the_way: dict[str, set[str]] = {}
    for bound in backend.runtime.binds:
        parts = Path(bound).parts
        for i in range(1, len(parts)):
            on_the_way.setdefault(str(Path(*parts[:i])), set()).add(parts[i])
    for path, outcome in probe["reads"].items():
        if outcome.startswith("listed "):
            assert path in on_the_way, (path, outcome)
            assert set(ast.literal_eval(outcome[len("listed ") :])) <= on_the_way[path], (path, outcome)
        else:
            assert "Error" in outcome, (path, outcome)
        assert "state-folder-secret" not in outcome and "another study" not in outcome
    system = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "dev", "proc", "tmp", "etc"}
    assert set(probe["root"]) <= system | {"host", "submission"} | on_the_way["/"], probe["root"]
    # The only processes are the sandbox's: bwrap's reaper as pid 1 and the host; pid 1's environment
    # belongs to root and stays unreadable.
    assert probe["pids"][:2] == [1, 2] and len(probe["pids"]) <= 3, probe["pids"]
    assert "bwrap" in probe["pid1"]
    assert "Error" in probe["pid1_environ"]
    assert probe["hostname"] == "sandbox"
    # Its parent is bwrap's reaper, root-owned: the optimizer cannot kill it (nor see the worker).
    assert probe["ppid"] == 1 and probe["kill_parent"].startswith("PermissionError"), probe["kill_parent"]


def test_read_only_except_tmp(probe_run):
    _, probe, _, _ = probe_run
    writes = probe["writes"]
    for path, outcome in writes.items():
        if path.startswith(("/tmp/", "/dev/shm/")):
            assert outcome == "written", (path, outcome)
        else:
            assert outcome.startswith(("OSError: [Errno 30]", "PermissionError")), (path, outcome)
    assert any(p.startswith("/submission/") for p in writes)


def test_unprivileged_and_no_host_environment(probe_run):
    _, probe, _, _ = probe_run
    # A uid and gid of the sandbox's own (not root, not shared with any other sandbox of the machine).
    assert probe["uid"] == probe["euid"] == probe["gid"] and probe["groups"] == []
    assert uids.in_range(probe["uid"]), probe["uid"]
    assert all(int(value, 16) == 0 for value in probe["caps"].values()), probe["caps"]
    assert probe["no_new_privs"] == "1"
    env = probe["env"]
    assert "canary" not in json.dumps(env)
    assert not [k for k in env if k.startswith("BBO_")]
    assert set(env) <= STUDY_ENV_KEYS, set(env) - STUDY_ENV_KEYS
    assert env["HOME"] == env["TMPDIR"] == "/tmp" and env["OPENBLAS_NUM_THREADS"] == "1"


def test_seccomp_refuses_namespaces_and_keyrings_but_not_threads_or_processes(probe_run):
    _, probe, _, _ = probe_run
    assert probe["unshare_user"] == probe["unshare_net"] == "EPERM"
    assert probe["keyctl"] == probe["bpf"] == probe["io_uring"] == "EPERM"
    assert probe["works"] == {"thread": "ok", "subprocess": "42", "pool": 6}


def test_rlimits_inside(probe_run, backend):
    from runtime.spec import load

    limits = load("demo").limits
    inside = probe_run[1]["limits"]
    mb = 1024 * 1024
    assert inside["Max file size"] == [str(limits.file_size_mb * mb)] * 2
    assert inside["Max core file size"] == ["0", "0"]
    assert inside["Max open files"] == [str(bwrap.NOFILE)] * 2
    cpu = 30 + 10 + CPU_SLACK_S  # the probe's budget and call timeout, one cpu
    assert inside["Max cpu time"] == [str(cpu), str(cpu + 5)]
    assert backend.per_sandbox_uids  # so RLIMIT_NPROC counts this sandbox's processes only
    assert inside["Max processes"] == [str(limits.pids)] * 2
    if backend.mode == "rlimit":
        assert inside["Max data size"] == [str(limits.memory_mb * mb)] * 2


def test_nothing_survives_from_one_study_to_the_next(backend, small_spec, state_dir):
    for study in (0, 1):
        result, lines = run(backend, SUBMISSIONS / "tmp_marker", small_spec, study=study)
        assert not isinstance(result, BaseException), (result, lines[-10:])  # study 1 found no marker
        assert result.state == StudyState.COMPLETE
        marks = dict(line.split(" ", 1) for line in tagged(lines, "MARKER"))
        assert marks["/tmp"] == marks["/dev/shm"] == "written"
        assert marks["/submission"].startswith("OSError") and marks["/"].startswith("OSError"), marks
    assert_nothing_left(state_dir)


# -- hostile optimizers, under both limit modes ----------------------------------------------------


def test_memory_hog_is_a_resource_limit(each_mode, small_spec, tmp_path, state_dir):
    limits = dataclasses.replace(small_spec.limits, memory_mb=256)
    spec = dataclasses.replace(small_spec, limits=limits)
    submission = copy_with(tmp_path, "sized_memory_hog", **{"hog_mb.txt": str(4 * limits.memory_mb)})
    started = time.monotonic()
    fatal, lines = run(each_mode, submission, spec)
    assert isinstance(fatal, FatalOptimizerError), (fatal, lines[-10:])
    assert fatal.cause == FailureCause.RESOURCE_LIMIT
    joined = "\n".join(lines)
    assert "hogging 1024 MB" in joined and "HOG SURVIVED" not in joined
    assert "backend's cause resource_limit" in joined  # the backend knows, not the harness's guess
    assert time.monotonic() - started < 30
    assert_nothing_left(state_dir)


def test_fork_bomb_is_contained(each_mode, small_spec, tmp_path, state_dir):
    marker = f"bbo{uuid.uuid4().hex[:12]}"
    limits = dataclasses.replace(small_spec.limits, pids=32)
    spec = dataclasses.replace(small_spec, limits=limits)
    submission = copy_with(tmp_path, "marked_fork_bomb", **{"marker.txt": marker})
    started = time.monotonic()
    result, lines = run(each_mode, submission, spec)
    assert time.monotonic() - started < 45
    if isinstance(result, FatalOptimizerError):
        assert result.cause in (FailureCause.RESOURCE_LIMIT, FailureCause.OPTIMIZER_CRASHED), result
    else:
        assert result.state in (StudyState.COMPLETE, StudyState.CUT_OFF)
    counts = [int(n) for n in tagged(lines, "PIDS")]
    # The bomb ran up to the limit and no further: the pids group (all of the sandbox, bwrap included)
    # or RLIMIT_NPROC for the sandbox's uid (which does not count bwrap's root-owned reaper, pid 1).
    assert counts and 16 <= max(counts) <= limits.pids + 1, counts
    assert_no_survivors(marker)
    assert_nothing_left(state_dir)
    # The worker is fine: it can still start processes.
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0


def test_signal_ignoring_sleeper_and_its_detached_child_are_killed(
    each_mode, small_spec, tmp_path, state_dir
):
    marker = f"bbo{uuid.uuid4().hex[:12]}"
    limits = dataclasses.replace(small_spec.limits, call_timeout_s=2.0, suggest_budget_s=30.0)
    spec = dataclasses.replace(small_spec, rounds=4, limits=limits)
    submission = copy_with(tmp_path, "detached_sleeper", **{"marker.txt": marker})
    started = time.monotonic()
    result, lines = run(each_mode, submission, spec)
    assert time.monotonic() - started < 20
    assert not isinstance(result, BaseException), (result, lines[-10:])
    assert result.state == StudyState.CUT_OFF
    assert "call timeout" in result.cut_off_reason
    assert len(result.losses) == 2
    assert tagged(lines, "SLEEPER")  # the detached child was started
    assert_no_survivors(marker)
    assert_nothing_left(state_dir)


def test_file_size_and_tmpfs_limits(backend, small_spec, tmp_path):
    limits = dataclasses.replace(small_spec.limits, file_size_mb=8, tmpfs_mb=32)
    spec = dataclasses.replace(small_spec, limits=limits)
    result, lines = run(backend, SUBMISSIONS / "disk_filler", spec)
    assert not isinstance(result, BaseException), (result, lines[-10:])
    assert result.state == StudyState.COMPLETE
    (found,) = tagged(lines, "DISK")
    disk = json.loads(found)
    assert disk["big_errno"] == 27 and disk["big_bytes"] == 8 << 20, disk  # EFBIG at the file size limit
    assert disk["fill_errno"] == 28 and disk["fill_bytes"] <= 32 << 20, disk  # ENOSPC at the tmpfs size


def test_sweep_removes_groups_of_dead_workers(state_dir):
    if not bwrap.cgroups_usable():
        pytest.skip("this worker cannot create cgroup v1 groups")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = bwrap._Cgroups.create(None, f"{bwrap.CGROUP_PREFIX}{dead.pid}-stale")
    mine = bwrap._Cgroups.create(None, f"{bwrap.CGROUP_PREFIX}{os.getpid()}-live")
    try:
        assert bwrap.sweep_cgroups() >= 2  # memory and pids (and cpu) of the dead worker
        assert all(not path.exists() for path in stale.dirs.values())
        assert all(path.exists() for path in mine.dirs.values())
    finally:
        stale.remove(timeout=0)
        mine.remove(timeout=0)
