"""The `docker` backend: every study's optimizer in a fresh, locked-down container, removed afterwards.

Per study (launch): a container of the content-tagged sandbox image (sandbox_image/build.py) with no
network, a read-only root, a size-limited tmpfs at /tmp (HOME and TMPDIR), memory = memory+swap limit, a
pids limit, a cpu quota, every capability dropped, no-new-privileges, an unprivileged uid and gid of its
own, a fixed environment (nothing of the worker's), ulimits on open files, file size and core dumps, and no
logging driver (the engine keeps nothing of what the optimizer prints). The only host paths it sees are
the artifact's staged submission at /submission, its installed bundled packages at /install, both
read-only, and its per-launch folder (the start marker below, and the /etc/passwd and /etc/group that name
its uid `sandbox`), read-only.

Its own uid: the engine's cgroups give each container its memory, pids and cpu, but the kernel counts some
limits per uid across containers (they share the host's user namespace): inotify instances, pipe pages,
POSIX message queue bytes, RLIMIT_NPROC. Measured with every container as uid 10001: one holding the 128
inotify instances of fs.inotify.max_user_instances left another's inotify_init1 failing (EMFILE). So each
container, and each install, runs as a uid of its own from workers/sandbox/uids.py (released in cleanup),
where the slot folder is usable; else as SANDBOX_UID (10001, the image's own user), with the cgroups still
per container. Everything the sandbox reads is world-readable (the image's /opt/venv is, and the staged
submission and the install folder are made so).

The container is created through the SDK and started by the docker CLI (`docker start --attach
--interactive`), which the harness runs as its child: the CLI's stdin/stdout/stderr are then the
container's, so OptimizerProcess's pipes, reader threads, output caps and deadlines work unchanged, and
closing stdin reaches the optimizer as end of file. Killing goes through the engine (SIGKILL to the
container, which a signal-ignoring optimizer cannot refuse); cleanup removes the container.

A sandbox that fails to start is ours. The container's process is started by the engine, not by the CLI,
so no private descriptor can be passed through `docker start --attach` (it carries stdin, stdout and
stderr only, which are the protocol and the organizer log, both the team's to write). The marker travels
through a FIFO instead: the worker makes it in a per-launch folder (mode 0622: the sandbox's uid may open
it for writing, never for reading), holds its read end, and binds the folder read-only at STARTED_MOUNT.
The image's interpreter runs a bootstrap (`-s -P -c`, the image's own entrypoint script and folder taken
from its configuration) that imports the host, writes the marker, and only then puts the bundled packages
on the path (and in PYTHONPATH for the optimizer's subprocesses; never in the container's environment,
where a bundled sitecustomize.py would run before the marker) and runs the host, which loads the
submission. Team code can add bytes to the FIFO but cannot remove the marker or read it. `exit_cause` is
`infrastructure` when the container never started (the CLI could not reach the engine), when the engine or
the container went away, or when the process ended without the marker (the interpreter could not start,
or was killed before the submission loaded); `resource_limit` when docker saw the OOM killer; else the
team's own exit.

Per artifact (prepare), keyed by the sha256 of the submission folder's content and cached under <state
dir>/sandbox/artifacts/docker-<image id>/<sha256>/: a staged copy of the submission (regular files only,
no symlinks, world-readable) and, when the submission bundles packages (requirements.txt, optional
install_order.txt, as the 2020 starter kit's prepare_upload.sh made them), their installation, done once
in a network-less container of the same image by workers/sandbox/install.py's script and rules (only
wheels, `pip --only-binary :all: --no-index --isolated`, nothing built, no setup.py): read-only root,
the submission read-only, pip writing into a tmpfs of install.INSTALL_MAX_MB at /install (charged to the
container's memory limit), per-file ulimit install.INSTALL_FILE_SIZE_MB, the result copied out to the
artifact's install folder bound read-write at /install-out for that container only, then sealed (total
checked, root-owned, read-only). Requirements the image already satisfies are not reinstalled; a bundled
version of a preinstalled package shadows it (/install comes first on the path).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from queue_schema.settings import state_dir
from queue_schema.states import FailureCause
from runtime.processes import process_alive
from runtime.spec import Limits
from sandbox_image.build import image_tag
from sandbox_image.labels import ARTIFACT_LABEL, ROLE_LABEL, STUDY_LABEL, WORKER_LABEL
from workers.optimizer_process import LaunchSpec
from workers.sandbox import install, uids
from workers.sandbox import warm as warm_fill
from workers.sandbox.base import (
    THREAD_ENV,
    InstallFailed,
    SandboxUnavailable,
    cpu_backstop_s,
    sandbox_uid_slot,
)
from workers.sandbox.install import Prepared, content_sha256  # noqa: F401 - part of this module's API

SANDBOX_UID = 10001
SUBMISSION_MOUNT = install.SUBMISSION_MOUNT
INSTALL_MOUNT = install.INSTALL_MOUNT
IMAGE_PYTHON_VERSION = "3.11"  # the Dockerfile asserts it
INSTALL_SITE = install.install_site(IMAGE_PYTHON_VERSION)
STARTED_MOUNT = "/run/bbo-start"
STARTED_FIFO = "started"
STARTED_MARKER = b"bbo-sandbox-started\n"
NOFILE = 1024

# The whole environment of a study container besides the image's own (PATH, LANG, PYTHONDONTWRITEBYTECODE,
# PYTHONUNBUFFERED, PIP_*, GIT_PYTHON_REFRESH): nothing comes from the worker.
STUDY_ENV = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONHASHSEED": "0",
    **THREAD_ENV,
}
# What the docker CLI (a process on the worker, not in the container) may inherit to reach the engine.
_CLI_ENV = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH", "DOCKER_API_VERSION")  # fmt: skip


def _docker():
    import docker  # the docker SDK, on first use only: it takes a while to import

    return docker


def _engine(timeout: float = 60.0):
    docker = _docker()
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(
            f"no Docker engine answers ({_first_line(exc)}); start one with scripts/start-dockerd"
        ) from None
    return client


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def available() -> bool:
    """An engine answers and the image this source tree describes has been built."""
    try:
        client = _engine(timeout=5.0)
        client.images.get(image_tag())
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False
    return True


def bootstrap(host_dir: str, site: str | None, warm: bool = False) -> str:
    """The study container's program (`python -s -P -c BOOTSTRAP [--warm] /submission`): import the host
    and run it; just before it loads the submission (a warm host: after its load line) it calls
    `_started`, which writes the start marker and only then puts the bundled packages on the path (for a
    warm host, if its /install was filled)."""
    fifo = f"{STARTED_MOUNT}/{STARTED_FIFO}"
    body = [
        f"_fd = os.open({fifo!r}, os.O_WRONLY | os.O_NONBLOCK)",
        f"os.write(_fd, {STARTED_MARKER!r})",
        "os.close(_fd)",
    ]
    if site is not None:
        add = [f"sys.path.insert(1, {site!r})", f"os.environ['PYTHONPATH'] = {site!r}"]
        body += [f"if os.path.isdir({site!r}):", *(f"    {line}" for line in add)] if warm else add
    lines = ["import os, sys", f"sys.path.insert(0, {host_dir!r})", "import host", "def _started():"]
    lines += [f"    {line}" for line in body]
    lines.append("host.main(_started)")
    return "\n".join(lines) + "\n"


class DockerBackend:
    name = "docker"

    def __init__(self, image: str | None = None) -> None:
        self.client = _engine()
        self.tag = image or image_tag()
        try:
            self.image = self.client.images.get(self.tag)
        except _docker().errors.ImageNotFound:
            raise SandboxUnavailable(
                f"sandbox image {self.tag} is missing: build it with `bbo admin sandbox build`"
            ) from None
        except _docker().errors.DockerException as exc:
            raise SandboxUnavailable(f"cannot inspect {self.tag}: {_first_line(exc)}") from None
        cli = shutil.which("docker")
        if cli is None:
            raise SandboxUnavailable(
                "the docker command-line client is not installed (apt-get install docker.io)"
            )
        self.cli = cli
        # The image's entrypoint is `PYTHON -s HOST_DIR/host.py`: the interpreter and the host's folder.
        entrypoint = (self.image.attrs.get("Config") or {}).get("Entrypoint") or []
        if len(entrypoint) < 2 or not str(entrypoint[-1]).endswith("host.py"):
            raise SandboxUnavailable(f"sandbox image {self.tag} has an unexpected entrypoint {entrypoint!r}")
        self.python = str(entrypoint[0])
        self.host_dir = os.path.dirname(str(entrypoint[-1]))
        venv = os.path.dirname(os.path.dirname(self.python))
        self.environment_site = f"{venv}/lib/python{IMAGE_PYTHON_VERSION}/site-packages"
        self.per_sandbox_uids = uids.unusable_reason(switched_by_worker=False) is None
        self.prepared: dict[str, Prepared] = {}

    def _slot(self) -> uids.Slot | None:
        """A uid of the container's own, or None where every container runs as SANDBOX_UID."""
        return sandbox_uid_slot(self.name, self.per_sandbox_uids)

    # -- provenance -------------------------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "image": self.tag, "image_digest": self.image.id}

    # -- per artifact -----------------------------------------------------------------------------
    def prepare(self, submission_dir: Path, limits: Limits) -> Prepared:
        """Stage the submission and install its bundled packages, once per content hash (cached)."""

        def installer(staged: Path, target: Path, sha: str) -> None:
            self._install(staged, target, sha, limits)

        environment = f"docker-{self.image.id.split(':')[-1][:16]}"
        prepared = install.prepare_cached(Path(submission_dir), environment, installer)
        self.prepared[str(Path(submission_dir).resolve())] = prepared
        return prepared

    def _install(self, staged: Path, target: Path, sha: str, limits: Limits) -> None:
        docker = _docker()
        script = install.install_script(staged, self.python)
        slot = self._slot()
        uid = slot.uid if slot is not None else SANDBOX_UID
        if os.geteuid() == 0:
            os.chown(target, uid, uid)
            os.chmod(target, 0o700)
        else:
            os.chmod(target, 0o777)  # noqa: S103 - the container's uid must write here; sealed afterwards
        memory = max(limits.memory_mb, install.INSTALL_MIN_MEMORY_MB)
        charged = memory + install.INSTALL_MAX_MB + install.INSTALL_TMP_MB  # tmpfs pages count as memory
        file_size = install.INSTALL_FILE_SIZE_MB * 1024 * 1024
        container = None
        try:
            container = self.client.containers.create(
                self.image.id,
                entrypoint=["/bin/sh", "-c"],
                command=[script],
                user=f"{uid}:{uid}",
                environment={
                    **STUDY_ENV,
                    "PYTHONPATH": install.install_pythonpath(IMAGE_PYTHON_VERSION, self.environment_site),
                },
                working_dir="/tmp",
                network_mode="none",
                read_only=True,
                tmpfs={
                    "/tmp": f"rw,nosuid,nodev,mode=1777,size={install.INSTALL_TMP_MB}m",
                    # The engine copies the image's /install (root's, 0755) over a mode option: an owner.
                    INSTALL_MOUNT: f"rw,nosuid,nodev,uid={uid},gid={uid},mode=0700,"
                    f"size={install.INSTALL_MAX_MB}m",
                },
                mem_limit=f"{charged}m",
                memswap_limit=f"{charged}m",
                pids_limit=max(limits.pids, install.INSTALL_MIN_PIDS),
                nano_cpus=int(limits.cpus * 1e9),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ulimits=_ulimits(file_size, NOFILE),
                volumes={
                    str(staged): {"bind": SUBMISSION_MOUNT, "mode": "ro"},
                    str(target): {"bind": install.INSTALL_OUT, "mode": "rw"},
                },
                labels={ROLE_LABEL: "install", ARTIFACT_LABEL: sha[:12], WORKER_LABEL: _worker_id()},
                log_config=docker.types.LogConfig(
                    type="json-file", config={"max-size": "1m", "max-file": "1"}
                ),
            )
            container.start()
            try:
                status = container.wait(timeout=install.INSTALL_TIMEOUT_S)
            except Exception as exc:  # requests' ReadTimeout/ConnectionError when the wait runs out
                if isinstance(exc, docker.errors.DockerException):
                    raise
                with contextlib.suppress(docker.errors.DockerException):
                    container.kill()
                raise install.timed_out() from None
            code = status.get("StatusCode")
            output = container.logs(stdout=True, stderr=True, tail=200).decode("utf-8", errors="replace")
            container.reload()
            if container.attrs["State"].get("OOMKilled"):
                raise install.out_of_memory(memory)
            if code != 0:
                raise InstallFailed(install.install_error(output, code))
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(
                f"the engine failed while installing bundled packages: {_first_line(exc)}"
            ) from None
        finally:
            if container is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
            if slot is not None:
                slot.release()

    # -- per study --------------------------------------------------------------------------------
    def launch(self, submission_dir: Path, limits: Limits, study: str | None = None) -> LaunchSpec:
        """A fresh container for one study; `study` (optional) labels it for sweeps and inspection."""
        prepared = self.prepared.get(str(Path(submission_dir).resolve()))
        if prepared is None:
            prepared = self.prepare(submission_dir, limits)
        install.touch(prepared)
        return self._launch(limits, prepared, study)

    def launch_warm(self, limits: Limits) -> LaunchSpec:
        """A container started before its submission is known (its host waits with the image's modules
        imported), with two empty per-launch folders bound read-only at /submission and /install that its
        `fill` links a prepared artifact into (workers/sandbox/warm.py). Labelled role `warm`, with the
        worker process that made it, for the sweeps."""
        return self._launch(limits, None, None)

    def _launch(self, limits: Limits, prepared: Prepared | None, study: str | None) -> LaunchSpec:
        docker = _docker()
        warm = prepared is None
        environment = dict(STUDY_ENV)
        volumes: dict[str, dict[str, str]] = {}
        site = None
        if prepared is not None:
            volumes[str(prepared.submission)] = {"bind": SUBMISSION_MOUNT, "mode": "ro"}
            if prepared.install is not None:
                volumes[str(prepared.install)] = {"bind": INSTALL_MOUNT, "mode": "ro"}
                site = INSTALL_SITE
        else:
            site = INSTALL_SITE  # used if `fill` links an install in
        slot = self._slot()
        uid = slot.uid if slot is not None else SANDBOX_UID
        # The per-launch folder: start/ (the marker's FIFO), the accounts, and a warm container's two
        # folders that `fill` links the submission into.
        work = Path(tempfile.mkdtemp(prefix="docker-start-", dir=_scratch()))
        marker_dir = work / "start"
        try:
            os.chmod(work, 0o755)
            marker_dir.mkdir()
            os.chmod(marker_dir, 0o755)
            fifo = marker_dir / STARTED_FIFO
            os.mkfifo(fifo, 0o622)
            os.chmod(fifo, 0o622)  # the sandbox's uid may write the marker, never read or drain it
            started_read = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            for name, text in _accounts(uid).items():
                (work / name).write_text(text)
                os.chmod(work / name, 0o644)
                volumes[str(work / name)] = {"bind": f"/etc/{name}", "mode": "ro"}
            if warm:
                for name, mount in (("submission", SUBMISSION_MOUNT), ("install", INSTALL_MOUNT)):
                    (work / name).mkdir()
                    os.chmod(work / name, 0o755)
                    volumes[str(work / name)] = {"bind": mount, "mode": "ro"}
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if slot is not None:
                slot.release()
            raise
        volumes[str(marker_dir)] = {"bind": STARTED_MOUNT, "mode": "ro"}
        file_size = limits.file_size_mb * 1024 * 1024
        labels = {ROLE_LABEL: "warm" if warm else "sandbox", WORKER_LABEL: _worker_id()}
        if prepared is not None:
            labels[ARTIFACT_LABEL] = prepared.sha256[:12]
        if study is not None:
            labels[STUDY_LABEL] = str(study)
        try:
            container = self.client.containers.create(
                self.image.id,
                entrypoint=[self.python, "-s", "-P", "-c", bootstrap(self.host_dir, site, warm=warm)],
                command=[*(["--warm"] if warm else []), SUBMISSION_MOUNT],
                name=f"bbo-sandbox-{uuid.uuid4().hex[:16]}",
                hostname="sandbox",
                stdin_open=True,
                user=f"{uid}:{uid}",
                environment=environment,
                working_dir="/tmp",
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777"},
                mem_limit=f"{limits.memory_mb}m",
                memswap_limit=f"{limits.memory_mb}m",
                pids_limit=limits.pids,
                nano_cpus=int(limits.cpus * 1e9),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ulimits=_ulimits(file_size, NOFILE, cpu_s=cpu_backstop_s(limits)),
                volumes=volumes,
                labels=labels,
                log_config=docker.types.LogConfig(type="none"),
            )
        except docker.errors.DockerException as exc:
            os.close(started_read)
            shutil.rmtree(work, ignore_errors=True)
            if slot is not None:
                slot.release()
            raise SandboxUnavailable(f"cannot create a sandbox container: {_first_line(exc)}") from None

        marker = {"fd": started_read, "seen": False}

        def started() -> bool:
            """Whether the bootstrap wrote the marker (what is in the FIFO stays there until read)."""
            if not marker["seen"] and marker["fd"] >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    marker["seen"] = STARTED_MARKER in os.read(marker["fd"], 65536)
            return bool(marker["seen"])

        def kill() -> None:
            if kill_on_host(container.id):
                return
            with contextlib.suppress(docker.errors.DockerException):
                container.kill()

        def cleanup() -> None:
            # The container was killed before this (OptimizerProcess.kill); its removal takes the engine
            # 50-80 ms, which the job's end would wait for. It runs on a thread of its own instead, and a
            # container whose horse exited first is removed by the worker's sweep (its owner is gone).
            threading.Thread(target=_remove, args=(container,), daemon=True).start()
            if marker["fd"] >= 0:
                with contextlib.suppress(OSError):
                    os.close(marker["fd"])
                marker["fd"] = -1
            shutil.rmtree(work, ignore_errors=True)
            if slot is not None:
                slot.release()

        def exit_cause(returncode: int | None) -> str | None:
            # resource_limit: docker saw the OOM killer. infrastructure: the engine or the container went
            # away, the container never started (the CLI could not reach the engine), or its process ended
            # before the submission loaded (no start marker): not the team's doing. None: the optimizer's
            # own exit.
            with contextlib.suppress(Exception):
                container.wait(timeout=5)
            try:
                container.reload()
            except docker.errors.DockerException:
                return FailureCause.INFRASTRUCTURE.value
            state = container.attrs.get("State") or {}
            if str(state.get("StartedAt", "")).startswith("0001-"):
                return FailureCause.INFRASTRUCTURE.value
            if not started():
                return FailureCause.INFRASTRUCTURE.value
            if state.get("OOMKilled"):
                return FailureCause.RESOURCE_LIMIT.value
            if returncode in (128 + signal.SIGXCPU, -signal.SIGXCPU):  # past the CPU backstop
                return FailureCause.RESOURCE_LIMIT.value
            return None

        def fill(submission: Path) -> bool:
            ready = self.prepared.get(str(submission.resolve())) or self.prepare(submission, limits)
            return warm_fill.fill_prepared(ready, IMAGE_PYTHON_VERSION, work / "submission", work / "install")

        env = {name: os.environ[name] for name in _CLI_ENV if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        return LaunchSpec(
            argv=[self.cli, "start", "--attach", "--interactive", container.id],
            env=env,
            cleanup=cleanup,
            kill=kill,
            exit_cause=exit_cause,
            started=started,
            cpu_seconds=lambda: container_cpu_seconds(container.id),
            fill=fill if warm else None,
        )


# -- containers ------------------------------------------------------------------------------------

# Where a container's CPU counter lives on this host, by cgroup version and driver (a remote engine: none).
_CPU_COUNTERS = (
    ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", 1e-9),
    ("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage", 1e-9),
    ("/sys/fs/cgroup/cpuacct/system.slice/docker-{id}.scope/cpuacct.usage", 1e-9),
    ("/sys/fs/cgroup/cpu,cpuacct/system.slice/docker-{id}.scope/cpuacct.usage", 1e-9),
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", 1e-6),
    ("/sys/fs/cgroup/docker/{id}/cpu.stat", 1e-6),
)


def container_cpu_seconds(container_id: str) -> float | None:
    """CPU seconds every process of the container used so far, from its cgroup on this host; None when
    the counter cannot be read here (the engine on another machine, an unknown layout)."""
    for pattern, unit in _CPU_COUNTERS:
        try:
            text = Path(pattern.format(id=container_id)).read_text()
        except OSError:
            continue
        if pattern.endswith("cpu.stat"):  # cgroup v2: "usage_usec N" among other lines
            fields = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
            text = fields.get("usage_usec", "")
        if text.strip().isdigit():
            return int(text.strip()) * unit
    return None


# Where a container's processes are listed on this host: cgroup v2 (which can kill them all at once), then v1.
_CGROUP_DIRS = (
    "/sys/fs/cgroup/system.slice/docker-{id}.scope",
    "/sys/fs/cgroup/docker/{id}",
    "/sys/fs/cgroup/pids/docker/{id}",
    "/sys/fs/cgroup/pids/system.slice/docker-{id}.scope",
)


def kill_on_host(container_id: str) -> bool:
    """SIGKILL every process of the container from this host rather than through the engine, whose kill
    took 44-72 ms a study here, on the path of every job's end (a study's container is still shutting down
    politely then: its host exiting, then the engine, 70 ms in all). True once every process listed in its
    cgroup was signalled (its init among them, which takes its whole pid namespace with it); False when
    the cgroup is not on this host or not ours to signal (an engine on another machine, a worker without
    the rights): the caller asks the engine then."""
    for pattern in _CGROUP_DIRS:
        group = Path(pattern.format(id=container_id))
        try:
            members = (group / "cgroup.procs").read_text().split()
        except OSError:
            continue
        try:
            if (group / "cgroup.kill").exists():
                (group / "cgroup.kill").write_text("1")
                return True
            for pid in members:
                _kill_member(int(pid), container_id)
        except (OSError, ValueError):
            return False
        return True
    return False


def _kill_member(pid: int, container_id: str) -> None:
    """Through a pidfd, so that a pid that ended and was reused by another process since the cgroup was
    read is never signalled: the process the pidfd holds must still be in the container's cgroup."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # ended already
    try:
        if container_id in Path(f"/proc/{pid}/cgroup").read_text():
            signal.pidfd_send_signal(handle, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        pass  # ended meanwhile
    finally:
        os.close(handle)


def _accounts(uid: int) -> dict[str, str]:
    """/etc/passwd and /etc/group of a study container: root, and `sandbox` with the container's uid."""
    return {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{uid}::/tmp:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nsandbox:x:{uid}:\n",
    }


def _scratch() -> Path:
    path = state_dir() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _ulimits(file_size: int, nofile: int, cpu_s: int | None = None) -> list[Any]:
    Ulimit = _docker().types.Ulimit  # noqa: N806
    limits = [
        Ulimit(name="nofile", soft=nofile, hard=nofile),
        Ulimit(name="fsize", soft=file_size, hard=file_size),
        Ulimit(name="core", soft=0, hard=0),
    ]
    if cpu_s is not None:  # per process: SIGXCPU at the soft limit, SIGKILL 5 s of CPU later
        limits.append(Ulimit(name="cpu", soft=cpu_s, hard=cpu_s + 5))
    return limits


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):
        container.remove(force=True)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def sweep(max_age_s: float | None = None) -> int:
    """Remove sandbox and install containers whose worker process on this host is gone (or, with
    max_age_s, that are older than that). Returns how many were removed. For a worker's start-up."""
    docker = _docker()
    client = _engine(timeout=30.0)
    host = socket.gethostname()
    removed = 0
    now = time.time()
    for container in client.containers.list(all=True, filters={"label": ROLE_LABEL}):
        owner = container.labels.get(WORKER_LABEL, "")
        name, _, pid = owner.rpartition(":")
        orphan = name == host and pid.isdigit() and not process_alive(int(pid))
        if max_age_s is not None and not orphan:
            created = container.attrs.get("Created", "")
            orphan = _age_s(created, now) > max_age_s
        if orphan:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
                removed += 1
    return removed


def _age_s(created: str, now: float) -> float:
    try:
        stamp = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return 0.0
    return now - stamp.timestamp()
