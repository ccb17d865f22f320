"""A suite's own locked virtual environment, built offline from a wheelhouse, like the sandbox's venv.

A suite whose objective needs other packages than the worker's pinned stack (COCO's coco-experiment needs
numpy 2; an organizer's objective has its own requirements) gets a venv of its own, keyed by its pins:

1. the requirements are exact pins, one `name==version` a line (comments and blank lines aside); anything
   else is refused with a one-line error: locked means locked;
2. a wheelhouse, <cache dir>/suites/wheelhouse/<key>: `pip wheel --no-deps` of exactly those pins, once
   (the first time needs the package index; sdists are built into wheels here), made in `<key>.partial`
   and renamed when complete;
3. a venv, <cache dir>/suites/venv/<key>: `venv --without-pip`, then the worker's pip installs the pins
   into it from the wheelhouse alone (`--no-index`, every pip configuration and PIP_* variable
   ignored), dependencies included: a dependency without a pin of its own is not in the wheelhouse, so an
   incomplete lock fails here, naming it. Built in place (a venv's scripts carry its path, so it is not
   renamed) and trusted only once its `.complete` marker is written, last.

The key is the sha256 of the sorted pins, so the same lock is one environment whatever its comments or
order. A file lock per key makes two workers (or a worker and scripts/setup) wait for one build.
Machine-level build products live in the cache folder (BBO_CACHE_DIR), as the sandbox's do, shared by
every state folder here. "" as requirements means the worker's own interpreter, nothing to build.

`python -m suites.environment NAME|FILE...` builds the shipped environments (suites/envs/NAME.txt) or a
requirements file and prints each interpreter's path; scripts/setup builds bbob's this way.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from queue_schema.settings import cache_dir

ENVS = Path(__file__).resolve().parent / "envs"
COMPLETE = ".complete"
KEY_CHARS = 16

Log = Callable[[str], None]

# A PEP 508 name, `==`, a PEP 440 version (local part allowed: 2.1.0+cpu); no extras, markers, wildcards.
_PIN = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==([0-9A-Za-z!][0-9A-Za-z.+!_-]*)")


class EnvironmentBuildError(RuntimeError):
    """A suite's environment cannot be built; the message is one line saying why."""


def _stderr(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements_text: str) -> list[str]:
    """The sorted `name==version` lines (names canonical), or EnvironmentBuildError naming a bad line."""
    found: dict[str, str] = {}
    for number, raw in enumerate(requirements_text.splitlines(), 1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        match = _PIN.fullmatch(line)
        if match is None:
            raise EnvironmentBuildError(
                f"requirements line {number}: {line[:80]!r} is not an exact pin name==version "
                "(a suite's environment is locked: every package, dependencies included, pinned)"
            )
        name = _canonical(match.group(1))
        if name in found:
            raise EnvironmentBuildError(f"requirements line {number}: {name} is pinned twice")
        found[name] = f"{name}=={match.group(2)}"
    if not found:
        raise EnvironmentBuildError("the requirements pin nothing (use no requirements for the worker's own)")
    return sorted(found.values())


def environment_key(requirements_text: str) -> str:
    return hashlib.sha256("\n".join(pins(requirements_text)).encode()).hexdigest()[:KEY_CHARS]


def shipped(name: str) -> str:
    """The requirements text of a shipped environment (suites/envs/NAME.txt)."""
    path = ENVS / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ENVS.glob("*.txt")))
        raise EnvironmentBuildError(f"no shipped environment {name!r} (shipped: {known})")
    return path.read_text()


def _suites_dir() -> Path:
    path = cache_dir() / "suites"
    path.mkdir(parents=True, exist_ok=True)
    return path


def venv_dir(requirements_text: str) -> Path:
    return _suites_dir() / "venv" / environment_key(requirements_text)


def wheelhouse_dir(requirements_text: str) -> Path:
    return _suites_dir() / "wheelhouse" / environment_key(requirements_text)


def environment_python(requirements_text: str) -> str | None:
    """The interpreter of the environment if it is complete ("": the worker's own), without building."""
    if not requirements_text.strip():
        return sys.executable
    target = venv_dir(requirements_text)
    python = target / "bin" / "python"
    return str(python) if (target / COMPLETE).is_file() and python.exists() else None


@contextlib.contextmanager
def _build_lock(key: str) -> Iterator[None]:
    folder = _suites_dir() / "locks"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_environment(name: str, requirements_text: str, log: Log = _stderr) -> str:
    """The interpreter of the suite's environment, built the first time (see the module's docstring)."""
    if not requirements_text.strip():
        return sys.executable
    locked = pins(requirements_text)
    key = environment_key(requirements_text)
    ready = environment_python(requirements_text)
    if ready is not None:
        return ready
    with _build_lock(key):
        ready = environment_python(requirements_text)  # another process may have built it meanwhile
        if ready is not None:
            return ready
        started = time.monotonic()
        wheels = _ensure_wheelhouse(name, locked, wheelhouse_dir(requirements_text), log)
        target = venv_dir(requirements_text)
        _build_venv(name, locked, wheels, target, log)
        log(f"{name} environment ready in {time.monotonic() - started:.0f} s: {target}")
    python = environment_python(requirements_text)
    assert python is not None
    return python


def _errors(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("ERROR")]
    text = " | ".join(lines[-3:]) or " ".join(done.stderr.split())[-300:]
    return text[:600]


def _ensure_wheelhouse(name: str, locked: list[str], target: Path, log: Log) -> Path:
    if (target / COMPLETE).is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    requirements = partial / "requirements.txt"
    requirements.write_text("\n".join(locked) + "\n")
    log(f"pip wheel of the {name} environment's {len(locked)} pins into {target}")
    # The machine's own pip configuration (its index, mirrors): the only step that may reach the network.
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--progress-bar", "off", "--no-deps"]
    command += ["--wheel-dir", str(partial), "-r", str(requirements)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise EnvironmentBuildError(f"{name} environment: pip wheel failed: {_errors(done)}")
    wheels = sorted(p.name for p in partial.glob("*.whl"))
    (partial / COMPLETE).write_text("\n".join(wheels) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _offline_pip_env() -> dict[str, str]:
    # No index, no find-links, no constraints but ours: whatever this machine's pip is configured with.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _build_venv(name: str, locked: list[str], wheels: Path, target: Path, log: Log) -> None:
    shutil.rmtree(target, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    log(f"creating the {name} environment {target}")
    venv = subprocess.run(
        [base_python, "-m", "venv", "--without-pip", str(target)], capture_output=True, text=True
    )
    if venv.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise EnvironmentBuildError(f"{name} environment: venv failed: {_errors(venv)}")
    python = target / "bin" / "python"
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index"]
    command += ["--find-links", str(wheels), "-r", str(wheels / "requirements.txt")]
    done = subprocess.run(command, capture_output=True, text=True, env=_offline_pip_env())
    if done.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        missing = re.findall(r"No matching distribution found for ([^\s|]+)", done.stderr)
        if missing:
            raise EnvironmentBuildError(
                f"{name} environment: the requirements are not a complete lock: {', '.join(missing)} "
                "is needed and has no pin of its own (add name==version lines for every dependency)"
            )
        raise EnvironmentBuildError(f"{name} environment: offline install failed: {_errors(done)}")
    (target / COMPLETE).write_text("\n".join(locked) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build suites' locked environments; print their interpreters."
    )
    parser.add_argument(
        "names", nargs="+", metavar="NAME|FILE", help="a shipped environment or a requirements file"
    )
    args = parser.parse_args(argv)
    for item in args.names:
        path = Path(item)
        try:
            text = path.read_text() if path.suffix == ".txt" or os.sep in item else shipped(item)
            print(ensure_environment(path.stem, text))
        except (EnvironmentBuildError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
