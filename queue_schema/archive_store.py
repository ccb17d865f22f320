"""Where scored data goes when it leaves Redis: one compressed object per submission score version.

A score version's study data, its job logs and its per-study normalized scores move, once the version is
complete, from Redis into an *archive object* (runtime/archiver.py moves them; queue_schema/records/
reads them back, so every reader of studies and logs works unchanged). This module is the storage and the
object format, nothing else:

- `ArchiveStore`: put whole objects by name and get them back. Two implementations:
  - `DirectoryStore` (the default, `<state dir>/archive/`, or `BBO_ARCHIVE_URL=file:///path` or a plain
    path): a directory the gateway's machine owns. A put is atomic: a temporary file in the same folder,
    fsync, rename over the name, fsync of the folder; a reader sees the old object or the new one, never
    a part.
  - `S3Store` (`BBO_ARCHIVE_URL=s3://bucket/prefix`, endpoint from `BBO_ARCHIVE_S3_ENDPOINT` for MinIO,
    Ceph, R2, ...; credentials from boto3's usual chain: `AWS_ACCESS_KEY_ID`, profiles, instance roles).
    An S3 PUT is atomic by the protocol: the object appears whole or not at all.
  Library: boto3, the AWS SDK for Python. It is the official, maintained SDK, speaks to any
  S3-compatible endpoint through `endpoint_url`, does retries, signing (SigV4) and credentials the
  standard way, and moto (the test fake of the S3 API) is built against it. The lighter alternatives are
  either async-only (aiobotocore), a thin wrapper over boto3 (s3fs, smart_open) or a second, smaller
  ecosystem's client (minio-py); none would remove boto3 from a deployment that already uses AWS tooling.
  It is imported only when an S3 store is opened.
- The object format (`encode`/`decode`): canonical JSON (sorted keys, no spaces), gzip-compressed with a
  zero timestamp so that the same content always gives the same bytes (a rerun after a crash can reuse an
  object it finds). The JSON carries `format` (FORMAT) and the layout below; the sha256 of the object's
  bytes (`digest`) is recorded in the version's archive mark in Redis, and checked on every read.
  gzip over lzma (both stdlib): on a demo submission's version (8 studies, 4 job logs: 21.7 kB of JSON)
  gzip gives 12.3 kB in 0.3 ms, lzma 12.2 kB in 29 ms: the studies are already stored compactly
  (queue_schema/study_codec.py), so there is no clear size win to pay for.

Layout of an object (FORMAT 1):
    {"format": 1, "submission": sid, "version": v, "created_at": t,
     "keys": {redis key: {"type": "hash", "value": {field: str}} | {"type": "string", "value": str}
                         | {"type": "set", "value": [str]}},
     "logs": {job id: {"entries": [[stream id, line], ...], "expires_at": t or null}},
     "jobs": [job id, ...],
     "events": [[stream id, event JSON], ...],
     "study_scores": str or null}
`keys` is a raw snapshot of the Redis keys that hold the version's study data (read back through the same
decoding as in Redis), `logs` the version's job log streams, `jobs` its job set (keys.submission_jobs,
sorted), `events` its `study` events as they were in the submission's stream (keys.submission_events, in
stream order), `study_scores` the value of `keys.study_scores` when the version had one. `jobs` and
`events` were added to FORMAT 1 later: an object written before has neither (its version kept its job set
and events in Redis), and readers take them as absent.
"""

from __future__ import annotations

import abc
import contextlib
import gzip
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from queue_schema.settings import state_dir

FORMAT = 1
ARCHIVE_URL_ENV = "BBO_ARCHIVE_URL"
S3_ENDPOINT_ENV = "BBO_ARCHIVE_S3_ENDPOINT"
# Test seam (tests/runtime/test_archiver.py): a process whose environment names one of the mover's steps
# here dies at that step (os._exit), so the crash-safety test can kill the mover at each one. Never set in
# a deployment.
CRASH_AT_ENV = "BBO_ARCHIVE_CRASH_AT"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}(/[A-Za-z0-9_.-]{1,100}){0,3}$")
_STALE_TMP_S = 600.0


class ArchiveError(RuntimeError):
    """An archive object is missing, unreadable, of an unknown format or not the one recorded."""


def crash_point(step: str) -> None:
    """The fault-injection hook (a test seam, see CRASH_AT_ENV): die here, as a killed process would."""
    if os.environ.get(CRASH_AT_ENV) == step:
        os._exit(9)


def object_name(sid: str, version: int) -> str:
    """The object of one submission's score version."""
    return f"{sid}/v{int(version)}.json.gz"


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name.split("/"):
        raise ValueError(f"not an archive object name: {name[:120]!r}")
    return name


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    """The object's bytes: deterministic for the same payload."""
    body = json.dumps({**payload, "format": FORMAT}, sort_keys=True, separators=(",", ":"))
    return gzip.compress(body.encode(), compresslevel=6, mtime=0)


def decode(data: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(gzip.decompress(data))
    except (OSError, EOFError, ValueError) as exc:
        raise ArchiveError(f"unreadable archive object ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArchiveError(f"archive object of unknown format {payload.get('format')!r}")
    return payload


class ArchiveStore(abc.ABC):
    """Whole objects by name: `put` replaces atomically, `get` returns the bytes or None."""

    url: str

    @abc.abstractmethod
    def put(self, name: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get(self, name: str) -> bytes | None: ...

    def load(self, name: str, sha256: str) -> dict[str, Any]:
        """The decoded object, checked against the digest recorded when it was archived."""
        data = self.get(name)
        if data is None:
            raise ArchiveError(f"archive object {name} is not in {self.url}")
        if digest(data) != sha256:
            raise ArchiveError(f"archive object {name} in {self.url} is not the one archived (sha256)")
        return decode(data)


class DirectoryStore(ArchiveStore):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            crash_point("tmp_written")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    @staticmethod
    def _drop_stale_temporaries(path: Path) -> None:
        """Temporary files of this object left by a writer that died before its rename (old enough that
        no live writer still owns them)."""
        cutoff = time.time() - _STALE_TMP_S
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()


class S3Store(ArchiveStore):
    """An S3-compatible bucket (AWS, MinIO, ...) under a key prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None):
        if not bucket:
            raise ValueError("an s3 archive URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        if client is None:
            import boto3  # only a deployment that archives to S3 needs it loaded

            endpoint_url = endpoint_url or os.environ.get(S3_ENDPOINT_ENV) or None
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(name),
            Body=data,
            ContentType="application/gzip",
            Metadata={"sha256": digest(data), "format": str(FORMAT)},
        )

    def get(self, name: str) -> bytes | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return reply["Body"].read()


def default_url() -> str:
    return (state_dir() / "archive").as_uri()


def configured_url() -> str:
    return os.environ.get(ARCHIVE_URL_ENV, "").strip() or default_url()


def open_store(url: str | None = None) -> ArchiveStore:
    """The store at `url` (default: BBO_ARCHIVE_URL, else `<state dir>/archive/`)."""
    url = url or configured_url()
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return DirectoryStore(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return DirectoryStore(url)
    raise ValueError(
        f"{ARCHIVE_URL_ENV}: unsupported archive URL {url!r} (file:///path, a path, s3://bucket/prefix)"
    )
