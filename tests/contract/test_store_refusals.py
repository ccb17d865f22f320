"""A store that is there but refuses writes (full disk, full memory, a replica mid-failover): uploads get a
503 that says why, never a 500, and the store takes uploads again once the cause is gone.

Each test runs its own real redis-server (the embedded one, in a folder of the test), so the refusals
never touch the session's store.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from competition import teams
from gateway.app import create_app
from queue_schema import keys
from queue_schema.connection import connect, reset_clients
from runtime.redis_server import EmbeddedRedis
from tests.conftest import SUBMISSIONS
from tests.live_server import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient


@contextlib.contextmanager
def own_store(folder: Path, monkeypatch: pytest.MonkeyPatch, fsync: str = "always") -> Iterator[redis.Redis]:
    store = EmbeddedRedis(folder, folder / "redis.sock", fsync=fsync)
    store.start()
    monkeypatch.setenv("BBO_REDIS_URL", store.url)
    reset_clients()
    try:
        yield connect(store.url)
    finally:
        store.stop()
        if store.process is not None and store.process.poll() is None:
            store.process.kill()
        monkeypatch.undo()
        reset_clients()


def uploader(r: redis.Redis):
    token = teams.add_team(r, "alpha")
    client = TestClient(create_app("demo", "auto"))

    def upload(salt: int):
        # Each upload its own archive: identical bytes would be one artifact.
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.write(SUBMISSIONS / "random_search" / "optimizer.py", "optimizer.py")
            archive.writestr("salt.txt", str(salt))
        return client.post(
            "/v1/submissions",
            files={"file": ("sub.zip", buffer.getvalue(), "application/zip")},
            headers={"Authorization": f"Bearer {token}"},
        )

    return upload


def refused(response, code: str, words: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert int(response.headers["retry-after"]) > 0


def test_a_store_out_of_memory_or_read_only_refuses_with_503_then_recovers(tmp_path, monkeypatch):
    with own_store(tmp_path / "store", monkeypatch) as r:
        upload = uploader(r)
        assert upload(1).status_code == 201

        r.config_set("maxmemory", "1")  # the store's policy is noeviction: every write is refused
        refused(upload(2), "store_full", "out of memory")
        r.config_set("maxmemory", "0")
        assert upload(3).status_code == 201

        # A replica of a primary that is not there (as during a failover): reads work, writes do not.
        r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        refused(upload(4), "store_read_only", "read-only")
        r.execute_command("REPLICAOF", "NO", "ONE")
        assert upload(5).status_code == 201
        assert r.zcard(keys.submissions_index()) == 3


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_named_whether_the_store_refuses_writes_or_exits(tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("no tmpfs could be mounted here")
    try:
        # A deployment's store (fsync every second) stays up and refuses writes with MISCONF; the
        # embedded one (fsync always) exits: both are a full disk to the team, not "unreachable".
        for fsync, survives in (("everysec", True), ("always", False)):
            with own_store(small / fsync, monkeypatch, fsync=fsync) as r:
                upload = uploader(r)
                assert upload(1).status_code == 201
                filler = small / "filler"
                with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * 65536)
                # The store learns of the full disk at its next AOF write: the first upload after the
                # fill may still be taken in memory (everysec) or may be the write that fails.
                responses = [upload(salt) for salt in range(2, 6)]
                assert all(resp.status_code in (201, 503) for resp in responses), [
                    resp.text for resp in responses
                ]
                refused(responses[-1], "store_full", "out of disk space")
                filler.unlink()
                if survives:  # it retries the AOF write every second and takes writes again by itself
                    deadline = time.monotonic() + 60
                    while upload(100).status_code != 201:
                        assert time.monotonic() < deadline, "the store never took writes again"
                        time.sleep(0.5)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_the_autoscaler_daemon_waits_out_a_store_that_refuses_writes(tmp_path, monkeypatch):
    import threading

    from autoscaler.daemon import Daemon, lock_key, read_status
    from autoscaler.policy import PolicyConfig
    from autoscaler.providers.local import LocalProvider

    with own_store(tmp_path / "store", monkeypatch) as r:
        provider = LocalProvider(r, fleet="refused", cap=1, env=dict(os.environ), log_dir=tmp_path / "logs")
        daemon = Daemon(
            r, provider, PolicyConfig(min_workers=0, max_workers=1), fleet="refused", interval_s=0.2
        )
        stop = threading.Event()
        loop = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
        loop.start()
        try:
            deadline = time.monotonic() + 30
            while not read_status(r, "refused"):
                assert time.monotonic() < deadline, "the daemon never stepped"
                time.sleep(0.1)
            r.config_set("maxmemory", "1")
            time.sleep(2.0)  # ten steps and lock renewals refused
            assert loop.is_alive(), "the daemon quit on the refusal"
            r.config_set("maxmemory", "0")
            lifted = time.time()
            while float(read_status(r, "refused").get("ts") or 0) <= lifted:
                assert time.monotonic() < deadline + 30, "the daemon never stepped again"
                time.sleep(0.1)
            assert r.get(lock_key("refused")) == daemon._lock.token
        finally:
            stop.set()
            loop.join(30)
        assert not loop.is_alive()


def test_admin_commands_say_in_one_line_that_the_store_refuses_writes(tmp_path, monkeypatch):
    with own_store(tmp_path / "store", monkeypatch) as r:
        r.config_set("maxmemory", "1")
        done = subprocess.run(
            [sys.executable, "-m", "cli", "admin", "team", "add", "gamma"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "BBO_STATE_DIR": str(tmp_path)},
            cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: the store refuses writes (OOM)"), line
