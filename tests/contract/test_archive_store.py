"""The archive's stores (queue_schema/archive_store.py): a directory, written atomically, and an
S3-compatible bucket, tested against moto's S3 server (a faithful fake of the S3 API over HTTP)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_schema import archive_store
from queue_schema.archive_store import ArchiveError, DirectoryStore, S3Store

PAYLOAD = {
    "submission": "s0000000000000000a1",
    "version": 1,
    "created_at": 1.5,
    "keys": {"bbo:studies:x:v1:p": {"type": "hash", "value": {"0": '{"study": 0}'}}},
    "logs": {"job": {"entries": [["1-0", "line"]], "expires_at": None}},
    "study_scores": None,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and endpoint as a deployment sets them (moto accepts any), and a fresh bucket."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        archive_store.S3_ENDPOINT_ENV: s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"arena-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


def test_format_is_deterministic_versioned_and_checked():
    data = archive_store.encode(PAYLOAD)
    assert data == archive_store.encode(dict(reversed(PAYLOAD.items())))  # same content, same bytes
    decoded = archive_store.decode(data)
    assert decoded["format"] == archive_store.FORMAT
    assert {k: decoded[k] for k in PAYLOAD} == PAYLOAD
    with pytest.raises(ArchiveError):
        archive_store.decode(data[:-5])
    with pytest.raises(ArchiveError, match="format"):
        archive_store.decode(archive_store.gzip.compress(b'{"format": 99}'))


def test_directory_store_round_trip_and_digest(tmp_path: Path):
    store = DirectoryStore(tmp_path / "archive")
    name = archive_store.object_name("s0000000000000000a1", 3)
    assert store.get(name) is None
    data = archive_store.encode(PAYLOAD)
    store.put(name, data)
    assert (tmp_path / "archive" / "s0000000000000000a1" / "v3.json.gz").read_bytes() == data
    assert store.load(name, archive_store.digest(data))["logs"] == PAYLOAD["logs"]
    with pytest.raises(ArchiveError, match="sha256"):
        store.load(name, "0" * 64)
    with pytest.raises(ArchiveError, match="not in"):
        store.load("s1/v1.json.gz", archive_store.digest(data))
    assert not list((tmp_path / "archive").rglob("*.tmp"))


@pytest.mark.parametrize("name", ["../x/v1.json.gz", "/etc/passwd", "a/../../b", "a\\b", ""])
def test_names_cannot_leave_the_store(tmp_path: Path, name: str):
    with pytest.raises(ValueError):
        DirectoryStore(tmp_path).put(name, b"x")


def test_directory_put_killed_before_rename_leaves_the_old_object(tmp_path: Path):
    """A writer killed between its temporary file and the rename: readers still see the previous object
    whole; the orphan temporary file is cleaned up by a later put once stale."""
    store = DirectoryStore(tmp_path)
    store.put("s1/v1.json.gz", b"old")
    code = (
        "from queue_schema.archive_store import DirectoryStore;"
        f"DirectoryStore({str(tmp_path)!r}).put('s1/v1.json.gz', b'new')"
    )
    env = {**os.environ, archive_store.CRASH_AT_ENV: "tmp_written"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2])
    assert done.returncode == 9
    assert store.get("s1/v1.json.gz") == b"old"
    orphans = list(tmp_path.glob("s1/.v1.json.gz.*.tmp"))
    assert len(orphans) == 1 and orphans[0].read_bytes() == b"new"
    os.utime(orphans[0], (0, 0))  # long ago: no live writer owns it
    store.put("s1/v1.json.gz", b"newer")
    assert store.get("s1/v1.json.gz") == b"newer"
    assert not list(tmp_path.glob("s1/.*.tmp"))


def test_open_store_reads_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: Path):
    monkeypatch.delenv(archive_store.ARCHIVE_URL_ENV, raising=False)
    assert archive_store.open_store().url == (state_dir / "archive").resolve().as_uri()
    monkeypatch.setenv(archive_store.ARCHIVE_URL_ENV, str(tmp_path / "plain"))
    assert isinstance(archive_store.open_store(), DirectoryStore)
    assert archive_store.open_store().url == (tmp_path / "plain").as_uri()
    assert archive_store.open_store(f"file://{tmp_path}/uri").url == (tmp_path / "uri").as_uri()
    with pytest.raises(ValueError, match="unsupported"):
        archive_store.open_store("ftp://host/x")


def test_s3_store_round_trip_against_moto(s3_env: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(archive_store.ARCHIVE_URL_ENV, f"s3://{s3_env}/arena/archive")
    store = archive_store.open_store()
    assert isinstance(store, S3Store) and store.url == f"s3://{s3_env}/arena/archive"
    name = archive_store.object_name("s0000000000000000a1", 2)
    assert store.get(name) is None
    data = archive_store.encode(PAYLOAD)
    store.put(name, data)
    assert store.get(name) == data
    assert store.load(name, archive_store.digest(data))["keys"] == PAYLOAD["keys"]
    head = store.client.head_object(Bucket=s3_env, Key=f"arena/archive/{name}")
    assert head["Metadata"]["sha256"] == archive_store.digest(data)
    store.put(name, b"replaced")  # a put replaces the whole object
    assert store.get(name) == b"replaced"
    with pytest.raises(ArchiveError, match="sha256"):
        store.load(name, archive_store.digest(data))


def test_s3_store_refuses_a_missing_bucket_loudly(s3_env: str):
    store = S3Store(f"{s3_env}-absent")
    with pytest.raises(Exception, match="NoSuchBucket"):
        store.get("s1/v1.json.gz")
