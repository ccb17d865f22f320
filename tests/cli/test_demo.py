"""`bbo admin demo --headless --json`: the whole system, demo teams submitting through the gateway, to the
end; the good optimizers are ranked, the broken one failed with its cause, and nothing is left running.
While it runs, its web pages answer and every demo team signs in there with the token from the demo's
tokens file (0600, in its state folder; the tokens themselves are never printed)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
GOOD_TEAMS = {"random-search", "evolution", "sobol"}


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def demo_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BBO_REDIS_URL"}
    return env | {"BBO_STATE_DIR": str(state), "BBO_ALLOW_UNSAFE_SANDBOX": "1"}


def demo(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "admin", "demo", *args],
        env=demo_env(state),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def processes_of(home: Path) -> list[psutil.Process]:
    """Live processes started for the demo: they all carry its state folder in their environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("BBO_STATE_DIR") == str(home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def read_tokens(path: Path) -> dict[str, str]:
    lines = [line.split() for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {team: token for team, token in lines}


def signs_in(web: str, token: str) -> str:
    """Sign in through the web pages' form; returns the team page's text."""
    with httpx.Client(base_url=web, timeout=30) as browser:
        form = browser.get("/signin")
        csrf = CSRF.search(form.text)
        assert form.status_code == 200 and csrf, form.text[:500]
        done = browser.post("/signin", data={"token": token, "csrf": csrf.group(1)})
        assert done.status_code == 303 and done.headers["location"] == "/team", done.text[:500]
        team = browser.get("/team")
        assert team.status_code == 200
        return team.text


def test_headless_demo_ranks_the_good_optimizers_and_shows_why_the_broken_one_failed(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "admin", "demo", "--headless", "--json", "--backend", "process"]
        + ["--workers", "2"],
        env=demo_env(tmp_path),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Both pipes read as they fill (the demo's progress lines must not block it), stderr line by line.
    err_lines: list[str] = []
    out_chunks: list[str] = []
    readers = [
        threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True),
        threading.Thread(target=lambda: out_chunks.extend(proc.stdout), daemon=True),
    ]
    for reader in readers:
        reader.start()
    home = tmp_path / "demo"
    try:
        # While it scores: the address of the web pages on screen, and each team signs in there.
        said = wait_for(
            lambda: next((m for line in list(err_lines) if (m := re.search(r"web pages (\S+)", line))), None),
            120,
            "the demo to say where its web pages are",
            alive=proc,
        )
        web = said.group(1)
        tokens_file = home / "demo-tokens.txt"
        assert str(tokens_file) in "".join(err_lines)
        assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
        tokens = read_tokens(tokens_file)
        assert set(tokens) == GOOD_TEAMS | {"forgetful"}
        for team, token in tokens.items():
            assert f"Team {team}" in signs_in(web, token)
        proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the demo stops what it started on SIGTERM
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for reader in readers:
            reader.join(10)
    stdout, stderr = "".join(out_chunks), "".join(err_lines)
    assert proc.returncode == 0, stderr[-3000:]
    # The tokens are in their file only: not on screen, not in a log, not in the store's files (hashed).
    assert not any(token in stderr + stdout for token in tokens.values())
    for path in home.rglob("*"):
        if path.is_file() and path != tokens_file:
            data = path.read_bytes()
            assert not any(token.encode() in data for token in tokens.values()), path
    report = json.loads(stdout)
    assert report["web"] == web and report["tokens_file"] == str(tokens_file)

    board = report["leaderboard"]
    assert {row["team"] for row in board} == GOOD_TEAMS
    assert [row["rank"] for row in board] == [1, 2, 3]
    scores = [row["score"] for row in board]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score <= 100 for score in scores)

    by_team = {row["team"]: row for row in report["submissions"]}
    assert set(by_team) == GOOD_TEAMS | {"forgetful"}
    for team in GOOD_TEAMS:
        assert by_team[team]["state"] == "scored" and by_team[team]["failure_cause"] is None
        assert by_team[team]["id"] in {row["submission"] for row in board}
    broken = by_team["forgetful"]
    assert broken["state"] == "failed" and broken["score"] is None
    assert broken["failure_cause"] == "invalid_submission"
    assert "surrogate" in broken["failure_message"]
    assert report["seconds"] > 0

    # Teams submitted through the gateway, and progress went to stderr, not into the JSON.
    assert "submitted" in stderr and "scored" in stderr
    assert processes_of(home) == []
    assert (home / "redis" / "appendonly.aof").exists()
    assert not (home / "redis" / "redis.sock").exists()


def test_json_goes_with_headless_and_a_foreign_folder_is_never_wiped(tmp_path):
    refused = demo(tmp_path, "--json", timeout=60)
    assert refused.returncode == 2 and "--json goes with --headless" in refused.stderr

    precious = tmp_path / "demo" / "results.csv"
    precious.parent.mkdir()
    precious.write_text("not a demo's\n")
    kept = demo(tmp_path, "--headless", "--backend", "process", timeout=60)
    assert kept.returncode == 2 and "not a demo" in kept.stderr
    assert precious.read_text() == "not a demo's\n"
