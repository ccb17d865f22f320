"""Who moves ended score versions into the archive. Without BBO_ARCHIVE_URL the archive is the state
folder of the gateway's machine, so a worker (maybe on another machine) must not write it: the gateway
does. With a shared archive (a bucket, a shared folder) the workers' reaper ticks do it too."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from queue_schema import archive_store, keys, records
from queue_schema.settings import state_dir
from runtime import archiver, recovery
from runtime.spec import load
from tests.runtime.test_archiver import scored, store  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("unsafe_ok")


def test_without_a_shared_archive_the_gateway_archives_and_the_workers_do_not(
    r,
    redis_server,
    scored,  # noqa: F811
    monkeypatch,
):
    monkeypatch.delenv(archive_store.ARCHIVE_URL_ENV)  # the default: this machine's state folder
    monkeypatch.setenv(archiver.GRACE_ENV, "0")
    records._load_archive.cache_clear()
    assert not archiver.workers_archive()
    recovery.reap_if_due(r, "worker-elsewhere")
    assert records.archive_mark(r, scored.id, 1) is None  # a worker's tick left it alone

    with TestClient(create_app(load("demo"), backend="process", redis_url=redis_server)):
        deadline = time.monotonic() + 30
        while records.archive_mark(r, scored.id, 1) is None and time.monotonic() < deadline:
            time.sleep(0.2)
    mark = records.archive_mark(r, scored.id, 1)
    assert mark is not None, "the gateway did not archive the ended version"
    assert mark.store == (state_dir() / "archive").as_uri()
    assert not [key for key in records.version_data_keys(r, scored.id, 1) if r.exists(key)]


def test_with_a_shared_archive_the_workers_reaper_archives(r, scored, monkeypatch):  # noqa: F811
    monkeypatch.setenv(archiver.GRACE_ENV, "0")
    assert archiver.workers_archive()  # the store fixture set BBO_ARCHIVE_URL
    r.delete(keys.lock(recovery.REAPER_LOCK))
    recovery.reap_if_due(r, "worker-1")
    assert records.archive_mark(r, scored.id, 1) is not None
