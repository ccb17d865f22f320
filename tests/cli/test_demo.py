"""`bbo admin demo --headless --json`: the whole system, demo teams submitting through the gateway, to the
end; the good optimizers are ranked, the broken one failed with its cause, and nothing is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
GOOD_TEAMS = {"random-search", "evolution", "sobol"}


def demo(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BBO_REDIS_URL"}
    env |= {"BBO_STATE_DIR": str(state), "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cli", "admin", "demo", *args],
        env=env,
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


def test_headless_demo_ranks_the_good_optimizers_and_shows_why_the_broken_one_failed(tmp_path):
    done = demo(tmp_path, "--headless", "--json", "--backend", "process", "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)

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
    assert "submitted" in done.stderr and "scored" in done.stderr
    home = tmp_path / "demo"
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
