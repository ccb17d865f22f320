"""The `docker` provider: scoring workers as containers of the worker image on a Docker engine.

A machine is a detached container `bbo-<fleet>-<n>` running `bbo admin worker --name <fleet>-<n>` from
the content-tagged worker image (autoscaler/providers/docker_image.py). Its labels are the source of
truth: bbo.fleet, bbo.machine and bbo.store (a short hash of the Redis URL, so two stores' fleets of the
same name on one engine stay apart); `list` asks the engine, so a restarted daemon finds the same
containers. Redis keeps only what the engine cannot: when a machine was asked to drain.

How a container reaches what it needs (docs/providers/docker.md says why, and what it trusts):
- Redis by the same URL: a unix socket's folder is bind-mounted at the same path (and the container then
  needs no network at all); a TCP Redis on this host's loopback means host networking; any other URL the
  default bridge network (or the `network` option).
- its state folder: <state dir>/autoscaler/<fleet>/docker, bind-mounted at the same path, because
- its studies' sandboxes (sandbox="docker", the default) are sibling containers on the host engine,
  started through the host's docker socket mounted at /var/run/docker.sock, and the engine resolves
  their bind mounts (the staged submission) on the host. That socket is root on the host.
The container itself runs as the caller's uid with every capability dropped (root keeps only the three
file-ownership ones the sandbox cache needs), no-new-privileges, a read-only root, a tmpfs /tmp, an init
that reaps orphans, and memory, pids and (optionally) cpu limits.

Drain is a warm stop: SIGTERM to the worker (through the init), RQ's warm shutdown, so the running job
finishes; the exited container is then collected by the next `list` (its log tail is kept in
<state dir>/autoscaler/<fleet>/<name>.log). Delete is a forced removal, with any sandbox it left.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from autoscaler.providers.base import CapacityExceeded, Machine, MachineRecords, ProviderError, counter_key
from autoscaler.providers.docker_image import image_tag
from queue_schema.settings import state_dir
from sandbox_image.labels import ROLE_LABEL, WORKER_LABEL

FLEET_LABEL = "bbo.fleet"
MACHINE_LABEL = "bbo.machine"
STORE_LABEL = "bbo.store"
FLEET_ENV = "BBO_AUTOSCALER_FLEET"
MACHINE_ENV = "BBO_AUTOSCALER_MACHINE"
ENGINE_SOCKET = "/var/run/docker.sock"
SANDBOXES = ("docker", "process")
LIVE_STATES = ("created", "running", "restarting", "paused")
LOG_TAIL_LINES = 500
LOG_LIMITS = {"max-size": "10m", "max-file": "2"}  # the engine's copy of a worker's output
# Root in the container keeps these: the docker sandbox chowns a submission's install folder to the
# sandbox uid, then tightens and later prunes it (workers/sandbox/docker.py).
ROOT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
# Settings of the host's workers that must not follow them into a container (each is set explicitly).
_HOST_ONLY_ENV = {"BBO_STATE_DIR", "BBO_CACHE_DIR", "BBO_ALLOW_UNSAFE_SANDBOX", "BBO_REDIS_URL"}


def store_id(redis_url: str) -> str:
    return hashlib.sha256(redis_url.encode()).hexdigest()[:12]


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


class DockerProvider:
    name = "docker"

    def __init__(
        self,
        r: redis.Redis,
        *,
        fleet: str = "docker",
        cap: int | str | None = None,
        env: dict[str, str] | None = None,
        image: str | None = None,
        network: str | None = None,
        memory_mb: int | str = 2048,
        pids: int | str = 1024,
        cpus: float | str | None = None,
        sandbox: str = "docker",
        allow_unsafe: bool | str = False,
        user: str | None = None,
        log_dir: Path | None = None,
    ) -> None:
        """`r` is a str client; `env` the environment the workers would have on this host (its
        BBO_REDIS_URL is the store they serve). Options may be strings (the CLI's -o KEY=VALUE):
        `image` (default: the worker image this tree describes), `network` (default: none for a unix-socket
        Redis, host for a loopback one, else bridge), `memory_mb`/`pids`/`cpus` (the worker container's
        limits; its sandboxes have their own), `sandbox` (docker: sibling containers through the host's
        socket; process: no isolation, only with allow_unsafe), `user` (default: our uid:gid)."""
        self.r = r
        self.fleet = fleet
        self.records = MachineRecords(r, self.name, fleet)
        self.env = dict(env if env is not None else os.environ)
        try:
            self.cap = int(cap) if cap is not None else (os.cpu_count() or 1)
            self.memory_mb = int(memory_mb)
            self.pids = int(pids)
            self.cpus = float(cpus) if cpus not in (None, "") else None
        except ValueError as exc:
            raise ProviderError(f"docker provider: {exc}") from None
        if sandbox == "bwrap":
            raise ProviderError(
                "docker provider: sandbox=bwrap is not supported: bubblewrap inside a container needs the "
                "container's seccomp, apparmor and /proc masking all turned off (measured); use "
                "sandbox=docker (default)"
            )
        if sandbox not in SANDBOXES:
            raise ProviderError(f"docker provider: sandbox must be one of {', '.join(SANDBOXES)}")
        if sandbox == "process" and not _truthy(allow_unsafe):
            raise ProviderError(
                "docker provider: sandbox=process runs participants' code without isolation inside the "
                "worker; pass -o allow_unsafe=1 to accept that"
            )
        self.sandbox = sandbox
        self.redis_url = self.env.get("BBO_REDIS_URL", "")
        if not self.redis_url:
            raise ProviderError("docker provider: BBO_REDIS_URL is not set in the workers' environment")
        self.store = store_id(self.redis_url)
        self.network = network or _default_network(self.redis_url)
        self.user = user or f"{os.getuid()}:{os.getgid()}"
        host_state = Path(self.env["BBO_STATE_DIR"]) if self.env.get("BBO_STATE_DIR") else state_dir()
        # The workers' state folder: same path inside and out (the sandboxes' bind mounts are host paths).
        self.worker_state = host_state.resolve() / "autoscaler" / fleet / "docker"
        self.log_dir = log_dir or host_state.resolve() / "autoscaler" / fleet
        if image is None:
            image = image_tag()
        self.image = image
        self._client_cache: Any = None

    # -- the protocol ---------------------------------------------------------------------------------

    def create(self, n: int) -> builtins.list[str]:
        existing = {machine.name for machine in self.list()}
        room = max(0, self.cap - len(existing))
        created: builtins.list[str] = []
        if n > 0 and room > 0:
            with self._engine_errors("prepare a worker"):
                run_options = self._run_options()
            for _ in range(min(n, room)):
                try:
                    created.append(self._start(existing, run_options))
                except ProviderError as exc:
                    if created:  # a partial success is not lost
                        raise CapacityExceeded(f"{exc} (after starting {len(created)})", created) from None
                    raise
        if n > room:
            raise CapacityExceeded(
                f"docker cap of {self.cap} worker(s) reached: started {len(created)} of {n}", created
            )
        return created

    def list(self) -> builtins.list[Machine]:
        records = self.records.all()
        machines = []
        present = set()
        for container in self._containers():
            labels = container.attrs.get("Labels") or {}
            name = labels.get(MACHINE_LABEL, "")
            if not name:
                continue
            present.add(name)
            if container.attrs.get("State") not in LIVE_STATES:
                self._collect(container, name)  # a drained (or crashed) worker that has exited
                present.discard(name)
                continue
            record = records.get(name, {})
            machines.append(
                Machine(
                    name=name,
                    created_at=float(container.attrs.get("Created") or record.get("created_at") or 0.0),
                    state="draining" if record.get("draining_since") is not None else "running",
                    labels={**labels, "container": container.id[:12]},
                )
            )
        stale = [name for name in records if name not in present]
        if stale:
            self.records.drop(*stale)
        return sorted(machines, key=lambda machine: machine.name)

    def drain(self, name: str) -> None:
        container = self._container(name)
        if container is None:
            return
        # One SIGTERM, through the init to the worker: RQ's warm shutdown lets the running job finish.
        # (Not `docker stop`, whose timeout would end in a SIGKILL of the job.)
        with self._engine_errors("drain", name):
            try:
                container.kill(signal="SIGTERM")
            except self._docker().errors.APIError as exc:
                if exc.status_code not in (404, 409):  # gone, or not running: nothing to stop
                    raise
        # Recorded once the signal is sent: a machine never shows as draining when it was not told to.
        record = self.records.get(name)
        record["draining_since"] = time.time()
        self.records.put(name, record)

    def delete(self, name: str) -> None:
        container = self._container(name)
        if container is not None:
            self._collect(container, name)
        self.records.drop(name)

    # -- containers ----------------------------------------------------------------------------------

    def _labels(self, name: str | None = None) -> dict[str, str]:
        labels = {FLEET_LABEL: self.fleet, STORE_LABEL: self.store}
        if name is not None:
            labels[MACHINE_LABEL] = name
        return labels

    def _containers(self, name: str | None = None) -> builtins.list[Any]:
        filters = {"label": [f"{key}={value}" for key, value in self._labels(name).items()]}
        with self._engine_errors("list"):
            return self._client().containers.list(all=True, sparse=True, filters=filters)

    def _container(self, name: str) -> Any | None:
        found = self._containers(name)
        return found[0] if found else None

    def _start(self, taken: set[str], run_options: dict[str, Any]) -> str:
        while True:
            name = f"{self.fleet}-{self.r.incr(counter_key(self.name, self.fleet))}"
            if name in taken:  # the counter was lost (a flushed store) while its containers live on
                continue
            taken.add(name)
            environment = {**run_options["environment"], MACHINE_ENV: name}
            try:
                with self._engine_errors("start", name):
                    container = self._client().containers.run(
                        self.image,
                        command=["bbo", "admin", "worker", "--name", name],
                        name=f"bbo-{name}",
                        hostname=f"bbo-{name}",  # the worker's sandboxes carry it: see delete
                        labels=self._labels(name),
                        **{**run_options, "environment": environment},
                    )
            except ProviderError:
                if self._name_taken(f"bbo-{name}"):
                    continue  # another store's fleet of the same name on this engine
                raise
            record = {"created_at": time.time(), "container": container.id}
            self.records.put(name, record)
            return name

    def _name_taken(self, container_name: str) -> bool:
        with contextlib.suppress(Exception):
            self._client().containers.get(container_name)
            return True
        return False

    def _run_options(self) -> dict[str, Any]:
        """Everything `docker run` needs beside the name: checked once per create."""
        docker = self._docker()
        client = self._client()
        with self._engine_errors("inspect the image"):
            try:
                image = client.images.get(self.image)
            except docker.errors.ImageNotFound:
                raise ProviderError(
                    f"worker image {self.image} is not on the engine: build it with "
                    "`bbo admin autoscaler build-worker-image`"
                ) from None
        volumes: dict[str, dict[str, str]] = {}
        environment = {
            key: value
            for key, value in self.env.items()
            if key.startswith("BBO_") and key not in _HOST_ONLY_ENV
        }
        environment.update(
            {
                "BBO_REDIS_URL": self.redis_url,
                "BBO_STATE_DIR": str(self.worker_state),
                "BBO_CACHE_DIR": str(self.worker_state / "cache"),
                "HOME": "/tmp",
                FLEET_ENV: self.fleet,
            }
        )
        self.worker_state.mkdir(parents=True, exist_ok=True)
        volumes[str(self.worker_state)] = {"bind": str(self.worker_state), "mode": "rw"}
        socket_path = _unix_socket(self.redis_url)
        if socket_path is not None:
            volumes[str(socket_path.parent)] = {"bind": str(socket_path.parent), "mode": "rw"}
        groups: builtins.list[str] = []
        if self.sandbox == "docker":
            sandbox_tag = image.labels.get("bbo-arena.sandbox-image", "")
            if sandbox_tag:
                try:
                    client.images.get(sandbox_tag)
                except docker.errors.DockerException:
                    raise ProviderError(
                        f"sandbox image {sandbox_tag} is not on the engine: `bbo admin sandbox build`"
                    ) from None
            engine_socket = _engine_socket(self.env)
            volumes[engine_socket] = {"bind": ENGINE_SOCKET, "mode": "rw"}
            try:
                groups.append(str(os.stat(engine_socket).st_gid))  # a non-root worker's way in
            except OSError as exc:
                raise ProviderError(f"docker provider: the engine's socket {engine_socket}: {exc}") from None
        else:
            environment["BBO_ALLOW_UNSAFE_SANDBOX"] = "1"
        root = self.user.split(":")[0] in ("0", "root")
        options: dict[str, Any] = {
            "detach": True,
            "environment": environment,
            "volumes": volumes,
            "network_mode": self.network,
            "user": self.user,
            "group_add": groups,
            "init": True,
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=512m,mode=1777"},
            "working_dir": "/tmp",
            "mem_limit": f"{self.memory_mb}m",
            "memswap_limit": f"{self.memory_mb}m",
            "pids_limit": self.pids,
            "cap_drop": ["ALL"],
            "cap_add": ROOT_CAPS if root else [],
            "security_opt": ["no-new-privileges"],
            "log_config": docker.types.LogConfig(
                type="json-file", config={"max-size": "10m", "max-file": "2"}
            ),
        }
        if self.cpus:
            options["nano_cpus"] = int(self.cpus * 1e9)
        return options

    def _collect(self, container: Any, name: str) -> None:
        """Keep the tail of a machine's log on the host, then remove it and the sandboxes it left."""
        docker = self._docker()
        with contextlib.suppress(docker.errors.DockerException, OSError):
            tail = container.logs(tail=LOG_TAIL_LINES)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / f"{name}.log").write_bytes(tail)
        with self._engine_errors("remove", name):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a removal already under way
                    raise
            self._remove_sandboxes(f"bbo-{name}")
        self.records.drop(name)

    def _remove_sandboxes(self, hostname: str) -> None:
        """Study containers are labelled host:pid of the worker that made them (workers/sandbox/docker.py);
        a worker removed by force cannot sweep its own."""
        docker = self._docker()
        for container in self._client().containers.list(all=True, sparse=True, filters={"label": ROLE_LABEL}):
            owner = (container.attrs.get("Labels") or {}).get(WORKER_LABEL, "")
            if owner.startswith(f"{hostname}:"):
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)

    # -- engine --------------------------------------------------------------------------------------

    @staticmethod
    def _docker():
        import docker  # the docker SDK, on first use only: it takes a while to import

        return docker

    def _client(self):
        if self._client_cache is None:
            docker = self._docker()
            try:
                # The engine the workers' environment names (DOCKER_HOST), as the socket mount does.
                client = docker.from_env(timeout=60, environment=self.env)
                client.ping()
            except Exception as exc:  # noqa: BLE001 - DockerException or requests' connection errors
                raise ProviderError(
                    f"no Docker engine answers ({_first_line(exc)}); start one (scripts/start-dockerd) "
                    "or set DOCKER_HOST"
                ) from None
            self._client_cache = client
        return self._client_cache

    @contextlib.contextmanager
    def _engine_errors(self, action: str, name: str | None = None):
        """Any engine failure as one ProviderError line (requests' errors included: a dead engine)."""
        import requests  # comes with the docker SDK, which is imported on first use only

        try:
            yield
        except (self._docker().errors.DockerException, requests.RequestException) as exc:
            target = f" {name}" if name else ""
            raise ProviderError(f"docker: could not {action}{target}: {_first_line(exc)}") from None


def _unix_socket(redis_url: str) -> Path | None:
    if not redis_url.startswith("unix://"):
        return None
    return Path(redis_url[len("unix://") :].split("?", 1)[0])


def _default_network(redis_url: str) -> str:
    """none when Redis is a unix socket (nothing else is reached by network), host when it is on this
    host's loopback (a container's own loopback is not ours), else the default bridge."""
    if redis_url.startswith("unix://"):
        return "none"
    host = urlsplit(redis_url).hostname or ""
    return "host" if host in {"localhost", "127.0.0.1", "::1"} else "bridge"


def _engine_socket(env: dict[str, str]) -> str:
    host = env.get("DOCKER_HOST", "")
    if not host:
        return ENGINE_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :]
    raise ProviderError(
        f"docker provider: sandbox=docker mounts the engine's unix socket into the workers; DOCKER_HOST "
        f"is {host!r}"
    )
