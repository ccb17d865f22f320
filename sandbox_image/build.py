"""Build the sandbox image without an image registry.

Three cached steps, each skipped when its result is already there:

1. a base image: the one asked for, or `python:3.11-slim` if the engine has it, or else a Debian bookworm
   root made with `debootstrap --variant=minbase` from the apt mirror this machine is configured with and
   `docker import`ed (tag `bbo-sandbox-base:bookworm-<hash>`);
2. a wheelhouse: `pip wheel` of sandbox_image/requirements.txt under the lock sandbox_image/constraints.txt,
   into <state dir>/sandbox/wheelhouse/<hash> (sdist-only packages such as bayesmark 0.0.8 are built into
   wheels here, on the host, which is why this is `pip wheel` rather than `pip download --only-binary`);
3. `docker build --network none` of sandbox_image/Dockerfile with that base and wheelhouse, tagged by
   content: `bbo-sandbox:<first 12 hex of the sha256 of Dockerfile, host.py, protocol.py, requirements.txt
   and constraints.txt>`. The image id (its digest) is recorded in <state dir>/sandbox/image.json and with
   every score (the docker backend's describe()).

Usable as a module (`build()`, `image_tag()`) and as `python -m sandbox_image.build [--base IMAGE]`;
operators use `bbo admin sandbox build`. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import queue_schema.protocol
from queue_schema.settings import cache_dir

HERE = Path(__file__).resolve().parent
IMAGE_REPO = "bbo-sandbox"
BASE_REPO = "bbo-sandbox-base"
OFFICIAL_BASE = "python:3.11-slim"
DEBOOTSTRAP = "debootstrap"  # --base value that forces the offline Debian base
AUTO = "auto"
SUITE = "bookworm"
DEBOOTSTRAP_INCLUDE = ("python3", "python3-venv", "ca-certificates")
MIRROR_ENV = "BBO_DEBIAN_MIRROR"
LABEL_RECIPE = "bbo-arena.recipe"
LABEL_BASE = "bbo-arena.base"

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """The image could not be built; the message is one line saying why and what to do."""


def _stderr(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


# -- content ---------------------------------------------------------------------------------------


def recipe_files() -> dict[str, Path]:
    """Build-context name -> source file: everything that decides what the image holds."""
    return {
        "Dockerfile": HERE / "Dockerfile",
        "host.py": HERE / "host.py",
        "protocol.py": Path(queue_schema.protocol.__file__).resolve(),
        "requirements.txt": HERE / "requirements.txt",
        "constraints.txt": HERE / "constraints.txt",
    }


def recipe_hash() -> str:
    digest = hashlib.sha256()
    for name, path in sorted(recipe_files().items()):
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def image_tag() -> str:
    """The tag of the image this source tree describes."""
    return f"{IMAGE_REPO}:{recipe_hash()[:12]}"


def _sandbox_dir() -> Path:
    # Not the state folder: these are rebuilt from the source tree and shared by every competition here.
    path = cache_dir() / "sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_path() -> Path:
    return _sandbox_dir() / "image.json"


def recorded() -> dict[str, Any] | None:
    """What the last build on this machine produced, if any."""
    try:
        return json.loads(record_path().read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """One build at a time per FOLDER (FOLDER/build.lock): two workers, tests or operators starting together
    wait for one build and share its result. The sandbox image's folder is <cache dir>/sandbox, the
    docker provider's worker image's <cache dir>/worker."""
    with open(folder / "build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- engine ----------------------------------------------------------------------------------------


def engine():  # -> docker.DockerClient
    """A client for an engine that answers, or BuildError saying how to start one."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as exc:
        raise BuildError(
            f"no Docker engine answers ({_first_line(exc)}); start one with `scripts/start-dockerd` "
            "(needs root and the docker.io package) or point DOCKER_HOST at one"
        ) from None
    return client


def find_image(client, name: str):
    """The engine's image called `name`, or None."""
    from docker.errors import ImageNotFound

    try:
        return client.images.get(name)
    except ImageNotFound:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# -- 1. base ---------------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian archive apt uses here (deb822 or one-line sources), or BBO_DEBIAN_MIRROR."""
    if os.environ.get(MIRROR_ENV):
        return os.environ[MIRROR_ENV].rstrip("/")
    candidates: list[str] = []
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (m.group(1).lower(), m.group(2).strip())
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
                )
                if SUITE in fields.get("suites", "").split():
                    candidates += fields.get("uris", "").split()
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2 and rest[1] == SUITE:
                        candidates.append(rest[0])
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def offline_base_tag() -> str:
    key = hashlib.sha256(f"{SUITE}|minbase|{','.join(DEBOOTSTRAP_INCLUDE)}".encode()).hexdigest()[:8]
    return f"{BASE_REPO}:{SUITE}-{key}"


def ensure_offline_base(client, log: Log = _stderr) -> str:
    """The debootstrap-made base, imported once and then reused by its tag."""
    tag = offline_base_tag()
    if find_image(client, tag) is not None:
        log(f"base image {tag} present")
        return tag
    if shutil.which("debootstrap") is None:
        raise BuildError(
            "debootstrap is not installed (apt-get install -y debootstrap), and the offline base image "
            f"{tag} is missing; or pass --base with an image that has Python 3.11"
        )
    if os.geteuid() != 0:
        raise BuildError(f"making the offline base image {tag} with debootstrap needs root")
    mirror = debian_mirror()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="base-", dir=_sandbox_dir()))
    try:
        root = work / "root"
        log(f"debootstrap --variant=minbase {SUITE} from {mirror} (about a minute)")
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
            SUITE,
            str(root),
            mirror,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise BuildError(f"debootstrap failed (code {done.returncode}): {' | '.join(tail)}")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        for cache in (root / "var/cache/apt").glob("*.bin"):
            cache.unlink()
        archive = work / "root.tar"
        log(f"importing the root as {tag}")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(archive), "."], check=True)
        client.api.import_image_from_file(
            str(archive),
            repository=tag.split(":")[0],
            tag=tag.split(":")[1],
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
            ],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if find_image(client, tag) is None:
        raise BuildError(f"docker import did not produce {tag}")
    log(f"base image {tag} ready in {time.monotonic() - started:.0f} s")
    return tag


def resolve_base(client, base: str, log: Log = _stderr) -> str:
    """`auto`: the official slim image if the engine already has it, else the offline base (no pulls)."""
    if base == AUTO:
        if find_image(client, OFFICIAL_BASE) is not None:
            log(f"base image {OFFICIAL_BASE} present")
            return OFFICIAL_BASE
        return ensure_offline_base(client, log)
    if base == DEBOOTSTRAP:
        return ensure_offline_base(client, log)
    if find_image(client, base) is None:
        from docker.errors import DockerException

        log(f"pulling base image {base}")
        try:
            client.images.pull(base)
        except DockerException as exc:
            raise BuildError(
                f"base image {base} is not here and cannot be pulled ({_first_line(exc)}); "
                "leave --base out to build an offline Debian base with debootstrap"
            ) from None
    return base


# -- 2. wheelhouse ---------------------------------------------------------------------------------


def check_host_python() -> None:
    # pip wheel picks binary wheels for the interpreter running it; they must suit the image's Python.
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or platform.machine() != "x86_64":
        raise BuildError(
            "the wheelhouse is made with this interpreter's pip and must match the image "
            f"(CPython 3.11, Linux x86_64); this is {platform.python_implementation()} "
            f"{platform.python_version()} on {sys.platform} {platform.machine()}"
        )


def wheelhouse_key() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "constraints.txt"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:12]


def ensure_wheelhouse(log: Log = _stderr) -> Path:
    """Every wheel the image installs, fetched once per requirements+lock and reused."""
    target = _sandbox_dir() / "wheelhouse" / wheelhouse_key()
    if (target / ".complete").is_file():
        log(f"wheelhouse {target} present")
        return target
    check_host_python()
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log(f"pip wheel into {target} (a few hundred MB)")
    _pip_wheel(partial, constrained=True)
    wheels = sorted(p.name for p in partial.glob("*.whl"))
    (partial / ".complete").write_text("\n".join(wheels) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    log(f"wheelhouse ready: {len(wheels)} wheels in {time.monotonic() - started:.0f} s")
    return target


def sandbox_venv_dir() -> Path:
    return _sandbox_dir() / "venv" / wheelhouse_key()


def sandbox_python() -> str | None:
    """The interpreter of the optimizer environment built for the bwrap backend, if it is complete."""
    target = sandbox_venv_dir()
    python = target / "bin" / "python"
    return str(python) if (target / ".complete").is_file() and python.exists() else None


def ensure_sandbox_venv(log: Log = _stderr) -> Path:
    """The image's optimizer environment as a venv on this host, for the bwrap backend (no engine needed).

    Installed from the same locked wheelhouse as the image, so a study sees the same packages under both
    backends; the worker's own venv stays free of the participants' libraries.
    """
    target = sandbox_venv_dir()
    if (target / ".complete").is_file():
        log(f"sandbox venv {target} present")
        return target
    wheels = ensure_wheelhouse(log)
    started = time.monotonic()
    shutil.rmtree(target, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    log(f"creating the sandbox venv {target}")
    steps = [
        [base_python, "-m", "venv", str(target)],
        [
            str(target / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheels),
            "-r",
            str(HERE / "requirements.txt"),
            "-c",
            str(HERE / "constraints.txt"),
        ],
    ]
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            raise BuildError(f"sandbox venv: {' | '.join(errors[-3:]) or done.stderr.strip()[-300:]}")
    # The sandbox runs as an unprivileged uid: everything must be readable, nothing writable.
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    (target / ".complete").write_text(wheelhouse_key() + "\n")
    log(f"sandbox venv ready in {time.monotonic() - started:.0f} s")
    return target


def _pip_wheel(into: Path, constrained: bool) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--progress-bar", "off"]
    command += ["--wheel-dir", str(into), "-r", str(HERE / "requirements.txt")]
    if constrained:
        command += ["-c", str(HERE / "constraints.txt")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise BuildError(f"pip wheel failed: {' | '.join(errors[-3:]) or done.stderr.strip()[-300:]}")


def relock(log: Log = _stderr) -> Path:
    """Resolve requirements.txt afresh and write every resulting version to constraints.txt."""
    check_host_python()
    with tempfile.TemporaryDirectory(prefix="relock-") as tmp:
        _pip_wheel(Path(tmp), constrained=False)
        pins = sorted(_wheel_pin(p.name) for p in Path(tmp).glob("*.whl"))
    header = (
        "# The sandbox image's complete lock: every package the image installs, at one version.\n"
        "# Generated from requirements.txt by `python -m sandbox_image.build relock`; edit requirements.txt\n"
        "# and relock rather than editing this file. It is part of the image's content tag.\n"
    )
    path = HERE / "constraints.txt"
    path.write_text(header + "".join(f"{pin}\n" for pin in pins))
    log(f"wrote {len(pins)} pins to {path}")
    return path


def _wheel_pin(filename: str) -> str:
    name, version = filename.split("-")[:2]
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


# -- 3. image --------------------------------------------------------------------------------------


def build(base: str = AUTO, force: bool = False, log: Log = _stderr) -> dict[str, Any]:
    """Make sure the content-tagged image exists; return (and record) what it is."""
    client = engine()
    tag = image_tag()
    with build_lock(_sandbox_dir()):
        image = find_image(client, tag)
        wanted = offline_base_tag() if base == DEBOOTSTRAP else base
        if image is not None and not force and wanted in (AUTO, image.labels.get(LABEL_BASE)):
            log(f"image {tag} present ({image.id[:19]})")
            return _record(image, tag, seconds=0.0, reused=True)
        started = time.monotonic()
        base_image = resolve_base(client, base, log)
        wheels = ensure_wheelhouse(log)
        context = Path(tempfile.mkdtemp(prefix="context-", dir=_sandbox_dir()))
        try:
            for name, source in recipe_files().items():
                shutil.copy2(source, context / name)
            link_tree(wheels, context / "wheels")
            log(f"docker build {tag} FROM {base_image} (network: none)")
            labels = {LABEL_RECIPE: recipe_hash(), LABEL_BASE: base_image}
            docker_build(client, context, tag, {"BASE": base_image}, labels, log)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        image = find_image(client, tag)
        if image is None:
            raise BuildError(f"docker build finished but {tag} is missing")
        seconds = time.monotonic() - started
        log(f"image {tag} built in {seconds:.0f} s: {image.id[:19]}, {image.attrs['Size'] / 1e6:.0f} MB")
        drop_superseded(client, IMAGE_REPO, tag, log)
        return _record(image, tag, seconds=seconds, reused=False)


def drop_superseded(client, repo: str, keep: str, log: Log) -> None:
    """Untag the repository's images of older recipes; the engine refuses while a container still uses
    one. Shared with the worker image (autoscaler/providers/docker_image.py)."""
    from docker.errors import DockerException

    for image in client.images.list(name=repo):
        for old in image.tags:
            if old.startswith(f"{repo}:") and old != keep:
                try:
                    client.images.remove(old)
                    log(f"removed superseded image {old}")
                except DockerException:
                    pass


def link_tree(source: Path, target: Path) -> None:
    """The wheels of `source` in a new folder `target`, hard-linked where the file system allows."""
    target.mkdir()
    for item in source.glob("*.whl"):
        try:
            os.link(item, target / item.name)
        except OSError:
            shutil.copy2(item, target / item.name)


def docker_build(
    client, context: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str], log: Log
) -> None:
    """`docker build --network none` of a prepared context, nothing pulled; each step to `log`, a
    failure as one BuildError line with the last output. Shared with the worker image."""
    from docker.errors import DockerException

    recent: list[str] = []
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=buildargs,
            labels=labels,
            network_mode="none",
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            use_config_proxy=False,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = " | ".join(line for line in recent[-3:] if line)
                message = chunk["error"].strip()[:300]
                raise BuildError(f"docker build failed: {message} (last output: {detail})")
            text = chunk.get("stream", "").rstrip()
            if text:
                recent.append(text[-300:])
                if text.startswith("Step "):
                    log(text)
    except DockerException as exc:
        raise BuildError(f"docker build failed: {_first_line(exc)}") from None


def _record(image, tag: str, seconds: float, reused: bool) -> dict[str, Any]:
    record = {
        "tag": tag,
        "image_id": image.id,
        "recipe": image.labels.get(LABEL_RECIPE, ""),
        "base": image.labels.get(LABEL_BASE, ""),
        "size_bytes": int(image.attrs.get("Size", 0)),
        "created": image.attrs.get("Created", ""),
        "build_seconds": round(seconds, 1),
        "reused": reused,
    }
    tmp = record_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(record_path())
    return record


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sandbox_image.build", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=("build", "relock"), default="build")
    parser.add_argument("--base", default=AUTO, help="base image, 'auto' (default) or 'debootstrap'")
    parser.add_argument("--force", action="store_true", help="rebuild even if the tagged image exists")
    args = parser.parse_args(argv)
    try:
        if args.command == "relock":
            relock()
        else:
            print(json.dumps(build(args.base, args.force), indent=2))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
