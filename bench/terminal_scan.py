"""osc_reaching_terminal: how many of a hostile team's terminal escapes reach an organizer's terminal.

A team controls its optimizer's stderr (the organizer-only job log), its exception text (failure
messages), the upload's file name, and more. This drives the real programs an organizer runs, each in a
pseudo-terminal of its own, against a store holding a hostile team's submission, and keeps every byte
they write to the terminal:
- `bbo admin up` (gateway, a worker): the hostile optimizer is uploaded through the gateway under a
  hostile file name and scored by `up`'s worker (it writes escapes on stderr, then crashes with them in
  its exception), so whatever the service prints about it passes through `up`'s output;
- `bbo admin console`: its submissions view, the detail view of the hostile submission, the logs view
  of its job in follow mode (more hostile lines are appended while it follows), the fleet view (a worker
  and an autoscaler decision carrying escapes), while the hostile text is on screen.

The hostile text carries an OSC 52 clipboard write, an OSC 0 title, OSC 8 hyperlinks, a CSI 2J screen
clear, their one-byte C1 forms (0x9B, 0x9D), and Rich/Textual markup (`[/]`, `[link=file:///etc/passwd]`,
`[ @click=app.quit]`). `count_hostile` counts, in the captured bytes, the escape sequences that come from
that text: an OSC (ESC ], or C1 0x9D in any encoding) whose payload holds one of the hostile markers (the
clipboard payload's base64, the title, the link target), and a screen clear (ESC [ 2J, or C1 0x9B 2J)
followed by the clear marker. Textual's own escape sequences carry none of the markers, so they are not
counted; the team's, shown as text (`␛]52;c;...`), carry no introducer, so they are not counted either.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cli.team import Api, ApiFailure, upload

ROOT = Path(__file__).resolve().parent.parent

CLIPBOARD = base64.b64encode(b"bbo-hostile-clipboard").decode()
TITLE = "bbo-hostile-title"
CLEARED = "bbo-hostile-clear"
LINK = "file:///etc/passwd"
MARKERS = (CLIPBOARD, TITLE, LINK)


def hostile(tag: str) -> str:
    """A line of hostile text, starting with `tag` (shown as text, it tells the scan the line is on
    screen)."""
    return (
        f"{tag} \x1b]52;c;{CLIPBOARD}\x07 \x1b]0;{TITLE}\x07 \x1b[2J{CLEARED} \x9b2J{CLEARED} "
        f"\x9d0;{TITLE}\x9c \x1b]8;;{LINK}\x1b\\here\x1b]8;;\x1b\\ "
        f"[/] [link={LINK}]x[/link] [ @click=app.quit]q[/] [$accent]h \\"
    )


# -- the scan -----------------------------------------------------------------------------------------

_OSC = ("\x1b]", "\x9d", "\udc9d")  # ESC ], C1 OSC as a character (UTF-8 C2 9D), C1 as a raw byte
_CSI = ("\x1b[", "\x9b", "\udc9b")
_END = ("\x07", "\x1b\\", "\x9c", "\udc9c")


def count_hostile(data: bytes) -> int:
    """Escape sequences in `data` (what a terminal received) that come from the hostile text."""
    text = data.decode("utf-8", errors="surrogateescape")
    found = 0
    for intro in _OSC:
        for at in _positions(text, intro):
            payload = text[at + len(intro) : at + len(intro) + 400]
            ends = [payload.find(end) for end in _END if end in payload]
            payload = payload[: min(ends)] if ends else payload
            found += any(marker in payload for marker in MARKERS)
    for intro in _CSI:
        for at in _positions(text, intro):
            rest = text[at + len(intro) : at + len(intro) + 40]
            found += rest.startswith("2J") and CLEARED in rest
    return found


def _positions(text: str, needle: str) -> Iterator[int]:
    at = text.find(needle)
    while at != -1:
        yield at
        at = text.find(needle, at + 1)


# -- a program in a pseudo-terminal ----------------------------------------------------------------

# Makes the pty the child's controlling terminal (as a shell's job would have it), then runs the program.
_WITH_TTY = "; ".join(
    [
        "import fcntl, os, sys, termios",
        "fcntl.ioctl(0, termios.TIOCSCTTY, 0)",
        "os.execvp(sys.argv[1], sys.argv[1:])",
    ]
)


class PtyProgram:
    """`argv` on a fresh pseudo-terminal (`rows` x `cols`, its controlling terminal); every byte it writes
    is kept in `output`."""

    def __init__(self, argv: list[str], env: dict[str, str], *, rows: int = 50, cols: int = 200) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WITH_TTY, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        os.close(slave)
        self._data = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    if self.proc.poll() is not None:
                        return  # exited, and nothing is left to read
                    continue
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side is gone
                return
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def mark(self) -> int:
        with self._lock:
            return len(self._data)

    def since(self, mark: int) -> str:
        return self.output[mark:].decode("utf-8", errors="replace")

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_text(self, text: str, timeout: float, what: str, mark: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.since(mark):
            if time.monotonic() > deadline:
                tail = _visible_tail(self.output)
                raise TimeoutError(
                    f"timed out after {timeout:.0f} s waiting for {what}; last output:\n{tail}"
                )
            if self.proc.poll() is not None and text not in self.since(mark):
                tail = _visible_tail(self.output)
                raise RuntimeError(f"exited with {self.proc.returncode} before {what}; last output:\n{tail}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60) -> None:
        """SIGINT to its process group (a Ctrl-C), then SIGKILL to what is left at the deadline."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _visible_tail(data: bytes, chars: int = 3000) -> str:
    from queue_schema.untrusted import safe_text

    return safe_text(data[-chars:].decode("utf-8", errors="replace"), multiline=True)


# -- the hostile team -------------------------------------------------------------------------------

OPTIMIZER = '''"""A hostile team's optimizer: escapes on stderr and in the messages of the exceptions
its suggest and observe raise (bayesmark substitutes a random batch, ignores the observation, and logs
the message), then a wrong batch, which fails the submission."""

import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HOSTILE = {hostile!r}


class Hostile(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.calls = 0
        for i in range(5):
            print(HOSTILE.replace("TAG", f"HOSTILE-STDERR-{{i}}"), file=sys.stderr, flush=True)

    def suggest(self, n_suggestions=1):
        self.calls += 1
        if self.calls <= 2:
            raise RuntimeError(HOSTILE.replace("TAG", "HOSTILE-SUGGEST"))
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions + 1)

    def observe(self, X, y):
        raise RuntimeError(HOSTILE.replace("TAG", "HOSTILE-OBSERVE"))


if __name__ == "__main__":
    experiment_main(Hostile)
'''
HOSTILE_FILENAME = f"optimizer \x1b]0;{TITLE}\x07\x1b[2J{CLEARED}.zip"


def hostile_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("optimizer.py", OPTIMIZER.format(hostile=hostile("TAG")))
    return buffer.getvalue()


def seed_fleet(r: Any, now: float | None = None) -> None:
    """A worker heartbeat and an autoscaler decision whose words carry escapes (a worker's name and a
    provider's error message are not the team's, but they are not ours either)."""
    from queue_schema import keys
    from queue_schema.payloads import Heartbeat
    from queue_schema.records import add_event

    now = time.time() if now is None else now
    worker = hostile("HOSTILE-WORKER")[:120]
    beat = Heartbeat(
        worker=worker,
        host="node-1",
        pid=1,
        state="idle",
        current_job=None,
        backend="process",
        started_at=now,
        ts=now,
    )
    r.hset(keys.heartbeat(worker), mapping={"json": beat.to_json(), "job": ""})
    r.zadd(keys.heartbeats_index(), {worker: now})
    add_event(
        r, "autoscaler", None, fleet="local", add=0, drain=[], held=True, reason=hostile("HOSTILE-REASON")
    )


def _upload(server: str, token: str, data: bytes) -> dict[str, Any]:
    """Through the team CLI's own client, as `bbo submit` does; under the hostile file name if the
    gateway takes it."""
    api = Api(server, token, timeout=60, exit_on_failure=False)
    try:
        return upload(api, data, HOSTILE_FILENAME)
    except ApiFailure:
        try:
            return upload(api, data, "hostile.zip")
        except ApiFailure as exc:
            raise RuntimeError(f"the gateway refused the hostile upload: {exc}") from None


# -- the measurement --------------------------------------------------------------------------------


def measure(
    redis_url: str,
    *,
    backend: str = "process",
    timeout: float = 300,
    log: Callable[[str], None] = lambda line: None,
    outputs: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Run `up` and the console against the store at `redis_url` (a state folder is BBO_STATE_DIR's) and
    return the hostile sequences each passed to its terminal, and how many bytes each wrote; `outputs`,
    when given, receives those bytes ("up", "console")."""
    from competition import teams
    from queue_schema.connection import connect
    from queue_schema.records import load_submission
    from queue_schema.states import TERMINAL_STATES
    from runtime.supervisor import free_port

    r = connect(redis_url)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update({"BBO_REDIS_URL": redis_url, "TERM": "xterm-256color", "COLORTERM": "truecolor"})
    if backend == "process":
        env["BBO_ALLOW_UNSAFE_SANDBOX"] = "1"
    port = free_port()
    cli = [sys.executable, "-m", "cli", "admin"]
    console_error = None
    up = PtyProgram([*cli, "up", "--workers", "1", "--port", str(port), "--backend", backend], env)
    console = None
    try:
        up.wait_text("Ctrl-C to stop", 120, "bbo admin up to start")
        server = f"http://127.0.0.1:{port}"
        _wait_healthy(server, 60)
        name = f"mallory{secrets.token_hex(3)}"  # a team of its own on any store, run after run
        token = teams.add_team(r, name)
        sid = _upload(server, token, hostile_zip())["id"]
        log(f"uploaded {sid}; waiting for up's worker to score it")
        deadline = time.monotonic() + timeout
        while (sub := load_submission(r, sid)).state not in TERMINAL_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sid} still {sub.state.value} after {timeout:.0f} s")
            time.sleep(0.5)
        log(f"{sid} {sub.state.value}; opening the console")
        seed_fleet(r)

        console = PtyProgram([*cli, "console", "--refresh", "0.5"], env)
        try:
            _drive_console(console, r, name, sid, sub.score_version)
        except (TimeoutError, RuntimeError) as exc:  # counted all the same: what reached the terminal
            console_error = str(exc).splitlines()[0]
            log(f"console: {console_error}")
    finally:
        if console is not None:
            console.stop()
        up.stop()
    if outputs is not None:
        outputs.update(up=up.output, console=console.output if console else b"")
    figures = {
        "console": count_hostile(console.output) if console else None,
        "up": count_hostile(up.output),
        "console_bytes": len(console.output) if console else 0,
        "up_bytes": len(up.output),
        "up_exit": up.proc.returncode,
        # The console did not reach every view (it crashed, or showed a view too late): its output so
        # far is counted all the same.
        "console_error": console_error,
    }
    log(f"hostile sequences: console {figures['console']}, up {figures['up']}")
    return figures


def _drive_console(console: PtyProgram, r: Any, name: str, sid: str, version: int) -> None:
    """Every view with the hostile text on screen: submissions, detail, logs (following new lines),
    fleet; then quit."""
    from queue_schema.records import append_job_log

    console.wait_text("submissions:", 90, "the console's submissions view")
    console.wait_text(name[:12], 30, "the hostile team's row")
    mark = console.mark()
    console.send("2")
    console.wait_text(f"team {name}", 60, "the hostile submission in the detail view", mark)
    # The logs view opens the first job; the optimizer failed in whichever ran first (the longest).
    jobs = sorted(r.smembers(_jobs_key(sid, version)))
    job = next(j for j in jobs if r.exists(_log_key(j)))
    mark = console.mark()
    console.send("3")
    console.wait_text("job(s)", 60, "the logs view", mark)
    if jobs.index(job):
        console.send("\x1b[Z")  # shift-tab: from the log to the job list
        console.send("\x1b[B" * jobs.index(job) + "\r")
    console.wait_text("HOSTILE-STDERR-4", 60, "the hostile job log in the logs view", mark)
    mark = console.mark()
    append_job_log(r, job, [hostile(f"HOSTILE-FOLLOW-{i}") for i in range(20)])
    console.wait_text("HOSTILE-FOLLOW-19", 60, "the followed hostile lines", mark)
    mark = console.mark()
    console.send("5")
    console.wait_text("HOSTILE-WORKER", 60, "the hostile worker in the fleet view", mark)
    mark = console.mark()
    console.send("1")
    console.wait_text("submissions:", 30, "the submissions view again", mark)
    time.sleep(1.0)  # a few refreshes with it all on screen
    console.send("q")
    console.proc.wait(30)


def osc_reaching_terminal(redis_url: str, *, backend: str = "process", timeout: float = 300) -> int:
    """Hostile escape sequences that reached the terminal of `bbo admin up` and of the console (0 is the
    target); see `measure`."""
    figures = measure(redis_url, backend=backend, timeout=timeout)
    return (figures["console"] or 0) + figures["up"]


def _jobs_key(sid: str, version: int) -> str:
    from queue_schema import keys

    return keys.submission_jobs(sid, version)


def _log_key(job: str) -> str:
    from queue_schema import keys

    return keys.job_log(job)


def _wait_healthy(server: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the gateway at {server} did not come up")
