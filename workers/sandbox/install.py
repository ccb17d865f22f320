"""Bundled wheels: what a submission may ask to install, how it is installed, and the cache of installs.

Shared by the docker and bwrap backends. The intake refuses sdists, paths, URLs and wheels for another
platform, and checks each wheel like an archive; this is the second line, so that a submission that got
past the intake still cannot build, fetch or fill anything:

- Only wheels. Each entry of install_order.txt and each line of requirements.txt (the 2020 starter kit's
  files) must pass the intake's own rule (queue_schema/bundled_requirements.py): a plain requirement by
  name or the file name of a `.whl` bundled at the top of the submission. Options (`-e`, `-r`,
  `--index-url`, `--no-binary`...), URLs, paths, direct references (`name @ ...`), markers and archives
  that are not wheels are refused before pip runs, with the line in the message (InstallFailed). The
  accepted lines reach pip as arguments, never as a file pip would parse. Measured: pip's
  `--only-binary :all:` alone does not stop a path to an sdist or a folder (`pip install --only-binary
  :all: ./pkg-1.0.tar.gz` runs its setup.py), hence the rule on lines.
- pip with `--only-binary :all: --no-index --no-cache-dir --no-build-isolation --isolated` (no config
  file, no PIP_* variable), `--find-links /submission` and `--prefix /install`: nothing is built, no
  setup.py runs, nothing is fetched, no cache is written. It runs from a throw-away virtual environment
  made in the sandbox's /tmp, with the optimizer environment's packages on PYTHONPATH: they satisfy
  dependencies, and a bundled version of one of them is installed into /install (which comes first on the
  path at launch) without pip touching the read-only environment ("not uninstalling ..., outside
  environment").
- In a sandbox of the backend's kind, with no network, the submission read-only and its working folder
  /tmp; memory max(study limit, INSTALL_MIN_MEMORY_MB) plus the install tmpfs, the study's pids limit (at
  least INSTALL_MIN_PIDS), a file-size limit of INSTALL_FILE_SIZE_MB per file, INSTALL_TIMEOUT_S in all.
  pip writes into a tmpfs of INSTALL_MAX_MB at /install, so a wheel that is a zip bomb stops there (ENOSPC,
  or EFBIG at the file-size limit) and never reaches the worker's disk; only a finished install is copied
  out to the artifact's folder (bound read-write at INSTALL_OUT for that step only), whose total `seal`
  checks again before the folder is made root-owned and read-only for every study.
- Cached by content: <state dir>/sandbox/artifacts/<environment>/<sha256>/ holds the staged submission and
  its install, made once per submission content and sandbox environment (image, interpreter) under a file
  lock, so concurrent workers of one machine install an artifact once. A failed install leaves nothing.
  Folders unused for CACHE_KEEP_DAYS are pruned (every launch touches ready.json).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from queue_schema.bundled_requirements import INSTALL_FILES, line_problem, meaningful_lines
from queue_schema.settings import state_dir
from workers.sandbox.base import InstallFailed

SUBMISSION_MOUNT = "/submission"
INSTALL_MOUNT = "/install"  # a tmpfs while pip runs; the artifact's install folder, read-only, at launch
INSTALL_OUT = "/install-out"  # the artifact's install folder, read-write, during the install only
PIP_ENV = "/tmp/pipenv"  # the throw-away virtual environment pip runs from
INSTALL_TIMEOUT_S = 600.0
INSTALL_MIN_MEMORY_MB = 1024
INSTALL_MIN_PIDS = 64
INSTALL_FILE_SIZE_MB = 512  # per file (RLIMIT_FSIZE): a shared library of a large package fits
INSTALL_MAX_MB = 1024  # everything installed, in the install tmpfs and checked again by `seal`
INSTALL_TMP_MB = 256  # pip's own /tmp (the throw-away environment, build trackers)
CACHE_KEEP_DAYS = 7.0
MAX_LINES = 200  # entries in install_order.txt and requirements.txt together

# PEP 508 without URLs: a name, optional extras, optional version specifiers, an optional marker.


@dataclass
class Prepared:
    """One artifact made ready on this worker."""

    sha256: str
    submission: Path  # staged copy, bound read-only at /submission
    install: Path | None  # installed bundled packages (the --prefix folder), bound read-only at /install
    cached: bool  # True when an earlier prepare had already done the work


def install_site(python_version: str) -> str:
    """Where pip's --prefix layout puts packages for this interpreter ("3.11.7" or "3.11")."""
    major_minor = ".".join(python_version.split(".")[:2])
    return f"{INSTALL_MOUNT}/lib/python{major_minor}/site-packages"


# -- submission content ------------------------------------------------------------------------------


def regular_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every regular file, sorted; symlinks and special files are skipped."""
    for current, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(current, d)))
        for name in sorted(files):
            path = Path(current) / name
            if stat.S_ISREG(path.lstat().st_mode):
                yield path.relative_to(folder).as_posix(), path


def content_sha256(folder: Path) -> str:
    """The sha256 of a submission folder: every regular file's relative path and bytes."""
    digest = hashlib.sha256()
    for rel, path in regular_files(folder):
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                file_digest.update(chunk)
        digest.update(f"{rel}\0".encode() + file_digest.digest())
    return digest.hexdigest()


def stage(source: Path, target: Path) -> None:
    """Copy regular files (0644) and folders (0755), never following a link out of the submission."""
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    for rel, path in regular_files(source):
        dest = target / rel
        for parent in reversed(dest.relative_to(target).parents[:-1]):
            folder = target / parent
            if not folder.is_dir():
                folder.mkdir(mode=0o755)
                os.chmod(folder, 0o755)
        shutil.copyfile(path, dest, follow_symlinks=False)
        os.chmod(dest, 0o644)


# -- the rules -------------------------------------------------------------------------------------


def _meaningful_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file() or path.is_symlink():
        return []
    return meaningful_lines(path.read_text(errors="replace"))


def wants_install(folder: Path) -> bool:
    """Whether the submission bundles anything to install (an empty requirements.txt does not)."""
    return any(_meaningful_lines(folder / name) for name in INSTALL_FILES)


def _bundled_wheels(folder: Path) -> set[str]:
    return {
        path.name
        for path in folder.iterdir()
        if path.name.endswith(".whl") and path.is_file() and not path.is_symlink()
    }


def _argument(wheels: set[str], filename: str, number: int, entry: str) -> str:
    """The pip argument for one line: a bundled wheel's path or a plain requirement; else InstallFailed
    (the intake's rule, queue_schema/bundled_requirements.py, applied again)."""
    reason = line_problem(entry, wheels)
    if reason is not None:
        raise InstallFailed(f"{filename} line {number} ({entry[:80]!r}) {reason}")
    return f"{SUBMISSION_MOUNT}/{entry}" if entry in wheels else entry


def install_steps(folder: Path) -> list[tuple[list[str], bool]]:
    """(pip arguments, no_deps) per pip run: install_order.txt's entries one by one (--no-deps, in order),
    then requirements.txt in one run. Refuses (InstallFailed) any line that is not a requirement or a
    bundled wheel."""
    order = _meaningful_lines(folder / "install_order.txt")
    requirements = _meaningful_lines(folder / "requirements.txt")
    if len(order) + len(requirements) > MAX_LINES:
        raise InstallFailed(f"install_order.txt and requirements.txt list more than {MAX_LINES} entries")
    wheels = _bundled_wheels(folder)
    steps = [([_argument(wheels, "install_order.txt", n, entry)], True) for n, entry in order]
    if requirements:
        arguments = [_argument(wheels, "requirements.txt", n, entry) for n, entry in requirements]
        steps.append((arguments, False))
    return steps


def pip_options() -> list[str]:
    return [
        "--isolated", "--no-input", "--disable-pip-version-check", "--no-cache-dir",
        "--only-binary", ":all:", "--no-index", "--find-links", SUBMISSION_MOUNT,
        "--prefix", INSTALL_MOUNT, "--no-build-isolation", "--no-warn-script-location",
        "--progress-bar", "off",
    ]  # fmt: skip


def install_script(folder: Path, python: str) -> str:
    """The shell script an install sandbox runs, `python` being the optimizer environment's interpreter:
    make the throw-away environment pip runs from, install, copy the result out to INSTALL_OUT."""
    steps = [
        "set -e",
        "cd /tmp",  # never the submission: pip takes a bare file name found in its folder for an archive
        shlex.join([python, "-I", "-m", "venv", "--without-pip", "--symlinks", PIP_ENV]),
    ]
    pip = [f"{PIP_ENV}/bin/python", "-m", "pip", "install", *pip_options()]
    for arguments, no_deps in install_steps(folder):
        steps.append(shlex.join([*pip, *(["--no-deps"] if no_deps else []), *arguments]))
    # pip wrote the throw-away environment's interpreter into console scripts: the sandbox's instead.
    shebang = shlex.quote(f"1s|^#!{PIP_ENV}/bin/python[0-9.]*$|#!{python}|")
    steps.append(f"if [ -d {INSTALL_MOUNT}/bin ]; then sed -i {shebang} {INSTALL_MOUNT}/bin/*; fi")
    steps.append(f"cp -R {INSTALL_MOUNT}/. {INSTALL_OUT}/")
    return "\n".join(steps)


def install_pythonpath(python_version: str, environment_site: str) -> str:
    """PYTHONPATH of the install: what is already installed first, then the optimizer environment."""
    return f"{install_site(python_version)}:{environment_site}"


def install_error(output: str, code: int | None) -> str:
    """Why it failed, for the team: pip's own error lines (they name only the team's packages and files),
    the limit that stopped it, or the exit code."""
    if "[Errno 28]" in output or "No space left on device" in output:
        return (
            f"the bundled packages did not install: they take more than {INSTALL_MAX_MB} MB installed "
            "(the limit of the install)"
        )
    if "[Errno 27]" in output or "File too large" in output:
        return (
            "the bundled packages did not install: a file is larger than "
            f"{INSTALL_FILE_SIZE_MB} MB (the limit per installed file)"
        )
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
    detail = " ".join(errors[-2:])[:400] if errors else f"pip exited with code {code}"
    return (
        f"the bundled requirements did not install: {detail} (requirements.txt may only name packages that "
        "the image provides or that are bundled as wheels in the submission; there is no network)"
    )


def timed_out() -> InstallFailed:
    return InstallFailed(f"installing the bundled requirements took longer than {INSTALL_TIMEOUT_S:.0f} s")


def out_of_memory(memory_mb: int) -> InstallFailed:
    return InstallFailed(f"installing the bundled requirements ran out of memory ({memory_mb} MB)")


def seal(folder: Path, max_mb: int = INSTALL_MAX_MB) -> int:
    """Check an install folder's total and make it a read-only tree for every sandbox: root-owned (when
    the worker is root), folders 0755, files 0644 (0755 if executable); anything that is not a regular file
    or a folder is removed. Returns the bytes installed; InstallFailed past `max_mb`."""
    total = 0
    root_owner = os.geteuid() == 0
    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in list(dirs):
            path = os.path.join(current, name)
            if os.path.islink(path):
                os.unlink(path)
                dirs.remove(name)
        for name in files:
            path = os.path.join(current, name)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                os.unlink(path)
                continue
            total += info.st_size
            if root_owner:
                os.lchown(path, 0, 0)
            os.chmod(path, 0o755 if info.st_mode & 0o111 else 0o644)
        if root_owner:
            os.lchown(current, 0, 0)
        os.chmod(current, 0o755)
    if total > max_mb * 1024 * 1024:
        raise InstallFailed(
            f"the bundled packages did not install: they take more than {max_mb} MB installed "
            "(the limit of the install)"
        )
    return total


# -- cache -----------------------------------------------------------------------------------------


def cache_root(environment: str) -> Path:
    """The cache of one sandbox environment (e.g. "docker-<image id>", "bwrap-<interpreter>")."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", environment)[:80]
    path = state_dir() / "sandbox" / "artifacts" / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


Installer = Callable[[Path, Path, str], None]  # (staged submission, empty install folder, sha256)


def prepare_cached(submission_dir: Path, environment: str, installer: Installer) -> Prepared:
    """Stage the submission and install its bundled packages with `installer`, once per content (cached
    under `environment`); concurrent callers for one artifact wait for the first."""
    submission_dir = Path(submission_dir)
    sha = content_sha256(submission_dir)
    base = cache_root(environment)
    root = base / sha
    ready = root / "ready.json"
    with locked(base / f"{sha}.lock"):
        if ready.is_file():
            info = json.loads(ready.read_text())
            ready.touch()
            install = root / "install" if info["install"] else None
            prepared = Prepared(sha, root / "submission", install, True)
        else:
            prepared = _prepare_fresh(submission_dir, sha, root, installer)
    prune_cache(base, keep=sha)
    return prepared


def _prepare_fresh(submission_dir: Path, sha: str, root: Path, installer: Installer) -> Prepared:
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    try:
        staged = root / "submission"
        stage(submission_dir, staged)
        install: Path | None = None
        size = 0
        if wants_install(staged):
            install_steps(staged)  # refuses what may not be installed before any sandbox starts
            install = root / "install"
            install.mkdir()
            installer(staged, install, sha)
            size = seal(install)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    info = {"install": install is not None, "bytes": size, "seconds": round(time.monotonic() - started, 2)}
    (root / "ready.json").write_text(json.dumps(info) + "\n")
    return Prepared(sha, staged, install, False)


def touch(prepared: Prepared) -> None:
    """Mark the artifact as used now (pruning keeps it)."""
    with contextlib.suppress(OSError):
        (prepared.submission.parent / "ready.json").touch()


def prune_cache(base: Path, keep: str) -> None:
    """Drop artifacts no worker has used for CACHE_KEEP_DAYS (every launch touches its ready.json), in this
    environment and those left directly in the cache folder by the layout before environments."""
    cutoff = time.time() - CACHE_KEEP_DAYS * 86400
    legacy = [e for e in base.parent.iterdir() if len(e.name) == 64 and (e / "ready.json").exists()]
    for entry in [*base.iterdir(), *legacy]:
        if entry.name == keep or not entry.is_dir():
            continue
        ready = entry / "ready.json"
        try:
            stale = ready.stat().st_mtime < cutoff if ready.exists() else entry.stat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(OSError):
                (entry.parent / f"{entry.name}.lock").unlink()
