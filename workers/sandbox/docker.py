"""The `docker` backend: every study's optimizer in a fresh, locked-down container, removed afterwards.

Per study (launch): a container of the content-tagged sandbox image (sandbox_image/build.py) with no
network, a read-only root, a size-limited tmpfs at /tmp (HOME and TMPDIR), memory = memory+swap limit, a
pids limit, a cpu quota, every capability dropped, no-new-privileges, uid 10001, a fixed environment
(nothing of the worker's), ulimits on open files, file size and core dumps, and no logging driver (the
engine keeps nothing of what the optimizer prints). The only host paths it sees are the artifact's staged
submission at /submission and its installed bundled packages at /install, both read-only.

The container is created through the SDK and started by the docker CLI (`docker start --attach
--interactive`), which the harness runs as its child: the CLI's stdin/stdout/stderr are then the
container's, so OptimizerProcess's pipes, reader threads, output caps and deadlines work unchanged, and
closing stdin reaches the optimizer as end of file. Killing goes through the engine (SIGKILL to the
container, which a signal-ignoring optimizer cannot refuse); cleanup removes the container.

Per artifact (prepare), keyed by the sha256 of the submission folder's content and cached under
<state dir>/sandbox/artifacts/<sha256>/: a staged copy of the submission (regular files only, no
symlinks, world-readable so uid 10001 can read it) and, when the submission bundles packages
(requirements.txt, optional install_order.txt, as the 2020 starter kit's prepare_upload.sh made them),
their installation, done once in a network-less container of the same image with
`pip install --no-index --find-links /submission --prefix /install`. Requirements the image already
satisfies are not reinstalled; a bundled version of a preinstalled package shadows it (/install comes
first on PYTHONPATH).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from competition.recovery import process_alive
from competition.spec import Limits
from queue_schema.settings import state_dir
from queue_schema.states import FailureCause
from workers.optimizer_process import LaunchSpec
from workers.sandbox.base import THREAD_ENV, InstallFailed, SandboxUnavailable

SANDBOX_UID = 10001
ROLE_LABEL = "bbo-arena.role"
STUDY_LABEL = "bbo-arena.study"
ARTIFACT_LABEL = "bbo-arena.artifact"
WORKER_LABEL = "bbo-arena.worker"  # host:pid of the worker that made it, for sweeping orphans
SUBMISSION_MOUNT = "/submission"
INSTALL_MOUNT = "/install"
INSTALL_SITE = f"{INSTALL_MOUNT}/lib/python3.11/site-packages"  # pip --prefix layout for the image's Python
INSTALL_TIMEOUT_S = 600.0
INSTALL_MIN_MEMORY_MB = 1024
INSTALL_FILE_SIZE_MB = 2048
NOFILE = 1024
CACHE_KEEP_DAYS = 7.0

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
    import docker

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
    from sandbox_image.build import image_tag

    try:
        client = _engine(timeout=5.0)
        client.images.get(image_tag())
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False
    return True


@dataclass
class Prepared:
    """One artifact made ready on this worker."""

    sha256: str
    submission: Path  # staged copy, bound read-only at /submission
    install: Path | None  # installed bundled packages, bound read-only at /install
    cached: bool  # True when an earlier prepare had already done the work


class DockerBackend:
    name = "docker"

    def __init__(self, image: str | None = None) -> None:
        from sandbox_image.build import image_tag

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
        self.prepared: dict[str, Prepared] = {}

    # -- provenance -------------------------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "image": self.tag, "image_digest": self.image.id}

    # -- per artifact -----------------------------------------------------------------------------
    def prepare(self, submission_dir: Path, limits: Limits) -> Prepared:
        """Stage the submission and install its bundled packages, once per content hash (cached)."""
        key = str(Path(submission_dir).resolve())
        sha = content_sha256(Path(submission_dir))
        root = _cache_root() / sha
        ready = root / "ready.json"
        with _locked(_cache_root() / f"{sha}.lock"):
            if ready.is_file():
                info = json.loads(ready.read_text())
                ready.touch()
                install = root / "install" if info["install"] else None
                prepared = Prepared(sha, root / "submission", install, True)
            else:
                prepared = self._prepare_fresh(Path(submission_dir), sha, root, limits)
        self.prepared[key] = prepared
        _prune_cache(keep=sha)
        return prepared

    def _prepare_fresh(self, submission_dir: Path, sha: str, root: Path, limits: Limits) -> Prepared:
        started = time.monotonic()
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        os.chmod(root, 0o755)
        staged = root / "submission"
        _stage(submission_dir, staged)
        install: Path | None = None
        if wants_install(staged):
            install = root / "install"
            try:
                self._install(staged, install, sha, limits)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
        info = {"install": install is not None, "seconds": round(time.monotonic() - started, 2)}
        (root / "ready.json").write_text(json.dumps(info) + "\n")
        return Prepared(sha, staged, install, False)

    def _install(self, staged: Path, install: Path, sha: str, limits: Limits) -> None:
        docker = _docker()
        install.mkdir()
        if os.geteuid() == 0:
            os.chown(install, SANDBOX_UID, SANDBOX_UID)
        else:
            os.chmod(install, 0o777)  # noqa: S103 - the container's uid must write here; tightened below
        script = install_script(staged)
        memory = max(limits.memory_mb, INSTALL_MIN_MEMORY_MB)
        file_size = INSTALL_FILE_SIZE_MB * 1024 * 1024
        container = None
        try:
            # The root is writable here (an ephemeral layer, discarded with the container) so that pip may
            # "uninstall" a preinstalled version it replaces; the result lives only in /install.
            container = self.client.containers.create(
                self.image.id,
                entrypoint=["/bin/sh", "-c"],
                command=[script],
                user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                environment={**STUDY_ENV, "PYTHONPATH": INSTALL_SITE},
                working_dir="/tmp",
                network_mode="none",
                mem_limit=f"{memory}m",
                memswap_limit=f"{memory}m",
                pids_limit=max(limits.pids, 256),
                nano_cpus=int(limits.cpus * 1e9),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ulimits=_ulimits(file_size, NOFILE),
                volumes={
                    str(staged): {"bind": SUBMISSION_MOUNT, "mode": "ro"},
                    str(install): {"bind": INSTALL_MOUNT, "mode": "rw"},
                },
                labels={ROLE_LABEL: "install", ARTIFACT_LABEL: sha[:12], WORKER_LABEL: _worker_id()},
                log_config=docker.types.LogConfig(
                    type="json-file", config={"max-size": "1m", "max-file": "1"}
                ),
            )
            container.start()
            try:
                status = container.wait(timeout=INSTALL_TIMEOUT_S)
            except Exception as exc:  # requests' ReadTimeout/ConnectionError when the wait runs out
                if isinstance(exc, docker.errors.DockerException):
                    raise
                with contextlib.suppress(docker.errors.DockerException):
                    container.kill()
                raise InstallFailed(
                    f"installing the bundled requirements took longer than {INSTALL_TIMEOUT_S:.0f} s"
                ) from None
            code = status.get("StatusCode")
            output = container.logs(stdout=True, stderr=True, tail=200).decode("utf-8", errors="replace")
            container.reload()
            if container.attrs["State"].get("OOMKilled"):
                raise InstallFailed(f"installing the bundled requirements ran out of memory ({memory} MB)")
            if code != 0:
                raise InstallFailed(install_error(output, code))
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(
                f"the engine failed while installing bundled packages: {_first_line(exc)}"
            ) from None
        finally:
            if container is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
        os.chmod(install, 0o755)

    # -- per study --------------------------------------------------------------------------------
    def launch(self, submission_dir: Path, limits: Limits, study: str | None = None) -> LaunchSpec:
        """A fresh container for one study; `study` (optional) labels it for sweeps and inspection."""
        docker = _docker()
        prepared = self.prepared.get(str(Path(submission_dir).resolve()))
        if prepared is None:
            prepared = self.prepare(submission_dir, limits)
        with contextlib.suppress(OSError):
            (_cache_root() / prepared.sha256 / "ready.json").touch()
        environment = dict(STUDY_ENV)
        volumes = {str(prepared.submission): {"bind": SUBMISSION_MOUNT, "mode": "ro"}}
        if prepared.install is not None:
            volumes[str(prepared.install)] = {"bind": INSTALL_MOUNT, "mode": "ro"}
            environment["PYTHONPATH"] = INSTALL_SITE
        file_size = limits.file_size_mb * 1024 * 1024
        labels = {ROLE_LABEL: "sandbox", ARTIFACT_LABEL: prepared.sha256[:12], WORKER_LABEL: _worker_id()}
        if study is not None:
            labels[STUDY_LABEL] = str(study)
        try:
            container = self.client.containers.create(
                self.image.id,
                command=[SUBMISSION_MOUNT],
                name=f"bbo-sandbox-{uuid.uuid4().hex[:16]}",
                hostname="sandbox",
                stdin_open=True,
                user=f"{SANDBOX_UID}:{SANDBOX_UID}",
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
                ulimits=_ulimits(file_size, NOFILE),
                volumes=volumes,
                labels=labels,
                log_config=docker.types.LogConfig(type="none"),
            )
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(f"cannot create a sandbox container: {_first_line(exc)}") from None

        def kill() -> None:
            with contextlib.suppress(docker.errors.DockerException):
                container.kill()

        def cleanup() -> None:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)

        def exit_cause(returncode: int | None) -> str | None:
            # resource_limit: docker saw the OOM killer. infrastructure: the engine or the container went
            # away, or the container never started (the CLI could not reach the engine): not the team's
            # doing. None: the optimizer's own exit.
            with contextlib.suppress(Exception):
                container.wait(timeout=5)
            try:
                container.reload()
            except docker.errors.DockerException:
                return FailureCause.INFRASTRUCTURE.value
            state = container.attrs.get("State") or {}
            if state.get("OOMKilled"):
                return FailureCause.RESOURCE_LIMIT.value
            if str(state.get("StartedAt", "")).startswith("0001-"):
                return FailureCause.INFRASTRUCTURE.value
            return None

        env = {name: os.environ[name] for name in _CLI_ENV if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        return LaunchSpec(
            argv=[self.cli, "start", "--attach", "--interactive", container.id],
            env=env,
            cleanup=cleanup,
            kill=kill,
            exit_cause=exit_cause,
        )


# -- submission content ----------------------------------------------------------------------------


def _regular_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every regular file, sorted; symlinks and special files are skipped."""
    for current, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(current, d)))
        for name in sorted(files):
            path = Path(current) / name
            if stat.S_ISREG(path.lstat().st_mode):
                yield path.relative_to(folder).as_posix(), path


def content_sha256(folder: Path) -> str:
    """The sha256 of a submission folder: every regular file's relative path and bytes."""
    digest = hashlib.sha256()
    for rel, path in _regular_files(folder):
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                file_digest.update(chunk)
        digest.update(f"{rel}\0".encode() + file_digest.digest())
    return digest.hexdigest()


def _stage(source: Path, target: Path) -> None:
    """Copy regular files (0644) and folders (0755), never following a link out of the submission."""
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    for rel, path in _regular_files(source):
        dest = target / rel
        for parent in reversed(dest.relative_to(target).parents[:-1]):
            folder = target / parent
            if not folder.is_dir():
                folder.mkdir(mode=0o755)
                os.chmod(folder, 0o755)
        shutil.copyfile(path, dest, follow_symlinks=False)
        os.chmod(dest, 0o644)


def _meaningful_lines(path: Path) -> list[str]:
    if not path.is_file() or path.is_symlink():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def wants_install(folder: Path) -> bool:
    """Whether the submission bundles anything to install (an empty requirements.txt does not)."""
    names = ("requirements.txt", "install_order.txt")
    return any(_meaningful_lines(folder / name) for name in names)


def install_script(folder: Path) -> str:
    """The shell script the install container runs: install_order.txt's entries one by one (--no-deps,
    in order), then requirements.txt. An entry naming a bundled file installs that file."""
    pip = ["python", "-m", "pip", "install", "--no-index", "--find-links", SUBMISSION_MOUNT,
           "--prefix", INSTALL_MOUNT, "--no-build-isolation", "--no-warn-script-location",
           "--no-input", "--progress-bar", "off", "--disable-pip-version-check"]  # fmt: skip
    steps = ["set -e", f"cd {SUBMISSION_MOUNT}"]
    for number, entry in enumerate(_meaningful_lines(folder / "install_order.txt"), start=1):
        if entry.startswith("-"):
            raise InstallFailed(
                f"install_order.txt line {number} is an option ({entry[:40]!r}); list files or requirements"
            )
        bundled = folder / entry
        target = f"{SUBMISSION_MOUNT}/{entry}" if "/" not in entry and bundled.is_file() else entry
        steps.append(shlex.join([*pip, "--no-deps", target]))
    if _meaningful_lines(folder / "requirements.txt"):
        steps.append(shlex.join([*pip, "-r", f"{SUBMISSION_MOUNT}/requirements.txt"]))
    return "\n".join(steps)


def install_error(output: str, code: int | None) -> str:
    """pip's own error lines (they name only the team's packages and files), else the exit code."""
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
    detail = " ".join(errors[-2:])[:400] if errors else f"pip exited with code {code}"
    return (
        f"the bundled requirements did not install: {detail} (requirements.txt may only name packages that "
        "the image provides or that are bundled as wheels in the submission; there is no network)"
    )


# -- cache -----------------------------------------------------------------------------------------


def _cache_root() -> Path:
    path = state_dir() / "sandbox" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prune_cache(keep: str) -> None:
    """Drop artifacts no worker has used for CACHE_KEEP_DAYS (every launch touches its ready.json)."""
    cutoff = time.time() - CACHE_KEEP_DAYS * 86400
    root = _cache_root()
    for entry in root.iterdir():
        if entry.name == keep or not entry.is_dir():
            continue
        ready = entry / "ready.json"
        try:
            stale = ready.stat().st_mtime < cutoff if ready.exists() else entry.stat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(OSError):
                (root / f"{entry.name}.lock").unlink()


# -- containers ------------------------------------------------------------------------------------


def _ulimits(file_size: int, nofile: int) -> list[Any]:
    Ulimit = _docker().types.Ulimit  # noqa: N806
    return [
        Ulimit(name="nofile", soft=nofile, hard=nofile),
        Ulimit(name="fsize", soft=file_size, hard=file_size),
        Ulimit(name="core", soft=0, hard=0),
    ]


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
    from datetime import datetime

    try:
        stamp = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return 0.0
    return now - stamp.timestamp()
