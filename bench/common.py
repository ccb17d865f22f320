"""What every benchmark shares: its log lines on stderr, percentiles, a scratch state folder of its own,
the `bbo` processes it runs (a Stack on runtime.supervisor), uploads through the team CLI's client, and
its figures on stdout (one JSON object with --json, aligned lines otherwise)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli.team import Api, ApiFailure, upload
from runtime.supervisor import Child, free_port, stop_children

ROOT = Path(__file__).resolve().parent.parent


def logger(name: str) -> Callable[[str], None]:
    """A function printing `bench NAME: message` on stderr (stdout carries only the figures)."""

    def log(message: str) -> None:
        print(f"bench {name}: {message}", file=sys.stderr, flush=True)

    return log


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank q-th percentile, None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@contextlib.contextmanager
def scratch_state(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A new state folder, made this process's (and its children's) BBO_STATE_DIR with no BBO_REDIS_URL,
    so the benchmark starts an embedded Redis of its own and never touches the user's; removed at the end
    unless `keep`. The prefix stays short: the Redis socket lives in here (a unix path holds 107 bytes)."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["BBO_STATE_DIR"] = str(state)
    os.environ.pop("BBO_REDIS_URL", None)
    try:
        yield state
    finally:
        if not keep:
            shutil.rmtree(state, ignore_errors=True)


def salted_zip(folder: Path, salt: str, pad_bytes: int = 0) -> bytes:
    """The starter-kit zip of `folder` plus a salt file, so that each upload is an artifact of its own, and
    `pad_bytes` of incompressible padding, so that it takes room on disk."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
        archive.writestr("salt.txt", salt)
        if pad_bytes:
            archive.writestr("padding.bin", os.urandom(pad_bytes), compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def print_figures(figures: dict[str, Any], as_json: bool, width: int = 32) -> None:
    if as_json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")


@contextlib.contextmanager
def embedded_store() -> Iterator[Any]:
    """An embedded Redis in the current state folder, started and made BBO_REDIS_URL for this process and
    the ones it starts; stopped at the end. Yields the EmbeddedRedis."""
    from queue_schema.connection import reset_clients
    from runtime.redis_server import EmbeddedRedis

    server = EmbeddedRedis()
    server.start()
    os.environ["BBO_REDIS_URL"] = server.url
    reset_clients()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy, and return that; SystemExit after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"bench: gave up after {timeout:.0f} s waiting for {what}")


# -- uploads ----------------------------------------------------------------------------------------


def team_api(base: str, token: str, timeout: float = 60) -> Api:
    """The team CLI's client for one team, raising ApiFailure instead of exiting (a benchmark counts
    refusals); close it (or use it as a context manager)."""
    return Api(base, token, timeout=timeout, exit_on_failure=False)


@dataclass(frozen=True)
class Upload:
    """What an upload came to: `status` 201 and the new `id`; or a refusal's HTTP status and the start of
    its answer in `body`; or no answer (status None) and the transport error in `body`."""

    status: int | None
    id: str | None = None
    body: str = ""

    @property
    def why(self) -> str:
        """A refusal in one line, led by its status (or the transport error's type)."""
        return self.body if self.status is None else f"{self.status} {self.body[:200]}"


def try_upload(api: Api, data: bytes, filename: str = "submission.zip") -> Upload:
    """Upload as `bbo submit` does, with its client; never raises for a refusal or a lost connection."""
    try:
        return Upload(201, upload(api, data, filename)["id"])
    except ApiFailure as exc:
        if exc.status is not None:
            return Upload(exc.status, body=exc.body)
        cause = exc.__cause__
        return Upload(None, body=f"{type(cause).__name__}: {cause}" if cause else str(exc))


# -- processes --------------------------------------------------------------------------------------


class Stack:
    """The `bbo` processes of a benchmark (the gateway, workers, any other `bbo admin` command), children of
    runtime.supervisor against one store: an embedded Redis of its own in `state` (or `redis_dir`) unless
    `store_url` names one. Their output goes to STATE/processes.log (our stderr without a state folder).
    `unsafe`: BBO_ALLOW_UNSAFE_SANDBOX=1 for them (the process backend runs studies without isolation)."""

    def __init__(
        self,
        state: Path | None = None,
        *,
        store_url: str | None = None,
        redis_dir: Path | None = None,
        unsafe: bool = True,
        prefix: str = "bench",
    ) -> None:
        from runtime.redis_server import EmbeddedRedis

        self.store: EmbeddedRedis | None = None
        if store_url is None:
            assert state is not None, "an owned store lives in the state folder"
            directory = redis_dir or state / "redis"
            self.store = EmbeddedRedis(directory, directory / "redis.sock")
            store_url = self.store.url
        self.url = store_url
        self.env = {**os.environ, "BBO_REDIS_URL": store_url}
        if state is not None:
            self.env["BBO_STATE_DIR"] = str(state)
        if unsafe:
            self.env["BBO_ALLOW_UNSAFE_SANDBOX"] = "1"
        self.log = None if state is None else state / "processes.log"
        self.prefix = prefix
        self.gateway: Child | None = None
        self.workers: dict[str, Child] = {}
        self.others: list[Child] = []
        self.base = ""
        self._count = 0

    # -- the store (owned) --

    def start_store(self) -> Any:
        """Start the owned store, make it this process's BBO_REDIS_URL; a client of it."""
        from queue_schema.connection import connect, reset_clients

        assert self.store is not None
        self.store.start()
        os.environ["BBO_REDIS_URL"] = self.store.url
        reset_clients()
        return connect(self.store.url)

    def kill_store(self) -> None:
        assert self.store is not None and self.store.process is not None
        self.store.process.send_signal(signal.SIGKILL)  # no shutdown, no final flush
        self.store.process.wait(10)

    # -- processes --

    def command(self, name: str, *args: str, cpus: set[int] | None = None) -> Child:
        """`bbo admin ARGS...` started under `name` (not restarted when it exits)."""
        argv = [sys.executable, "-m", "cli", "admin", *args]
        return Child(name, argv, self.env, log=self.log, cwd=ROOT, restart=False, cpus=cpus).start()

    def start_gateway(
        self, spec: str | Path, *, backend: str = "process", processes: int = 1, timeout: float = 60
    ) -> str:
        """`bbo admin serve` on a free port, once it answers /health; its base URL."""
        port = free_port()
        self.gateway = self.command(
            "gateway",
            *("serve", "--port", str(port), "--spec", str(spec), "--backend", backend),
            *("--log-level", "warning", "--workers", str(processes)),
        )
        self.base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if not self.gateway.alive:
                raise SystemExit(f"bench: the gateway exited at start-up; {self._see()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.base}/health", timeout=1).status_code == 200
            return False

        wait_until(healthy, timeout, "the gateway's /health", interval=0.1)
        return self.base

    def start_worker(self, cpus: set[int] | None = None) -> str:
        """A `bbo admin worker` under a name never used before (a killed worker's registration lingers, and
        a new worker of that name would refuse to start); its name."""
        name = f"{self.prefix}-{os.getpid()}-{self._count}"
        self._count += 1
        self.workers[name] = self.command(name, "worker", "--name", name, cpus=cpus)
        return name

    def start_workers(self, count: int, *, pin: bool = False, timeout: float = 120) -> list[str]:
        """`count` workers, once registered (the scoring stack imported, ready for jobs). Pinned, a worker
        and everything it starts (work horse, sandboxes) share one core."""
        cpus = sorted(os.sched_getaffinity(0))
        names = [self.start_worker({cpus[i % len(cpus)]} if pin else None) for i in range(count)]
        self.wait_registered(names, timeout)
        return names

    def wait_registered(self, names: list[str], timeout: float = 120) -> None:
        from rq import Worker

        from queue_schema.connection import rq_connection

        def registered() -> bool:
            if any(not self.workers[name].alive for name in names if name in self.workers):
                raise SystemExit(f"bench: a worker exited at start-up; {self._see()}")
            live = {w.name for w in Worker.all(connection=rq_connection(self.url))}
            return set(names) <= live

        wait_until(registered, timeout, f"workers {names} to register")

    def exited_workers(self) -> dict[str, int]:
        """Workers that exited (by name, with their status), taken off the list."""
        gone = {name: child.returncode for name, child in self.workers.items() if not child.alive}
        for name in gone:
            self.workers.pop(name)
        return gone

    def stop_workers(self, timeout: float = 60) -> None:
        stop_children(list(self.workers.values()), timeout)  # warm shutdown: the current job ends first
        self.workers = {}

    def stop(self, timeout: float = 60) -> None:
        """Every process (warm shutdown, then killed at `timeout`), then the owned store."""
        children = [*self.workers.values(), *self.others, *([self.gateway] if self.gateway else [])]
        stop_children(children, timeout)
        self.workers, self.others, self.gateway = {}, [], None
        if self.store is not None:
            self.store.stop()

    def _see(self) -> str:
        return f"see {self.log}" if self.log is not None else "see its output above"
