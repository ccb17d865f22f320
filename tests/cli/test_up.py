"""`bbo admin up`: one command runs Redis, the gateway and workers; it scores, heals and stops cleanly."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import SUBMISSIONS
from tests.live_server import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def zipped(folder: Path, note: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path in folder.iterdir():
            z.write(path, path.name)
        if note:  # another archive, with the same optimizer
            z.writestr("NOTE.txt", note)
    return buffer.getvalue()


def workers_of(up: subprocess.Popen) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process(up.pid).children():
        try:
            # A killed worker is a zombie until `up` reaps it, and then it is gone: skip both.
            if proc.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_up_scores_restarts_a_dead_worker_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BBO_REDIS_URL"}
    env |= {"BBO_STATE_DIR": str(tmp_path), "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "admin",
            "up",
            "--workers",
            "1",
            "--port",
            str(port),
            "--backend",
            "process",
        ],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the gateway")
        added = subprocess.run(
            [sys.executable, "-m", "cli", "admin", "team", "add", "ada", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        token = json.loads(added.stdout)["token"]
        auth = {"Authorization": f"Bearer {token}"}
        files = {"file": ("rs.zip", zipped(SUBMISSIONS / "random_search"), "application/zip")}
        created = httpx.post(f"{base}/v1/submissions", headers=auth, files=files, timeout=30)
        assert created.status_code == 201, created.text
        sid = created.json()["id"]

        def scored():
            body = httpx.get(f"{base}/v1/submissions/{sid}", headers=auth, timeout=5).json()
            return body if body["state"] in ("scored", "failed", "stopped") else None

        final = wait_for(scored, 240, "the score")
        assert final["state"] == "scored" and final["score"] is not None

        (victim,) = workers_of(up)
        victim.kill()
        wait_for(lambda: [w for w in workers_of(up) if w.pid != victim.pid], 20, "a restarted worker")

        # The store dies (as on a failed AOF write): `up` starts it again, the AOF replays, and the
        # gateway and the worker carry on with it.
        (store,) = [p for p in psutil.Process(up.pid).children() if "redis-server" in p.name()]
        store.kill()

        def new_store() -> list[psutil.Process]:
            children = psutil.Process(up.pid).children()
            return [p for p in children if "redis-server" in p.name() and p.pid != store.pid]

        wait_for(new_store, 30, "a restarted store")
        wait_for(healthy, 30, "the gateway to reach the store again")
        assert httpx.get(f"{base}/v1/submissions/{sid}", headers=auth, timeout=5).json()["state"] == "scored"
        files = {"file": ("rs2.zip", zipped(SUBMISSIONS / "random_search", "again"), "application/zip")}
        again = httpx.post(f"{base}/v1/submissions", headers=auth, files=files, timeout=30)
        assert again.status_code == 201, again.text
        sid = again.json()["id"]
        final = wait_for(scored, 240, "the score after the store's restart")
        assert final["state"] == "scored"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, up.stderr.read()[-2000:]
    assert not (tmp_path / "redis" / "redis.sock").exists()
    assert (tmp_path / "redis" / "appendonly.aof").exists()
