"""Build the worker image of the `docker` provider without an image registry, like the sandbox image.

The image is this source tree's bbo-arena installed with the exact versions of its runtime dependencies
that the host's own environment runs (the lock: the dependency closure of the installed bbo-arena, read
from this interpreter's metadata), plus the host's docker command-line client, so that the worker inside
starts each study's sandbox as a sibling container on the host engine (docs/providers/docker.md).

Steps, each cached:
1. the base image of the sandbox image (sandbox_image.build.resolve_base: python:3.11-slim if the engine
   has it, else the offline debootstrap base);
2. a wheelhouse of the pinned dependencies (`pip wheel --no-deps` of the pins, from the pip cache or PyPI)
   in <cache dir>/worker/wheelhouse/<hash of the pins>;
3. the dependencies image `bbo-worker-deps:<hash of the pins, base and docker client>`: the pins installed
   into /opt/venv by `docker build --network none`, plus the docker client; built once per set of pins;
4. the worker image on top of it: a wheel of the project built from a snapshot of exactly the files its
   wheel holds (the source tree is never written), installed by `docker build --network none`, tagged by
   content: `bbo-worker:<12 hex of the sha256 of the snapshot, the pins, the Dockerfiles and the docker
   client>`. A source change rebuilds only this small image (no wheelhouse upload, no big layer).
The sandbox image is built first too (the worker's studies need it on the same engine).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from queue_schema.settings import cache_dir
from sandbox_image import build as sandbox_build
from sandbox_image.build import AUTO, BuildError, Log

IMAGE_REPO = "bbo-worker"
DEPS_REPO = "bbo-worker-deps"
LABEL_RECIPE = "bbo-arena.recipe"
LABEL_SANDBOX = "bbo-arena.sandbox-image"  # the sandbox image the worker's studies run in
PROJECT = "bbo-arena"
ROOT = Path(__file__).resolve().parents[2]
IMAGE_PYTHON = "3.11.2"  # the oldest Python a base may have: the offline Debian bookworm base's

# Two images, so that a source change neither uploads the wheelhouse again nor touches the big layer:
# the dependencies (once per set of pins and base), then the project on top.
DEPS_DOCKERFILE = """\
# The docker provider's worker, part 1: bbo-arena's pinned dependencies from the wheelhouse in the build
# context (built with --network none), and the docker client for the sibling sandbox containers.
ARG BASE=python:3.11-slim
FROM ${BASE} AS install
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null
COPY pins.txt /build/
COPY wheels/ /build/wheels/
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \\
 && python3 -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip install --quiet --no-index --no-deps --find-links /build/wheels \\
        -r /build/pins.txt

FROM ${BASE}
ENV LANG=C.UTF-8 \\
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null \\
    GIT_PYTHON_REFRESH=quiet
COPY --from=install /opt/venv /opt/venv
COPY docker /usr/local/bin/docker
"""

DOCKERFILE = """\
# The docker provider's worker, part 2: bbo-arena itself on its dependencies. pip compiles the bytecode
# as it installs (the root is read-only at run time); pip check proves the pins complete and consistent.
ARG DEPS
FROM ${DEPS}
COPY project/ /build/project/
RUN /opt/venv/bin/python -m pip install --quiet --no-index --no-deps /build/project/*.whl \\
 && rm -rf /build \\
 && /opt/venv/bin/python -m pip check \\
 && /opt/venv/bin/python -c 'import workers.job, bayesmark.experiment, docker' \\
 && docker --version
WORKDIR /tmp
CMD ["bbo", "admin", "worker"]
"""


def _stderr(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _worker_dir() -> Path:
    path = cache_dir() / "worker"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- content ---------------------------------------------------------------------------------------


def pins() -> list[str]:
    """`name==version` of every runtime dependency of the installed bbo-arena, recursively, as installed
    here: the worker in the image runs what the host's workers run."""
    found: dict[str, str] = {}
    todo = [Requirement(req) for req in metadata.requires(PROJECT) or []]
    while todo:
        req = todo.pop()
        here = req.marker is None or req.marker.evaluate({"extra": ""})
        # The image's Python may be an older 3.11 than ours (debootstrap's is 3.11.2): what only it needs
        # (redis wants async-timeout before 3.11.3) is not installed here, so it comes at its newest
        # matching version.
        older = {"extra": "", "python_full_version": IMAGE_PYTHON}
        there = req.marker is None or req.marker.evaluate(older)
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if not (here or there) or key in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            if here:
                raise BuildError(
                    f"{req.name}, needed by bbo-arena, is not installed; run scripts/setup"
                ) from None
            found[key] = f"{key}{req.specifier}"
            continue
        found[key] = f"{key}=={dist.version}"
        todo += [Requirement(sub) for sub in dist.requires or []]
    return sorted(found.values())


def project_files() -> dict[str, Path]:
    """Relative path -> file, for exactly what the project's wheel holds (pyproject's packages and
    package data) and what building it reads."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    files = {"pyproject.toml": ROOT / "pyproject.toml", "README.md": ROOT / "README.md"}
    for package in setuptools["packages"]:
        folder = ROOT / package.replace(".", "/")
        patterns = ["*.py", *setuptools.get("package-data", {}).get(package, [])]
        for pattern in patterns:
            for path in folder.glob(pattern):
                if path.is_file():
                    files[path.relative_to(ROOT).as_posix()] = path
    return dict(sorted(files.items()))


def docker_cli() -> Path:
    found = shutil.which("docker")
    if found is None:
        raise BuildError("the docker command-line client is not installed here (apt-get install docker.io)")
    return Path(found).resolve()


def snapshot() -> dict[str, bytes]:
    """The project's files, read once: the tag and the wheel describe the same bytes even while the tree
    is being edited."""
    return {rel: path.read_bytes() for rel, path in project_files().items()}


def recipe_hash(project: dict[str, bytes] | None = None) -> str:
    digest = hashlib.sha256()
    parts = {f"project/{rel}": data for rel, data in (project or snapshot()).items()}
    parts["pins.txt"] = "\n".join(pins()).encode()
    parts["Dockerfile"] = DOCKERFILE.encode()
    parts["deps.Dockerfile"] = DEPS_DOCKERFILE.encode()
    parts["docker"] = docker_cli().read_bytes()
    for name, data in sorted(parts.items()):
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def image_tag() -> str:
    """The tag of the worker image this source tree (and this host's environment) describes."""
    return f"{IMAGE_REPO}:{recipe_hash()[:12]}"


# -- wheels ----------------------------------------------------------------------------------------


def ensure_wheelhouse(log: Log = _stderr) -> Path:
    """The pinned dependencies as wheels, made once per set of pins."""
    lock = "\n".join(pins()) + "\n"
    target = _worker_dir() / "wheelhouse" / hashlib.sha256(lock.encode()).hexdigest()[:12]
    if (target / ".complete").is_file():
        log(f"wheelhouse {target} present")
        return target
    sandbox_build.check_host_python()
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "pins.txt").write_text(lock)
    log(f"pip wheel of {lock.count(chr(10))} pinned packages into {target}")
    _run_pip(["wheel", "--no-deps", "--wheel-dir", str(partial), "-r", str(partial / "pins.txt")])
    (partial / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    log(f"wheelhouse ready in {time.monotonic() - started:.0f} s")
    return target


def _project_wheel(project: dict[str, bytes], into: Path, log: Log) -> None:
    """A wheel of the project from a staged copy of its files (setuptools writes build/ beside them)."""
    with tempfile.TemporaryDirectory(prefix="project-", dir=_worker_dir()) as tmp:
        staged = Path(tmp) / "src"
        for rel, data in project.items():
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)
        log("building the bbo-arena wheel")
        _run_pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(into), str(staged)])


def _run_pip(args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", *args, "--quiet", "--progress-bar", "off"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise BuildError(f"pip {args[0]} failed: {' | '.join(errors[-3:]) or done.stderr.strip()[-300:]}")


# -- image -----------------------------------------------------------------------------------------


def build(base: str = AUTO, force: bool = False, log: Log = _stderr) -> dict[str, Any]:
    """Make sure the content-tagged worker image (and the sandbox image its studies need) exist on the
    engine; return what the worker image is. Reuses a present image in well under a second."""
    sandbox = sandbox_build.build(base=base, log=log)
    client = sandbox_build.engine()
    project = snapshot()
    recipe = recipe_hash(project)
    tag = f"{IMAGE_REPO}:{recipe[:12]}"
    with sandbox_build.build_lock(_worker_dir()):
        image = sandbox_build.find_image(client, tag)
        if image is not None and not force:
            log(f"image {tag} present ({image.id[:19]}, {image.attrs['Size'] / 1e6:.0f} MB)")
            return _describe(image, tag, seconds=0.0, reused=True)
        return _build(client, base, tag, recipe, project, sandbox["tag"], log)


def _build(
    client, base: str, tag: str, recipe: str, project: dict[str, bytes], sandbox_tag: str, log: Log
) -> dict[str, Any]:
    started = time.monotonic()
    deps = _ensure_deps(client, sandbox_build.resolve_base(client, base, log), log)
    context = Path(tempfile.mkdtemp(prefix="context-", dir=_worker_dir()))
    try:
        (context / "Dockerfile").write_text(DOCKERFILE)
        (context / "project").mkdir()
        _project_wheel(project, context / "project", log)
        log(f"docker build {tag} FROM {deps} (network: none)")
        labels = {LABEL_RECIPE: recipe, LABEL_SANDBOX: sandbox_tag}
        sandbox_build.docker_build(client, context, tag, {"DEPS": deps}, labels, log)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    image = sandbox_build.find_image(client, tag)
    if image is None:
        raise BuildError(f"docker build finished but {tag} is missing")
    seconds = time.monotonic() - started
    log(f"image {tag} built in {seconds:.0f} s: {image.id[:19]}, {image.attrs['Size'] / 1e6:.0f} MB")
    sandbox_build.drop_superseded(client, IMAGE_REPO, tag, log)
    return _describe(image, tag, seconds=seconds, reused=False)


def _ensure_deps(client, base_image: str, log: Log) -> str:
    """The dependencies image for these pins on this base, built once."""
    cli = docker_cli()
    digest = hashlib.sha256()
    for part in ("\n".join(pins()).encode(), DEPS_DOCKERFILE.encode(), base_image.encode(), cli.read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    tag = f"{DEPS_REPO}:{digest.hexdigest()[:12]}"
    if sandbox_build.find_image(client, tag) is not None:
        log(f"dependencies image {tag} present")
        return tag
    wheels = ensure_wheelhouse(log)
    context = Path(tempfile.mkdtemp(prefix="deps-", dir=_worker_dir()))
    try:
        (context / "Dockerfile").write_text(DEPS_DOCKERFILE)
        shutil.copy2(wheels / "pins.txt", context / "pins.txt")
        sandbox_build.link_tree(wheels, context / "wheels")
        shutil.copy2(cli, context / "docker")
        log(f"docker build {tag} FROM {base_image} (network: none; installs every pinned package)")
        sandbox_build.docker_build(client, context, tag, {"BASE": base_image}, {}, log)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    sandbox_build.drop_superseded(client, DEPS_REPO, tag, log)
    return tag


def _describe(image, tag: str, seconds: float, reused: bool) -> dict[str, Any]:
    return {
        "tag": tag,
        "image_id": image.id,
        "sandbox_image": image.labels.get(LABEL_SANDBOX, ""),
        "size_bytes": int(image.attrs.get("Size", 0)),
        "build_seconds": round(seconds, 1),
        "reused": reused,
    }


if __name__ == "__main__":  # python -m autoscaler.providers.docker_image
    try:
        print(build())
    except BuildError as exc:
        sys.exit(f"error: {exc}")
