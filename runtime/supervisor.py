"""Named child processes, supervised: `bbo admin up` and the demo run the service with them, the benchmarks
and the tests their stacks of gateway and workers.

Each child runs in a session (so a process group) of its own: a Ctrl-C at the terminal reaches the
supervisor alone, which stops the children in order (a worker's work horse never sees it), and whatever a
child started (a work horse, a sandbox, the gateway's uvicorn processes) can be killed with it.

A child's output (stdout and stderr, one pipe) never reaches the terminal or a log file as it is: a relay
thread passes each line through `safe_line` (controls made visible, URL credentials redacted), since
worker and gateway lines carry exception text, request paths and team names. A child's stdout never
becomes ours: it goes to our stderr (or its log file), so a command's stdout stays its JSON.

`supervise` restarts a child (or an owned embedded Redis, `StoreWatch`) when it exits, with a back-off so
that a crash loop does not spin, and says so; `stop_children` stops them all: SIGTERM to each at once
(a worker finishes its job and takes nothing new, the gateway closes), a grace period, then SIGKILL to
the process group of each one still there.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from queue_schema.connection import RedisUnavailable
from queue_schema.untrusted import markup_text, safe_line
from runtime.redis_server import EmbeddedRedis

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
RELAY_LINE_BYTES = 16384  # a longer line is relayed in pieces
Say = Callable[[str], None]  # takes a line of Rich markup (untrusted parts escaped)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    """One named process. `log`: its output goes there (appended; children may share one) instead of our
    stderr. `restart`: `supervise` starts it again when it exits. `cpus`: it, and everything it starts,
    runs on these cores only."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path | None = None
    cwd: Path | None = None
    restart: bool = True
    cpus: set[int] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    restarts: int = 0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)  # exit statuses seen by `check`, oldest first
    relay_thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Child:
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        cpus = self.cpus
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.relay_thread = threading.Thread(
            target=relay, args=(self.proc.stdout, self.log), name=f"relay-{self.name}", daemon=True
        )
        self.relay_thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (None while it runs or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def check(self, now: float, say: Say) -> None:
        """Note an exit (and say it); restart after one, backing off when it keeps dying."""
        if self.alive:
            return
        if self.proc is not None and not self.restart:
            if self.next_start != math.inf:  # not told yet; it stays down
                self.exits.append(self.proc.returncode)
                say(f"[yellow]{self.name} exited with {self.proc.returncode}[/]")
                self.next_start = math.inf
            return
        if self.proc is not None:
            code = self.proc.returncode
            self.exits.append(code)
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            say(f"[yellow]{self.name} exited with {code}; restarting in {delay} s[/]")
            self.proc, self.restarts, self.next_start = None, self.restarts + 1, now + delay
        if now >= self.next_start:
            self.start()

    def send_signal(self, signum: int) -> None:
        """`signum` to the child's main process only (not its group): SIGKILL here is a crash."""
        if self.alive:
            self.proc.send_signal(signum)

    def stop(self) -> None:
        """Ask it to stop (SIGTERM: a worker's warm shutdown, the gateway's graceful one)."""
        self.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> int | None:
        """Its exit status; at `deadline` (a monotonic time) SIGKILL to its whole process group first."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its group: the leader is still unreaped
            self.proc.kill()
            self.proc.wait()
        if self.relay_thread is not None:
            self.relay_thread.join(5)  # its last lines (a grandchild may still hold the pipe: not forever)
        return self.proc.returncode


@dataclass
class StoreWatch:
    """An owned embedded Redis, restarted like a child when it exits (a crash, or its AOF write failing
    on a full disk), so that the service comes back by itself once the cause is gone: the AOF replays,
    and the gateway and workers reconnect."""

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
                f"{markup_text(self.server.directory / 'redis.log')}); restarting in {delay} s[/]"
            )
            self.restarts, self.next_start = self.restarts + 1, now + delay
        if now < self.next_start:
            return
        self.next_start = None
        try:
            self.server.start()
            say("[green]redis-server is back[/]")
        except RedisUnavailable as exc:  # exited again at once (the disk still full): back off more
            say(f"[yellow]{markup_text(exc)}[/]")


def supervise(watched: Sequence[Child | StoreWatch], stopping: Callable[[], bool], say: Say) -> None:
    """Check every child (or owned store) twice a second, restarting whichever exits, until `stopping()`
    says so; `say` tells of it."""
    while not stopping():
        now = time.monotonic()
        for item in watched:
            item.check(now, say)
        time.sleep(0.5)


def stop_children(children: Sequence[Child], timeout: float = 30) -> dict[str, int | None]:
    """SIGTERM all at once, wait up to `timeout` seconds in all, kill the process group of each one left
    at the deadline; their exit statuses by name."""
    for child in children:
        child.stop()
    deadline = time.monotonic() + timeout
    return {child.name: child.wait(deadline) for child in children}
