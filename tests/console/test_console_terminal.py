"""The organizer console in a real terminal: tmux runs `bbo admin demo` (the whole system, demo teams
submitting through the gateway, then the console), we type keys and read the screen as a person would.

tmux runs on a private socket of its own, so no one else's sessions are touched; the session, the tmux
server and any process the demo started are cleaned up whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cli.test_demo import processes_of
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
GOOD_TEAMS = ("random-search", "evolution", "sobol")

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup)"),
    pytest.mark.system,
]


class Terminal:
    """A detached 200x50 tmux session on a private server."""

    def __init__(self, socket: str, session: str) -> None:
        self.socket, self.session = socket, session

    def tmux(self, *args: str, check: bool = True) -> str:
        # A terminal's size is the terminal's: COLUMNS/LINES set by the test run would pin it to theirs.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "BBO_REDIS_URL")}
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
            env=env,
        )
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session, check=False)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.session, "-l", text)

    def shows(self, *texts: str, timeout: float, what: str) -> str:
        """Wait until every text is on screen at once; fail with the last screen."""
        last = [""]

        def seen() -> str | None:
            last[0] = self.screen()
            return last[0] if all(text in last[0] for text in texts) else None

        try:
            return wait_for(seen, timeout, what, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- last screen ---\n{last[0]}") from None


def stores_of(home: Path) -> list[psutil.Process]:
    """The demo's redis-server (it rewrites its own environment, so it is found by its folder)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if "redis-server" in (proc.info["name"] or "") and Path(proc.cwd()) == home / "redis":
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture()
def terminal(tmp_path: Path) -> Iterator[tuple[Terminal, Path]]:
    """The demo in a tmux session; yields the terminal and the file its exit status lands in."""
    term = Terminal(f"bbo-test-{os.getpid()}", "demo")
    exit_file = tmp_path / "exit-status"
    env = {
        "BBO_STATE_DIR": str(tmp_path),
        "BBO_ALLOW_UNSAFE_SANDBOX": "1",
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
    }
    demo = [sys.executable, "-m", "cli", "admin", "demo", "--backend", "process", "--workers", "2"]
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # Textual draws on stderr, so nothing is redirected. The pane stays after the demo exits (its last
    # words readable) and the exit status lands in a file.
    script = (
        f"cd {shlex.quote(str(ROOT))} && unset BBO_REDIS_URL COLUMNS LINES && "
        f"env {assignments} {shlex.join(demo)}; "
        f"echo $? > {shlex.quote(str(exit_file))}; sleep 600"
    )
    term.tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", term.session, "sh", "-c", script)
    try:
        yield term, exit_file
    finally:
        home = tmp_path / "demo"
        # A demo still running is asked to stop the way a closed terminal asks it (its store flushes and
        # exits with it); whatever is left after that is killed, the store last.
        for proc in processes_of(home):
            with contextlib.suppress(psutil.Error):
                if " admin demo " in " ".join(proc.cmdline()) + " ":
                    proc.terminate()
                    proc.wait(60)
        term.tmux("kill-server", check=False)
        for proc in processes_of(home) + stores_of(home):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_the_console_in_a_real_terminal_shows_scoring_views_and_quits_cleanly(terminal, tmp_path):
    term, exit_file = terminal

    # The console opens on the Submissions view; all four demo submissions arrive and get scored live.
    # (The footer names the views.)
    term.shows(
        "4 submissions", "forgetful", *GOOD_TEAMS, "Submissions", "Fleet", timeout=180, what="the console"
    )
    term.shows("3 scored", "1 failed", timeout=600, what="every submission to end")

    # Filter down to the broken one, open it: the Detail view says why it failed.
    term.keys("/")
    term.type("team:forgetful")
    term.keys("Enter")
    term.shows("1 shown", timeout=30, what="the filter to apply")
    term.keys("Enter")
    screen = term.shows("invalid_submission", "surrogate", timeout=60, what="the failure cause in Detail")
    assert "failed to import" in screen

    term.keys("1")
    term.shows("1 shown", timeout=30, what="the Submissions view again")
    term.keys("Escape")  # clears the filter
    term.shows("4 submissions: 3 scored, 1 failed", *GOOD_TEAMS, timeout=30, what="the filter to clear")

    term.keys("5")
    screen = term.shows("worker(s)", "autoscaler demo", timeout=60, what="the Fleet view")
    assert "autoscaler decisions" in screen

    term.keys("4")
    screen = term.shows("demo / feedback", *GOOD_TEAMS, timeout=60, what="the Leaderboard view")
    board = [line for line in screen.splitlines() if any(team in line for team in GOOD_TEAMS)]
    assert len(board) == 3 and "forgetful" not in screen, screen
    ranks = [re.match(r"\W*([123])\b", line) for line in board]
    assert sorted(int(m.group(1)) for m in ranks if m) == [1, 2, 3], screen

    term.keys("?")
    term.shows("Organizer console", "quit", timeout=30, what="the key help")
    term.keys("Escape")
    wait_for(lambda: "Organizer console" not in term.screen(), 30, "the help to close")

    term.keys("q")
    wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), 90, "the demo to exit")
    after = term.screen()
    assert exit_file.read_text().strip() == "0", after
    assert "stopping" in after and "demo stopped" in after, after
    home = tmp_path / "demo"
    left = [" ".join(p.cmdline()) for p in processes_of(home) + stores_of(home)]
    wait_for(lambda: not processes_of(home) and not stores_of(home), 30, f"these to be gone: {left}")
    assert not (home / "redis" / "redis.sock").exists()
