"""The harness's end of the protocol: one sandboxed optimizer process, driven call by call with deadlines.

Two reader threads drain the child's stdout (protocol replies, each line length-capped) and stderr (the
organizer log, byte-capped), so a flood of output can neither stall the worker nor fill its memory.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from queue_schema import protocol

LogSink = Callable[[str], None]
STDERR_CAP_BYTES = 256 * 1024  # per study; beyond it lines are counted, not kept


class CallTimeout(Exception):
    """The optimizer did not answer within the call's deadline; it has been killed."""


class OptimizerDied(Exception):
    def __init__(self, returncode: int | None, during: str) -> None:
        self.returncode = returncode
        self.during = during
        super().__init__(f"optimizer process exited (code {returncode}) during {during}")


class ProtocolViolation(Exception):
    pass


@dataclass
class Reply:
    ok: bool
    op: str
    body: dict[str, Any]
    seconds: float

    @property
    def error(self) -> dict[str, Any]:
        return self.body.get("error") or {}


@dataclass
class LaunchSpec:
    """What a sandbox backend produces: how to start the host for one study, and how to clean up."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    cleanup: Callable[[], None] | None = None
    kill: Callable[[], None] | None = None  # backend-specific kill (a container); default kills the group
    preexec: Callable[[], None] | None = None  # runs in the child before exec (rlimits)
    # Why the sandbox ended, when the backend knows better than an exit code (docker's OOMKilled, a
    # cgroup's OOM counter): "resource_limit" or None.
    exit_cause: Callable[[int | None], str | None] | None = None
    pass_fds: tuple[int, ...] = ()  # descriptors the child keeps (a backend's private start marker pipe)


class OptimizerProcess:
    def __init__(self, launch: LaunchSpec, log: LogSink | None = None) -> None:
        self.launch = launch
        self._log = log or (lambda line: None)
        self._replies: queue.Queue[bytes | None] = queue.Queue()
        self._stderr_bytes = 0
        self._stderr_dropped = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.killed = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> OptimizerProcess:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.launch.env,
            cwd=self.launch.cwd,
            start_new_session=True,  # its own process group, so kill() reaches grandchildren too
            close_fds=True,
            preexec_fn=self.launch.preexec,
            pass_fds=self.launch.pass_fds,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        return self

    def kill(self) -> None:
        if self.proc is None:
            return
        self.killed = True
        if self.launch.kill is not None:
            with contextlib.suppress(Exception):
                self.launch.kill()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._finish()

    def close(self, timeout: float = 5.0) -> None:
        """Ask politely, then kill: a study's sandbox never outlives its study."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._send({"op": protocol.OP_CLOSE})
                self.proc.wait(timeout)
        self.kill()

    def _finish(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr) if self.proc else ():
            with contextlib.suppress(Exception):
                stream.close()
        if self.launch.cleanup is not None:
            cleanup, self.launch.cleanup = self.launch.cleanup, None
            with contextlib.suppress(Exception):
                cleanup()
        if self._stderr_dropped:
            self._log(f"[harness] optimizer stderr truncated: {self._stderr_dropped} bytes dropped")
            self._stderr_dropped = 0

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    # -- calls ------------------------------------------------------------------------------------
    def wait_hello(self, timeout: float) -> Reply:
        remaining = max(0.0, timeout - (time.monotonic() - self.started_at))
        return self._receive(protocol.OP_HELLO, remaining, time.monotonic())

    def call(self, message: dict[str, Any], timeout: float) -> Reply:
        started = time.monotonic()
        try:
            if self.killed:
                # Killed from outside (a stop): its pipes are closed, and a ValueError here would look
                # like an optimizer error to bayesmark, which would go on with random suggestions.
                raise BrokenPipeError
            self._send(message)
        except (BrokenPipeError, OSError, ValueError):
            self._wait_exit()
            raise OptimizerDied(self.returncode, message["op"]) from None
        return self._receive(message["op"], timeout, started)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(message))
        self.proc.stdin.flush()

    def _receive(self, op: str, timeout: float, started: float) -> Reply:
        try:
            line = self._replies.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            self.kill()
            raise CallTimeout(f"{op} took longer than {timeout:.1f} s") from None
        seconds = time.monotonic() - started
        if line is None:
            self._wait_exit()
            raise OptimizerDied(self.returncode, op)
        try:
            body = protocol.decode(line)
        except protocol.ProtocolError as exc:
            self.kill()
            raise ProtocolViolation(f"during {op}: {exc}") from None
        if body.get("op") not in (op, "?"):
            self.kill()
            raise ProtocolViolation(f"expected a reply to {op}, got {str(body)[:200]}")
        return Reply(bool(body.get("ok")), op, body, seconds)

    def _wait_exit(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    # -- readers ----------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        try:
            while True:
                line = stream.readline(protocol.MAX_LINE_BYTES + 1)
                if not line:
                    break
                if not line.endswith(b"\n") and len(line) > protocol.MAX_LINE_BYTES:
                    self._replies.put(b"<oversized protocol line>")
                    break
                self._replies.put(line)
        except (OSError, ValueError):
            pass
        self._replies.put(None)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        stream = self.proc.stderr
        try:
            while True:
                line = stream.readline(8192)
                if not line:
                    return
                if self._stderr_bytes >= STDERR_CAP_BYTES:
                    self._stderr_dropped += len(line)
                    continue
                self._stderr_bytes += len(line)
                self._log(line.decode("utf-8", errors="replace").rstrip("\n"))
        except (OSError, ValueError):
            return
