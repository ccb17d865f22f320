"""Submission archives: pack a folder as the starter kit's prepare script does, check, store, extract.

Checks happen on the bytes before anything is written: zip-slip and absolute paths, links and device
entries, too many files, a total or per-file uncompressed size over the limit, a suspicious compression
ratio, and the starter-kit layout (optimizer.py at the top level, valid Python).
"""

from __future__ import annotations

import ast
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import redis

from competition.spec import SubmissionRules
from queue_schema import keys
from queue_schema.ids import artifact_digest

MAX_RATIO = 200  # uncompressed / compressed, per entry: a bomb, not source code
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints", ".venv", "venv"}


class InvalidSubmission(ValueError):
    """Rejected at intake; the message is safe to show the team."""


@dataclass(frozen=True)
class Artifact:
    sha256: str
    data: bytes
    files: int
    unpacked_bytes: int


def pack(path: Path, rules: SubmissionRules) -> bytes:
    """A zip's bytes from a zip file, or from a folder (its contents at the top level)."""
    if not path.exists():
        raise InvalidSubmission(f"{path} does not exist")
    if path.is_file():
        data = path.read_bytes()
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise InvalidSubmission(f"{path.name} is not a zip archive")
        return data
    buffer = io.BytesIO()
    count = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            for name in sorted(files):
                full = Path(root) / name
                if full.is_symlink() or name.endswith(".pyc"):
                    continue
                count += 1
                if count > rules.max_files:
                    raise InvalidSubmission(f"more than {rules.max_files} files in {path}")
                archive.write(full, full.relative_to(path).as_posix())
    return buffer.getvalue()


def check(data: bytes, rules: SubmissionRules) -> Artifact:
    limit = rules.max_zip_mb * 1024 * 1024
    if len(data) > limit:
        raise InvalidSubmission(
            f"archive is {len(data) / 2**20:.1f} MiB; the limit is {rules.max_zip_mb} MiB"
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidSubmission(f"not a readable zip archive: {exc}") from None
    if len(infos) > rules.max_files:
        raise InvalidSubmission(f"archive has {len(infos)} entries; the limit is {rules.max_files}")
    total = 0
    names: set[str] = set()
    for info in infos:
        _check_entry(info)
        total += info.file_size
        if total > rules.max_unpacked_mb * 1024 * 1024:
            raise InvalidSubmission(f"archive unpacks to more than {rules.max_unpacked_mb} MiB")
        if not info.is_dir():  # a folder named optimizer.py is not the file
            names.add(info.filename)
    if "optimizer.py" not in names:
        nested = sorted(n for n in names if n.endswith("/optimizer.py"))
        hint = f" (found {nested[0]}: zip the folder's contents, not the folder)" if nested else ""
        raise InvalidSubmission(f"optimizer.py not found at the top level of the archive{hint}")
    try:
        source = archive.read("optimizer.py")
        ast.parse(source, filename="optimizer.py")
    except SyntaxError as exc:
        raise InvalidSubmission(f"syntax error in optimizer.py line {exc.lineno}: {exc.msg}") from None
    except (zipfile.BadZipFile, RuntimeError, OSError, ValueError) as exc:  # bad CRC, encrypted, truncated
        raise InvalidSubmission(f"cannot read optimizer.py from the archive: {exc}") from None
    return Artifact(artifact_digest(data), data, len(infos), total)


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise InvalidSubmission(f"archive entry {name!r} has an absolute path")
    if ".." in path.parts:
        raise InvalidSubmission(f"archive entry {name!r} points outside the archive")
    # Zip tools that write no file type leave these bits zero; only a declared non-regular type is refused.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        raise InvalidSubmission(f"archive entry {name!r} is a link or device, not a regular file")
    if info.flag_bits & 0x1:
        raise InvalidSubmission(f"archive entry {name!r} is encrypted")
    if (
        info.compress_size
        and info.file_size / info.compress_size > MAX_RATIO
        and info.file_size > 1024 * 1024
    ):
        raise InvalidSubmission(f"archive entry {name!r} has a suspicious compression ratio")


def store(r: redis.Redis, artifact: Artifact) -> None:
    """Content-addressed, so re-uploading the same zip stores nothing new."""
    if r.set(keys.artifact(artifact.sha256), artifact.data, nx=True):
        r.hset(
            keys.artifact_meta(artifact.sha256),
            mapping={
                "size": len(artifact.data),
                "files": artifact.files,
                "unpacked": artifact.unpacked_bytes,
            },
        )


def fetch(r_raw: redis.Redis, sha256: str) -> bytes:
    """Needs a bytes client (decode_responses=False)."""
    data = r_raw.get(keys.artifact(sha256))
    if data is None:
        raise FileNotFoundError(f"artifact {sha256[:12]} is not in the store")
    if artifact_digest(data) != sha256:
        raise OSError(f"artifact {sha256[:12]} is corrupted in the store")
    return data


def extract(data: bytes, dest: Path, rules: SubmissionRules) -> Path:
    """Unpack into `dest` after the same checks as intake; nothing is written outside `dest`."""
    check(data, rules)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            target = (root / info.filename).resolve()
            if root != target and root not in target.parents:
                raise InvalidSubmission(f"archive entry {info.filename!r} points outside the archive")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                remaining = info.file_size
                while chunk := src.read(1 << 16):
                    remaining -= len(chunk)
                    if remaining < 0:  # the header lied about the size
                        raise InvalidSubmission(f"archive entry {info.filename!r} is larger than it claims")
                    out.write(chunk)
            target.chmod(0o644)
    return root
