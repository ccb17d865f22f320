"""The embedded Redis: a real server, AOF on, noeviction, data surviving its owner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from queue_schema.connection import connect, reset_clients
from runtime.redis_server import EmbeddedRedis, ensure_redis


@pytest.fixture()
def private_state(tmp_path, monkeypatch):
    state = tmp_path / "s"
    monkeypatch.setenv("BBO_STATE_DIR", str(state))
    monkeypatch.delenv("BBO_REDIS_URL", raising=False)
    reset_clients()
    yield state
    reset_clients()


def test_configuration_and_persistence_across_owners(private_state):
    with ensure_redis() as url:
        r = connect(url)
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        r.set("kept", "yes")
    # The owner stopped the server; a new owner replays the AOF.
    with ensure_redis() as url:
        assert connect(url).get("kept") == "yes"
    assert (private_state / "redis" / "appendonly.aof").exists()


def test_second_process_connects_to_the_running_server(private_state):
    with EmbeddedRedis() as server:
        code = (
            "from runtime.redis_server import ensure_redis\n"
            "from queue_schema.connection import connect\n"
            "with ensure_redis() as url: connect(url).set('from_child', '1'); print(url)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
        )
        assert out.stdout.strip() == server.url
        assert connect(server.url).get("from_child") == "1"
        assert server.process.poll() is None  # the child did not stop our server


def test_state_never_lands_in_the_source_tree(private_state):
    from queue_schema.settings import embedded_redis_socket, state_dir

    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert not str(state_dir()).startswith(source)
    assert not str(embedded_redis_socket()).startswith(source)
