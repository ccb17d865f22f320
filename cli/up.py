"""`bbo admin up`: the whole service on one machine, in the foreground.

Owns the embedded Redis (unless BBO_REDIS_URL points elsewhere), runs the gateway and N workers as child
processes, restarts a child or the owned Redis when it dies (with a back-off, so a crash loop does not
spin), and on Ctrl-C or SIGTERM stops everything warmly: workers finish nothing new, running studies'
sandboxes are killed with them, and Redis flushes its AOF last.

A child's output (stdout and stderr, one pipe) never reaches the terminal or a log file as it is: a relay
thread passes each line through `safe_line` (controls made visible, URL credentials redacted), since
worker and gateway lines carry exception text, request paths and team names. A child's stdout never
becomes ours: it goes to our stderr (or its log file), so a command's stdout stays its JSON.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import typer

from cli.output import err, fail, plain
from queue_schema.connection import RedisUnavailable
from queue_schema.untrusted import redact_url, safe_line
from runtime.redis_server import EmbeddedRedis

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
RELAY_LINE_BYTES = 16384  # a longer line is relayed in pieces
Say = Callable[[str], None]


def relay(source: IO[bytes], log: Path | None) -> None:
    """Copy a child's output, line by line through `safe_line`, to `log` (appended) or to our stderr,
    until the child closes it. Keeps reading when the destination fails (a closed terminal), so the
    child never blocks on a full pipe."""
    out = open(log, "a", encoding="utf-8", errors="replace") if log is not None else None  # noqa: SIM115
    try:
        for raw in iter(lambda: source.readline(RELAY_LINE_BYTES), b""):
            line = safe_line(raw.decode("utf-8", errors="replace").rstrip("\n"))
            with contextlib.suppress(OSError, ValueError):
                target = out if out is not None else sys.stderr
                target.write(line + "\n")
                target.flush()
    finally:
        source.close()
        if out is not None:
            out.close()


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    log: Path | None = None  # its output goes here instead of our terminal (the demo's console owns that)
    relay_thread: threading.Thread | None = None

    def start(self) -> None:
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.relay_thread = threading.Thread(
            target=relay, args=(self.proc.stdout, self.log), name=f"relay-{self.name}", daemon=True
        )
        self.relay_thread.start()

    def check(self, now: float, say: Say) -> None:
        """Restart after an exit, backing off when it keeps dying."""
        if self.alive:
            return
        if self.proc is not None:
            code = self.proc.returncode
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            say(f"[yellow]{self.name} exited with {code}; restarting in {delay} s[/]")
            self.proc, self.restarts, self.next_start = None, self.restarts + 1, now + delay
        if now >= self.next_start:
            self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.relay_thread is not None:
            self.relay_thread.join(5)  # its last lines (a grandchild may still hold the pipe: not forever)


@dataclass
class StoreWatch:
    """The embedded Redis `up` owns, restarted like a child when it exits (a crash, or its AOF write
    failing on a full disk), so that the service comes back by itself once the cause is gone: the AOF
    replays, and the gateway and workers reconnect."""

    server: EmbeddedRedis
    restarts: int = 0
    next_start: float | None = None

    def check(self, now: float, say: Say) -> None:
        process = self.server.process
        if process is None or process.poll() is None:
            return
        if self.next_start is None:
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            say(
                f"[yellow]redis-server exited with {process.returncode} (see "
                f"{plain(self.server.directory / 'redis.log')}); restarting in {delay} s[/]"
            )
            self.restarts, self.next_start = self.restarts + 1, now + delay
        if now < self.next_start:
            return
        self.next_start = None
        try:
            self.server.start()
            say("[green]redis-server is back[/]")
        except RedisUnavailable as exc:  # exited again at once (the disk still full): back off more
            say(f"[yellow]{plain(exc)}[/]")


def up_command(
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", min=0, help="Scoring workers to run."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Gateway port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Gateway interface."),
    spec_name: str = typer.Option("demo", "--spec", help="Competition spec: a shipped name or a path."),
    backend: str = typer.Option(
        "auto", "--backend", help="Sandbox for studies: auto, docker, bwrap, process."
    ),
    autoscale: str = typer.Option(
        "none",
        "--autoscale",
        help="Fleet sizing: none (--workers fixed workers) or local (the autoscaler daemon runs local "
        "workers, up to --workers, as the queue needs them; drained on stop).",
    ),
) -> None:
    """Run the embedded Redis, the gateway and the workers in the foreground; Ctrl-C stops all of it."""
    from runtime.redis_server import ensure_redis
    from runtime.spec import SpecError, load
    from workers.sandbox import SandboxRefused, SandboxUnavailable, select

    if autoscale not in ("none", "local"):
        fail(f"--autoscale {autoscale} is not available in this build: use none or local")
    try:
        spec = load(spec_name)
        select(backend)  # refuse an unusable or unsafe sandbox before starting anything
    except (SpecError, SandboxRefused, SandboxUnavailable) as exc:
        fail(str(exc))
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    store: list[StoreWatch] = []
    try:
        with ensure_redis(on_owned=lambda server: store.append(StoreWatch(server))) as url:
            env = {**os.environ, "BBO_REDIS_URL": url}
            children = system_children(
                env,
                host=host,
                port=port,
                spec_name=spec_name,
                backend=backend,
                workers=workers,
                autoscale=autoscale,
            )
            for child in children:
                child.start()
            err.print(
                f"bbo-arena up: [bold]{spec.name}[/] on http://{host}:{port}, "
                f"{workers} worker(s){' at most, autoscaled' if autoscale == 'local' else ''}, sandbox "
                f"{backend}, store {redact_url(url)}; Ctrl-C to stop",
                soft_wrap=True,
            )
            supervise([*children, *store], lambda: stopping)
            err.print("stopping: workers finish nothing new, the gateway closes, Redis flushes")
            stop_children(children)
    except RedisUnavailable as exc:
        fail(str(exc))


# -- the system's processes, shared with `bbo admin demo` -------------------------------------------


def system_children(
    env: dict[str, str],
    *,
    host: str,
    port: int,
    spec_name: str,
    backend: str,
    workers: int,
    autoscale: str,
    autoscaler_args: tuple[str, ...] = (),
    log_dir: Path | None = None,
) -> list[Child]:
    """The gateway and the fleet, not started yet; with `log_dir`, each writes to its own log there."""
    cli = [sys.executable, "-m", "cli", "admin"]
    serve = [*cli, "serve", "--host", host, "--port", str(port), "--spec", spec_name, "--backend", backend]
    children = [Child("gateway", [*serve, "--log-level", "warning"], env)]
    children += _fleet(cli, env, workers, autoscale, autoscaler_args)
    for child in children:
        child.log = None if log_dir is None else log_dir / f"{child.name}.log"
    return children


def supervise(
    children: list[Child | StoreWatch], stopping: Callable[[], bool], say: Say | None = None
) -> None:
    """Restart whichever child (or owned store) exits, until `stopping()` says so; `say` tells of it
    (default: a line on stderr; the demo writes to its log, as its console owns the terminal)."""
    say = say or (lambda line: err.print(line, soft_wrap=True))
    while not stopping():
        now = time.monotonic()
        for child in children:
            child.check(now, say)
        time.sleep(0.5)


def stop_children(children: list[Child], timeout: float = 30) -> None:
    """SIGTERM all at once (workers finish nothing new), wait, kill what is left at the deadline."""
    for child in children:
        child.stop()
    deadline = time.monotonic() + timeout
    for child in children:
        child.wait(deadline)


def _fleet(
    cli: list[str], env: dict[str, str], workers: int, autoscale: str, autoscaler_args: tuple[str, ...] = ()
) -> list[Child]:
    """The scoring workers: a fixed set, or the autoscaler daemon that starts and drains them itself
    (draining them when `up` stops, so none outlives the Redis they need)."""
    if autoscale == "local":
        run = [*cli, "autoscaler", "run", "--provider", "local", "--max", str(max(1, workers))]
        return [Child("autoscaler", [*run, "--drain-on-exit", *autoscaler_args], env)]
    return [
        Child(f"worker-{i}", [*cli, "worker", "--name", f"up-{os.getpid()}-{i}"], env) for i in range(workers)
    ]
