"""Submission archives: pack a folder as the starter kit's prepare script does, check, store, extract.

Checks happen on the bytes before anything is written (artifacts/zip_checks.py): the end record read by
hand and bounded before the central directory is parsed, every entry's name, kind, sizes and data checked
positively, then the starter-kit layout (optimizer.py at the top level, at most `max_source_kb`), the
bundled wheels and requirement files (artifacts/bundled.py), and last the syntax of optimizer.py, which
is compiled in a child process with limits (artifacts/source_check.py), never in the caller's.

`check` is intake (the gateway, `bbo validate`, `bbo admin score`); `extract` is the worker's: the same
structural checks without the source parse (the sandbox host reports a syntax error itself), then every
entry written under `dest`. Whatever the archive's bytes cause is `InvalidSubmission`, the team's; only
an OSError of our own disk (no space, quota, I/O error, read-only, out of file handles) escapes as itself.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import redis

from artifacts import bundled, source_check
from artifacts.zip_checks import MAX_RATIO, Entry, InvalidSubmission, Listing, inspect, read_chunks, shown
from queue_schema import keys
from queue_schema.ids import artifact_digest
from queue_schema.states import OUR_OS_ERRNOS
from runtime.spec import SubmissionRules

__all__ = ["MAX_RATIO", "Artifact", "InvalidSubmission", "check", "extract", "fetch", "pack", "store"]

_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints", ".venv", "venv"}
MIB = 1024 * 1024


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
    """Intake: every check, the syntax of optimizer.py included; raises InvalidSubmission."""
    listing, optimizer = _structure(data, rules, verify=True)
    source = listing.read(optimizer)  # at most max_source_kb: checked
    source_check.check_syntax(source)
    return Artifact(artifact_digest(data), data, len(listing.entries), listing.unpacked_bytes)


def _structure(data: bytes, rules: SubmissionRules, *, verify: bool) -> tuple[Listing, Entry]:
    """Every check but the source parse: size, the archive's entries, layout, bundled packages.
    Returns the listing and its optimizer.py."""
    limit = rules.max_zip_mb * MIB
    if len(data) > limit:
        raise InvalidSubmission(f"archive is {len(data) / MIB:.1f} MiB; the limit is {rules.max_zip_mb} MiB")
    listing = inspect(
        data, max_files=rules.max_files, max_unpacked=rules.max_unpacked_mb * MIB, verify=verify
    )
    optimizer = listing.file("optimizer.py")  # a folder named optimizer.py is not the file
    if optimizer is None:
        nested = sorted(e.name for e in listing.files() if e.name.endswith("/optimizer.py"))
        hint = f" (found {shown(nested[0])}: zip the folder's contents, not the folder)" if nested else ""
        raise InvalidSubmission(f"optimizer.py not found at the top level of the archive{hint}")
    if optimizer.size > rules.max_source_kb * 1024:
        raise InvalidSubmission(
            f"optimizer.py is {optimizer.size / 1024:.0f} KiB; the limit is {rules.max_source_kb} KiB "
            "(move data into other files of the archive)"
        )
    bundled.check(listing, rules)
    return listing, optimizer


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
    """Unpack into `dest` after the structural checks of intake (not the source parse); nothing is
    written outside `dest`. InvalidSubmission for anything the archive's bytes cause; an OSError of
    our own disk (OUR_OS_ERRNOS) is raised as itself."""
    listing, _ = _structure(data, rules, verify=False)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for entry in listing.entries:
        target = root.joinpath(*entry.parts)
        try:
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # No symlink is followed (the archive holds none, and an existing one is not written through).
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as out:
                for chunk in read_chunks(listing.archive, entry):  # InvalidSubmission for corrupt data
                    out.write(chunk)
            os.chmod(target, 0o644)
        except OSError as exc:
            if exc.errno in OUR_OS_ERRNOS:
                raise
            raise InvalidSubmission(
                f"archive entry {shown(entry.name)} cannot be written: {os.strerror(exc.errno or 0)}"
            ) from None
    return root
