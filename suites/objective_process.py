"""The worker's end of an objective process (objective_server.py): started on first use, called one request
at a time with a deadline, restarted after it dies, kept across studies.

A reply is read with poll() against the call's deadline, at most wire.MAX_LINE_BYTES a line; requests
are written the same way, so a hung server can block neither direction. Outcomes of a call:
- a reply: its fields;
- the objective's own evaluate raised: ObjectiveRaised (bayesmark scores the point inf, as for its own
  models);
- anything else (the process died, went past the deadline, broke the protocol, refused our request, could
  not load its objective, raised outside evaluate): ObjectiveFault, the platform's failure. A process past
  its deadline or off the protocol is killed; whatever failed, the next call starts a fresh one.

Its stderr is the organizer's to read: each line goes to `log`, and the last few are quoted in a fault.

`shared(key, make)` keeps one process per key (a suite and its environment) in this worker process and
closes them all at exit. A forked child (an RQ work horse) never uses its parent's processes: it forgets
them and starts its own; a process whose worker dies sees end of input, or its parent gone, and exits.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from suites import wire
from suites.errors import ObjectiveFault, ObjectiveRaised

Log = Callable[[str], None]
DEFAULT_START_TIMEOUT_S = 60.0  # interpreter, numpy and cocoex from a cold disk; the hello answers then
READ_CHUNK = 64 * 1024
STDERR_LINE = 2000
STDERR_TAIL = 5
EXIT_GRACE_S = 2.0  # after end of input, before the kill (none after a timeout or a protocol breach)


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Timeout(Exception):
    pass


class _Ended(Exception):
    pass


class ObjectiveProcess:
    """One objective server, started lazily. `startup` holds the requests (op, fields) every fresh process
    gets after its hello, such as the python backend's `load`s."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        call_timeout_s: float,
        *,
        startup: Iterable[tuple[str, dict[str, Any]]] = (),
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        label: str = "objective process",
        log: Log = _stderr_log,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.call_timeout_s = call_timeout_s
        self.startup = list(startup)
        self.start_timeout_s = start_timeout_s
        self.label = label
        self.log = log
        self.hello: dict[str, Any] = {}  # the running process's hello reply
        self.starts = 0
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._next_id = 0
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._stderr_thread: threading.Thread | None = None

    # -- the calls ---------------------------------------------------------------------------------

    def call(self, op: str, *, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        """The reply's fields; ObjectiveRaised or ObjectiveFault (see the module's docstring)."""
        if self._owner != os.getpid():
            self.forget()
        with self._lock:
            if self._proc is None or _exited(self._proc):
                self._start()
            return self._exchange(op, fields, self.call_timeout_s if timeout_s is None else timeout_s)

    def _exchange(self, op: str, fields: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None
        self._next_id += 1
        id_ = self._next_id
        try:
            line = wire.encode(wire.request(id_, op, **fields))
        except wire.WireError as exc:
            raise ObjectiveFault(f"{self.label}: cannot send {op}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        try:
            self._nothing_unsolicited()
            self._write(line, deadline)
            reply = wire.check_reply(wire.decode(self._read_line(deadline)), id_)
            if self._buffer:
                raise wire.WireError("more than one line in reply")
        except _Timeout:
            self._stop(grace_s=0.0)
            raise ObjectiveFault(f"{self.label}: {op} took longer than {timeout_s:g} s; killed") from None
        except _Ended:
            code = self._stop()  # it is ending by itself: the grace gets its own exit code
            raise ObjectiveFault(f"{self.label}: exited with code {code} during {op}{self._tail()}") from None
        except wire.WireError as exc:
            self._stop(grace_s=0.0)
            raise ObjectiveFault(f"{self.label}: protocol broken during {op}: {exc}; killed") from None
        if reply["ok"]:
            return reply
        if reply["kind"] == wire.RAISED and op == wire.EVALUATE:
            raise ObjectiveRaised(reply["error"])
        raise ObjectiveFault(f"{self.label}: {op} failed ({reply['kind']}): {reply['error']}")

    # -- the pipes ---------------------------------------------------------------------------------

    def _readable(self, timeout: float) -> bool:
        assert self._proc is not None and self._proc.stdout is not None
        return _ready(self._proc.stdout.fileno(), select.POLLIN, timeout)

    def _nothing_unsolicited(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        if not self._buffer and not self._readable(0):
            return
        if not self._buffer and not os.read(self._proc.stdout.fileno(), READ_CHUNK):
            raise _Ended  # it died since the last call (its end of output is what was readable)
        raise wire.WireError("output arrived while no request was waiting")

    def _write(self, data: bytes, deadline: float) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if not _ready(fd, select.POLLOUT, remaining):
                continue
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise _Ended from None
            view = view[written:]

    def _read_line(self, deadline: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
                if end + 1 > wire.MAX_LINE_BYTES:
                    raise wire.WireError(f"reply line over the {wire.MAX_LINE_BYTES}-byte limit")
                return line
            if len(self._buffer) >= wire.MAX_LINE_BYTES:
                raise wire.WireError(f"reply line over the {wire.MAX_LINE_BYTES}-byte limit")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if not self._readable(remaining):
                continue
            chunk = os.read(fd, min(READ_CHUNK, wire.MAX_LINE_BYTES - len(self._buffer)))
            if not chunk:
                raise _Ended
            self._buffer += chunk

    def _drain_stderr(self, fd: int) -> None:
        # os.read on the descriptor, not the pipe's buffered reader: a reader's lock held by this thread
        # when an RQ horse forks would stay held in the child, and `forget` there closes that reader.
        pending = b""
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""
            if chunk:
                pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            if len(pending) >= STDERR_LINE or (not chunk and pending):
                lines.append(pending)
                pending = b""
            for raw in lines:
                line = raw[:STDERR_LINE].decode("utf-8", "replace").rstrip("\r")
                if line.strip():
                    self._stderr_tail.append(line)
                    self.log(f"[{self.label}] {line}")
            if not chunk:
                return

    def _tail(self) -> str:
        tail = " | ".join(line.strip() for line in self._stderr_tail)
        return f"; stderr: {wire.one_line(tail, 400)}" if tail else ""

    # -- the process -------------------------------------------------------------------------------

    def _start(self) -> None:
        self._stop()
        self._buffer = b""
        self._stderr_tail.clear()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                close_fds=True,
                start_new_session=True,  # its own group: a kill reaches whatever the objective started
            )
        except OSError as exc:
            self._proc = None
            raise ObjectiveFault(f"{self.label}: cannot start {self.argv[0]}: {exc}") from None
        self.starts += 1
        assert self._proc.stdin is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        assert self._proc.stderr is not None
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr,
            args=(self._proc.stderr.fileno(),),
            name=f"{self.label} stderr",
            daemon=True,
        )
        self._stderr_thread.start()
        try:
            self.hello = self._exchange(wire.HELLO, {}, self.start_timeout_s)
            if self.hello.get("protocol") != wire.PROTOCOL:
                raise ObjectiveFault(f"{self.label}: speaks protocol {self.hello.get('protocol')!r}")
            for op, fields in self.startup:
                self._exchange(op, fields, self.start_timeout_s)
        except ObjectiveFault:
            self._stop(grace_s=0.0)  # a half-started process: the next call starts again from nothing
            raise

    def _stop(self, grace_s: float = EXIT_GRACE_S) -> int | None:
        """Ends the process (and its group) if there is one, after `grace_s` to exit by itself at the end
        of its input; its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # a broken pipe: it is gone already
                proc.stdin.close()  # end of input: a healthy server exits by itself
        if proc.returncode is None:
            deadline = time.monotonic() + grace_s
            while not _exited(proc) and time.monotonic() < deadline:
                time.sleep(0.01)
            # Not reaped yet: its id cannot be reused, so the group kill hits only what it started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        thread, self._stderr_thread = self._stderr_thread, None
        if thread is not None:
            # Killed, its group can no longer hold the pipe open: the drain ends at once. Should anything
            # still hold it, the descriptor stays open rather than be closed under the thread's read.
            thread.join(timeout=1.0)
        if proc.stderr is not None and (thread is None or not thread.is_alive()):
            proc.stderr.close()
        workdir = self.hello.get("workdir")
        if isinstance(workdir, str) and os.path.basename(workdir).startswith("bbo-objective-"):
            shutil.rmtree(workdir, ignore_errors=True)  # the server removes it itself, unless killed
        self.hello = {}
        return code

    def close(self) -> None:
        if self._owner != os.getpid():
            self.forget()
            return
        with self._lock:
            self._stop()

    def forget(self) -> None:
        """In a forked child: let go of the parent's process (its pipes' copies here) without ending it."""
        proc, self._proc = self._proc, None
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._buffer = b""
        self.hello = {}
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and not _exited(self._proc) else None


def _ready(fd: int, event: int, timeout_s: float) -> bool:
    """Whether `fd` is ready for `event` (or at its end) within the time; poll, as a worker may hold more
    than select's 1024 descriptors."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(0, math.ceil(timeout_s * 1000))))


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether it has ended, without reaping it (so its id stays its own until `_stop` kills the group)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


# -- one per suite and environment, per worker process ---------------------------------------------

_shared: dict[Hashable, ObjectiveProcess] = {}
_shared_lock = threading.Lock()


def shared(key: Hashable, make: Callable[[], ObjectiveProcess]) -> ObjectiveProcess:
    """The process kept under `key`, made by `make` the first time."""
    with _shared_lock:
        process = _shared.get(key)
        if process is None:
            process = _shared[key] = make()
        return process


def close_all() -> None:
    with _shared_lock:
        processes = list(_shared.values())
        _shared.clear()
    for process in processes:
        process.close()


def _forget_in_child() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()
    for process in _shared.values():
        process.forget()
    _shared.clear()


atexit.register(close_all)
os.register_at_fork(after_in_child=_forget_in_child)
