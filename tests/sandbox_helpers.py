"""Running one study in a sandbox for the backend tests, recording what the backend says of its end."""

from __future__ import annotations

import base64
import hashlib
import tarfile
import zipfile
from pathlib import Path

from workers.harness import FatalOptimizerError, run_one_study
from workers.optimizer_process import LaunchSpec, OptimizerProcess


def run_launched(backend, launch: LaunchSpec, spec, problem: str, study: int):
    """(result or the FatalOptimizerError, organizer log lines), with the backend's exit cause logged."""
    lines: list[str] = []
    explain = launch.exit_cause
    assert explain is not None

    def exit_cause(returncode: int | None) -> str | None:
        cause = explain(returncode)
        lines.append(f"[test] exit code {returncode}, backend's cause {cause}")
        return cause

    launch.exit_cause = exit_cause
    proc = OptimizerProcess(launch, log=lines.append).start()
    try:
        result = run_one_study(proc, problem, study, spec, backend.describe(), lines.append)
    except FatalOptimizerError as fatal:
        proc.kill()
        return fatal, lines
    return result, lines


# -- wheels and sdists written by hand (no network, no build backend) --------------------------------


def _record_hash(digest: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def write_wheel(
    folder: Path,
    name: str,
    version: str,
    files: dict[str, str],
    requires: tuple[str, ...] = (),
    big: dict[str, int] | None = None,
) -> Path:
    """A pure-Python wheel `name-version-py3-none-any.whl` in `folder`: `files` (path -> text) plus, for
    a zip bomb, `big` members (path -> size) of zeros, streamed and deflated (about 1 KiB per MiB)."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    entries = {k: v.encode() for k, v in files.items()}
    entries[f"{dist}.dist-info/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
    ).encode()
    entries[f"{dist}.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: bbo-arena-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{n},{_record_hash(hashlib.sha256(data).digest())},{len(data)}" for n, data in entries.items()]
    chunk = bytes(1 << 20)
    for member, size in (big or {}).items():
        digest = hashlib.sha256()
        for _ in range(size >> 20):
            digest.update(chunk)
        record.append(f"{member},{_record_hash(digest.digest())},{size}")
    record.append(f"{dist}.dist-info/RECORD,,")
    entries[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for member, size in (big or {}).items():
            with archive.open(member, "w", force_zip64=True) as out:
                for _ in range(size >> 20):
                    out.write(chunk)
        for member, data in entries.items():
            archive.writestr(member, data)
    return path


def write_sdist(folder: Path, name: str, version: str, setup_py: str) -> Path:
    """`name-version.tar.gz` in `folder` whose setup.py is `setup_py`; and the same project unpacked in a
    folder `name` next to it (what a requirements line could name as a path)."""
    project = folder / name
    project.mkdir()
    (project / "setup.py").write_text(setup_py)
    (project / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    archive = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(project, arcname=f"{name}-{version}")
    return archive
