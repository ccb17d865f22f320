"""Real `bbo admin worker` processes for whole-stack tests, and telling when a process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def worker_env(redis_url: str, state: Path) -> dict[str, str]:
    return {**os.environ, "BBO_REDIS_URL": redis_url, "BBO_STATE_DIR": str(state)}


def start_worker_with(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A worker named `name` with exactly `env`, its output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "admin", "worker", "--name", name],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def start_worker(name: str, redis_url: str, state: Path, log: Path) -> subprocess.Popen:
    """A worker on the store at `redis_url` that may use the process backend (tests score with it)."""
    return start_worker_with(name, worker_env(redis_url, state) | {"BBO_ALLOW_UNSAFE_SANDBOX": "1"}, log)


def gone(process: psutil.Process) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
