"""The harness's end of the protocol: one sandboxed optimizer process, driven call by call with deadlines.

Two reader threads drain the child's stdout (protocol replies) and stderr (the organizer log), so output
can neither stall the worker nor fill its memory:

- stdout is a bounded channel. At most one reply is pending per sandbox: from its start the process
  expects exactly one line, the hello; each call then expects exactly one line, no longer than that call
  can need (a suggest reply: from n and the declared space, see queue_schema/suggestions.py; any other
  reply: protocol.CONTROL_REPLY_BYTES). A byte that arrives while no call is waiting (unsolicited
  output, a second line before the first was taken, the flood of a pre-started sandbox no one has called
  yet) or a line over the cap is a protocol violation: the team's, fatal. The reader kills the sandbox at
  once and the waiting call, or the next one, raises ProtocolViolation. The reader holds at most one
  reply plus one read chunk, whatever the optimizer writes.
- stderr is kept up to a cap per study (`stderr_cap_bytes`, the spec's logs.study_kb), each line made
  safe to show; beyond the cap lines are counted, not kept.

Replies are decoded by `protocol.decode_reply` into typed messages: a malformed one is a
ProtocolViolation too, never another exception.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from queue_schema import protocol
from queue_schema.suggestions import suggest_reply_cap
from queue_schema.untrusted import safe_text
from workers.errors import CallTimeout, OptimizerDied, ProtocolViolation  # noqa: F401 - re-exported for callers

LogSink = Callable[[str], None]
STDERR_CAP_BYTES = 256 * 1024  # per study, unless the spec says otherwise; beyond it lines are counted
READ_CHUNK = 64 * 1024  # the stdout reader's one read: the most it holds beyond the reply it is assembling
STDERR_LINE = 8192


@dataclass
class Reply:
    """One typed reply and how long the call took."""

    message: protocol.ReplyMessage
    op: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.message.ok

    @property
    def failure(self) -> protocol.Failed | None:
        return self.message if isinstance(self.message, protocol.Failed) else None


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
    # Whether the sandbox got as far as loading the submission (its start marker); None: cannot tell.
    started: Callable[[], bool] | None = None
    # CPU seconds the whole sandbox used so far (its cgroup's counter); None: the process tree's is used.
    cpu_seconds: Callable[[], float | None] | None = None
    # A warm sandbox's (its host started with --warm, before there was a submission): put the submission
    # (a folder the backend has prepared) where the host will load it; False when this sandbox cannot
    # take it (its pre-imported modules would shadow the submission's bundled packages).
    fill: Callable[[Path], bool] | None = None


@dataclass
class _Expected:
    op: str
    cap: int


class OptimizerProcess:
    def __init__(
        self, launch: LaunchSpec, log: LogSink | None = None, stderr_cap_bytes: int = STDERR_CAP_BYTES
    ) -> None:
        self.launch = launch
        self._log = log or (lambda line: None)
        self.stderr_cap_bytes = stderr_cap_bytes
        self._stderr_bytes = 0
        self._stderr_dropped = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.killed = False
        self._kill_lock = threading.Lock()
        # The reply channel: what the reader may accept next, what it accepted, and how it ended.
        self._cond = threading.Condition()
        self._expected: _Expected | None = _Expected(protocol.OP_HELLO, protocol.CONTROL_REPLY_BYTES)
        self._line: bytes | None = None
        self._eof = False
        self._closing = False
        self._violation: str | None = None
        self._api_config: dict[str, Any] | None = None
        # The sandbox's CPU counter when its hello arrived: what it burns from then on outside calls (a
        # pre-started sandbox idling while the previous study runs included) counts against its budget.
        self.cpu_at_hello: float | None = None
        self._hello_arrived = False

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

    def load(self, submission_dir: Path, log: LogSink | None = None) -> bool:
        """A warm sandbox takes its submission: the backend puts it in place, the host is told to load it,
        and the wait for hello starts now (not when the sandbox started, perhaps minutes ago). False,
        with the sandbox left as it was, when it cannot take this one; an error (it died meanwhile) raises.
        `log`: where its organizer log goes from now on."""
        if self.launch.fill is None:
            raise ValueError("not a warm sandbox")
        if not self.launch.fill(Path(submission_dir)):
            return False
        if log is not None:
            self._log = log
        self.started_at = time.monotonic()
        self._send({"op": protocol.OP_LOAD})
        return True

    def kill(self) -> None:
        """Kill the sandbox (idempotent; safe from any thread: the reader, a stop watcher, the caller)."""
        if self.proc is None:
            return
        with self._kill_lock:
            if self.proc.poll() is not None and self.launch.cleanup is None:
                return  # ended and cleaned up already (a closed study's sandbox, at the job's end)
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
        with self._cond:
            self._closing = True  # whatever it says from now on is read and dropped
            self._cond.notify_all()
        if self.proc.poll() is None and not self.killed:
            with contextlib.suppress(Exception):
                self._send({"op": protocol.OP_CLOSE})
                self.proc.wait(timeout)
        self.kill()

    def close_later(self) -> None:
        """close() on a thread of its own; kill() (the job's end) still waits for the process to end."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        threading.Thread(target=self.close, daemon=True).start()

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

    def cpu_seconds(self) -> float | None:
        """CPU seconds the sandbox has used so far: the backend's counter (a container's cgroup), else the
        sum over the process tree it started (None once it is gone)."""
        if self.launch.cpu_seconds is not None:
            with contextlib.suppress(Exception):
                return self.launch.cpu_seconds()
            return None
        if self.proc is None or self.proc.poll() is not None:
            return None
        return tree_cpu_seconds(self.proc.pid)

    @property
    def violation(self) -> str | None:
        """Why the reader killed the sandbox, if it did."""
        return self._violation

    # -- calls ------------------------------------------------------------------------------------
    def wait_hello(self, timeout: float) -> Reply:
        remaining = max(0.0, timeout - (time.monotonic() - self.started_at))
        return self._receive(protocol.OP_HELLO, remaining, time.monotonic())

    def call(self, message: dict[str, Any], timeout: float) -> Reply:
        op = message["op"]
        started = time.monotonic()
        if op == protocol.OP_INIT:
            self._api_config = message.get("api_config")
        cap = (
            suggest_reply_cap(self._api_config or {}, int(message.get("n", 1)))
            if op == protocol.OP_SUGGEST
            else protocol.CONTROL_REPLY_BYTES
        )
        with self._cond:
            if self._violation is not None:
                raise ProtocolViolation(self._violation)
            # Expected before it is asked for: a fast reply must not find the channel closed.
            self._expected, self._line = _Expected(op, cap), None
        try:
            if self.killed:
                # Killed from outside (a stop): its pipes are closed, and a ValueError here would look
                # like an optimizer error to bayesmark, which would go on with random suggestions.
                raise BrokenPipeError
            self._send(message)
        except (BrokenPipeError, OSError, ValueError):
            self._wait_exit()
            with self._cond:
                if self._violation is not None:
                    raise ProtocolViolation(self._violation) from None
            raise OptimizerDied(self.returncode, op) from None
        return self._receive(op, timeout, started)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(message))
        self.proc.stdin.flush()

    def _receive(self, op: str, timeout: float, started: float) -> Reply:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while self._violation is None and self._line is None and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            violation, line, eof = self._violation, self._line, self._eof
            self._line = None
        seconds = time.monotonic() - started
        if violation is not None:
            raise ProtocolViolation(violation)
        if line is None:
            if eof:
                self._wait_exit()
                with self._cond:  # the reader may have found a violation just before the end
                    if self._violation is not None:
                        raise ProtocolViolation(self._violation)
                raise OptimizerDied(self.returncode, op)
            self.kill()
            raise CallTimeout(f"{op} took longer than {timeout:.1f} s")
        try:
            message = protocol.decode_reply(line, op, max_bytes=len(line))
        except protocol.ProtocolError as exc:
            self._violate(f"during {op}: {exc}")
            raise ProtocolViolation(self._violation or str(exc)) from None
        return Reply(message, op, seconds)

    def _violate(self, why: str) -> None:
        """The team broke the protocol: remember why (the first reason stands) and kill the sandbox now."""
        self._record_violation(why)
        self.kill()

    def _record_violation(self, why: str) -> None:
        with self._cond:
            if self._violation is None:
                self._violation = safe_text(why, limit=300)
            self._expected = None
            self._cond.notify_all()

    def _wait_exit(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    # -- readers ----------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        pending = bytearray()  # the reply being assembled: never more than its cap plus one chunk
        try:
            while True:
                chunk = stream.read1(READ_CHUNK)
                if not chunk:
                    break
                why = self._accept(pending, chunk)
                if self._hello_arrived and self.cpu_at_hello is None:
                    self.cpu_at_hello = self.cpu_seconds()
                if why is not None:
                    self._record_violation(why)
                    pending.clear()
                    # Killed from another thread while this one drains and drops what is still coming:
                    # a container runtime blocked writing to us would hold the kill up (docker did, 50 s).
                    threading.Thread(target=self.kill, daemon=True).start()
                    while stream.read1(READ_CHUNK):
                        pass
                    break
        except (OSError, ValueError):
            pass
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _accept(self, pending: bytearray, chunk: bytes) -> str | None:
        """Take `chunk` into the channel; a reason when it breaks the protocol."""
        with self._cond:
            if self._closing:
                return None  # the study is over: read and dropped until the process is gone
            pending += chunk
            while pending:
                expected = self._expected
                if expected is None:
                    return f"unsolicited output: {len(pending)} byte(s) while no call was waiting for a reply"
                end = pending.find(b"\n")
                if end < 0:
                    if len(pending) > expected.cap:
                        return f"during {expected.op}: a reply longer than {expected.cap} bytes"
                    return None
                if end + 1 > expected.cap:
                    return f"during {expected.op}: a reply of {end + 1} bytes (at most {expected.cap})"
                self._line = bytes(pending[: end + 1])
                del pending[: end + 1]
                self._hello_arrived = self._hello_arrived or expected.op == protocol.OP_HELLO
                self._expected = None  # exactly one line per call
                self._cond.notify_all()
        return None

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        stream = self.proc.stderr
        try:
            while True:
                line = stream.readline(STDERR_LINE)
                if not line:
                    return
                if self._stderr_bytes >= self.stderr_cap_bytes:
                    self._stderr_dropped += len(line)
                    continue
                self._stderr_bytes += len(line)
                self._log(safe_text(line.rstrip(b"\n")))
        except (OSError, ValueError):
            return


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` and every live process below it, each with the children it
    reaped (a reaped process is counted by its parent's children times, a live one by its own)."""
    try:
        root = psutil.Process(pid)
        below = _descendants(pid)
        processes = [root, *(root.children(recursive=True) if below is None else _existing(below))]
    except psutil.Error:
        return None
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _descendants(pid: int) -> list[int] | None:
    """The pids below `pid`, from the kernel's per-thread children lists (/proc/PID/task/TID/children):
    a few small reads for a sandbox's tree, where psutil's children() reads every process's stat file
    on the machine (1.4 ms a call here, twice per protocol call). None where the kernel has no such list."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # gone meanwhile
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children") as listing:
                    children = [int(child) for child in listing.read().split()]
            except FileNotFoundError:
                if not os.path.exists(f"/proc/{parent}/task/{thread}"):
                    continue  # the thread ended meanwhile
                return None  # no children lists in this kernel (CONFIG_PROC_CHILDREN)
            except OSError:
                continue
            found += children
            pending += children
    return found


def _existing(pids: list[int]) -> list[psutil.Process]:
    processes = []
    for child in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(child))
    return processes
