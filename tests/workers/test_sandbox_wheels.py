"""Bundled wheels install on both isolating backends, the same way, and nothing else installs (issue 14,
finding 7: pip unpacked a wheel that is a zip bomb without a limit, and ran the setup.py of an sdist or a
folder named in requirements.txt). Real bubblewrap and docker, wheels and sdists written by the tests.

The intake refuses most of this already (artifacts/bundled.py); these go straight to the backends'
`prepare`, as a submission that got past the intake would.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path

import pytest

from artifacts import archive
from queue_schema.states import StudyState
from tests.conftest import SUBMISSIONS
from tests.sandbox_helpers import run_launched, write_sdist, write_wheel
from workers.harness import run_one_study
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import install
from workers.sandbox.base import InstallFailed

pytestmark = [pytest.mark.usefixtures("state_dir"), pytest.mark.system]

BACKENDS = ["bwrap", "docker"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, state_dir):
    from workers.sandbox import SandboxUnavailable, select

    variable = f"BBO_REQUIRE_{request.param.upper()}"
    try:
        return select(request.param)
    except SandboxUnavailable as exc:
        if os.environ.get(variable) == "1":
            raise RuntimeError(
                f"{variable}=1 but the {request.param} backend is unavailable: {exc}"
            ) from None
        pytest.skip(f"{request.param} sandbox not available here: {exc}")


# -- a starter-kit zip with bundled wheels ------------------------------------------------------------

OPTIMIZER = """\
import os
import subprocess
import sys

import bbo_tiny_dep
import colorlog
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Bundled(AbstractOptimizer):
    primary_import = "bbo_tiny_dep"

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        print(f"TINY {bbo_tiny_dep.VALUE} from {bbo_tiny_dep.__file__}", file=sys.stderr, flush=True)
        print(f"SHADOW {getattr(colorlog, 'BUNDLED', 'preinstalled')}", file=sys.stderr, flush=True)
        path = {**os.environ, "PATH": "/install/bin:" + os.environ["PATH"]}
        script = subprocess.run(["bbo-tiny"], capture_output=True, text=True, env=path)
        print(f"SCRIPT {script.stdout.strip()} {script.stderr.strip()[-300:]}".strip(), file=sys.stderr)

    def suggest(self, n_suggestions=1):
        return bbo_tiny_dep.suggest(self.api_config, n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Bundled)
"""

TINY = """\
VALUE = 42


def main():
    print("tiny script", VALUE)


def suggest(api_config, n):
    import bayesmark.random_search as rs

    return rs.suggest_dict([], [], api_config, n_suggestions=n)
"""


@pytest.fixture(scope="module")
def starter_kit(tmp_path_factory) -> Path:
    """The starter kit's layout, zipped and unpacked as a worker does: optimizer.py, two wheels (one new
    package depending on numpy, which the image has, with a console script; one a newer version of a
    preinstalled package) and requirements.txt naming both."""
    from runtime.spec import load

    rules = load("demo").submission
    folder = tmp_path_factory.mktemp("kit") / "kit"
    folder.mkdir()
    (folder / "optimizer.py").write_text(OPTIMIZER)
    scripts = "[console_scripts]\nbbo-tiny = bbo_tiny_dep:main\n"
    files = {"bbo_tiny_dep/__init__.py": TINY, "bbo_tiny_dep-0.1.0.dist-info/entry_points.txt": scripts}
    write_wheel(folder, "bbo-tiny-dep", "0.1.0", files, requires=("numpy>=1.20",))
    write_wheel(folder, "colorlog", "99.0", {"colorlog/__init__.py": "BUNDLED = 'bundled 99.0'\n"})
    (folder / "requirements.txt").write_text("bbo-tiny-dep==0.1.0\ncolorlog==99.0\n")
    data = archive.pack(folder, rules)
    return archive.extract(data, tmp_path_factory.mktemp("unpacked") / "submission", rules)


@pytest.fixture(scope="module")
def plain_losses(state_dir, small_spec_module):
    """Random search on the process backend (no sandbox, nothing bundled): the reference."""
    from workers.sandbox.process import ProcessBackend

    process = ProcessBackend(allow_unsafe=True)
    found = {}
    for study in (0, 1):
        proc = OptimizerProcess(
            process.launch(SUBMISSIONS / "random_search", small_spec_module.limits)
        ).start()
        result = run_one_study(
            proc, "DT-iris-acc", study, small_spec_module, process.describe(), lambda _: None
        )
        found[study] = (result.losses, result.suggestions)
    return found


@pytest.fixture(scope="module")
def small_spec_module():
    import dataclasses

    from runtime.spec import load

    spec = load("demo")
    limits = dataclasses.replace(spec.limits, suggest_budget_s=30.0, call_timeout_s=10.0)
    return dataclasses.replace(spec, rounds=3, batch=3, limits=limits)


def test_starter_kit_with_wheels_scores_the_same_on_both_backends(
    backend, starter_kit, plain_losses, small_spec_module
):
    spec = small_spec_module
    prepared = backend.prepare(starter_kit, spec.limits)
    assert prepared.install is not None and not prepared.cached
    assert backend.prepare(starter_kit, spec.limits).cached  # once per content
    for study in (0, 1):
        result, lines = run_launched(
            backend, backend.launch(starter_kit, spec.limits), spec, "DT-iris-acc", study
        )
        assert not isinstance(result, BaseException), (result, lines[-10:])
        assert result.state == StudyState.COMPLETE and result.suggest_fallbacks == 0, lines[-10:]
        assert f"TINY 42 from {install.install_site('3.11')}/bbo_tiny_dep/__init__.py" in lines, lines[-10:]
        assert "SHADOW bundled 99.0" in lines  # the bundled version comes before the preinstalled one
        assert "SCRIPT tiny script 42" in lines  # its console script runs with the sandbox's interpreter
        assert (result.losses, result.suggestions) == plain_losses[study]
    # Installed read-only for every sandbox: root's, nothing writable by others.
    for current, dirs, files in os.walk(prepared.install):
        for name in [*dirs, *files]:
            info = os.lstat(os.path.join(current, name))
            assert info.st_uid == 0 and not info.st_mode & 0o022, (name, oct(info.st_mode))


# -- zip bombs ---------------------------------------------------------------------------------------


class Watch:
    """Samples, every 50 ms while a prepare runs: the bytes under the state folder's artifact cache (the
    worker's disk) and the machine's Shmem (tmpfs pages: where the install writes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.disk_peak = 0
        self.shmem_base = self._shmem()
        self.shmem_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _shmem() -> int:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _du(self) -> int:
        total = 0
        for current, _, files in os.walk(self.folder):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(current, name)).st_blocks * 512
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.disk_peak = max(self.disk_peak, self._du())
            self.shmem_peak = max(self.shmem_peak, self._shmem() - self.shmem_base)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        # 1.2 GB in three files, each under the per-file limit: the install's tmpfs fills up.
        (
            {f"bomb/part{i}.bin": 400 << 20 for i in range(3)},
            f"more than {install.INSTALL_MAX_MB} MB installed",
        ),
        # One file past the per-file limit.
        ({"bomb/one.bin": (install.INSTALL_FILE_SIZE_MB + 64) << 20}, "limit per installed file"),
    ],
    ids=["total", "one-file"],
)
def test_zip_bomb_wheel_fails_install_within_bounds(
    backend, small_spec, tmp_path, state_dir, members, message
):
    submission = tmp_path / "bomb"
    submission.mkdir()
    (submission / "optimizer.py").write_text((SUBMISSIONS / "random_search" / "optimizer.py").read_text())
    wheel = write_wheel(submission, "bomb", "1.0", {"bomb/__init__.py": ""}, big=members)
    assert wheel.stat().st_size < 8 << 20  # a few MB that unpack to more than a GB
    (submission / "requirements.txt").write_text("bomb==1.0\n")
    cache = state_dir / "sandbox" / "artifacts"
    started = time.monotonic()
    with Watch(cache) as watch, pytest.raises(InstallFailed) as failed:
        backend.prepare(submission, small_spec.limits)
    seconds = time.monotonic() - started
    print(
        f"{backend.name} {list(members)[0]}: {seconds:.1f} s, cache disk peak {watch.disk_peak >> 20} MB, "
        f"Shmem peak +{watch.shmem_peak >> 20} MB"
    )
    assert message in str(failed.value)
    assert seconds < 60
    # The worker's disk: the staged copy (the wheel itself) and nothing unpacked.
    assert watch.disk_peak < wheel.stat().st_size + (16 << 20), watch.disk_peak
    # Memory: at most the install tmpfs and pip's /tmp, whatever the wheel unpacks to.
    bound = (install.INSTALL_MAX_MB + install.INSTALL_TMP_MB + 64) << 20
    assert watch.shmem_peak < bound, watch.shmem_peak
    assert not list(cache.glob(f"*/{install.content_sha256(submission)}"))  # nothing cached


# -- sdists, folders, options: nothing is built ------------------------------------------------------


def _comms() -> set[str]:
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/comm") as handle:
                    found.add(handle.read().strip())
            except OSError:
                pass
    return found


class SetupWatch:
    """Looks for the marker a setup.py would name its process after (it sleeps 3 s with that name)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen = self.seen or self.marker in _comms()

    def __enter__(self) -> SetupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


SETUP_PY = """\
import time
with open("/proc/self/comm", "w") as handle:
    handle.write({marker!r})
time.sleep(3)
from setuptools import setup
setup(name="evilpkg", version="1.0", py_modules=[])
"""


def _with_sdist(tmp_path: Path, marker: str, line: str) -> Path:
    submission = tmp_path / "sdist"
    submission.mkdir()
    (submission / "optimizer.py").write_text((SUBMISSIONS / "random_search" / "optimizer.py").read_text())
    write_sdist(submission, "evilpkg", "1.0", SETUP_PY.format(marker=marker))
    (submission / "requirements.txt").write_text(line + "\n")
    return submission


def test_the_watch_sees_a_setup_py_that_runs(tmp_path):
    """The control: run outside any sandbox, the setup.py is seen."""
    import subprocess
    import sys

    marker = f"bbo{os.urandom(5).hex()}"
    project = _with_sdist(tmp_path, marker, "evilpkg") / "evilpkg"
    with SetupWatch(marker) as watch:
        subprocess.run([sys.executable, "setup.py", "--name"], cwd=project, capture_output=True, timeout=60)
    assert watch.seen


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("evilpkg", "No matching distribution"),  # only the sdist is bundled: pip finds no wheel
        ("evilpkg-1.0.tar.gz", "source distribution"),
        ("./evilpkg", "path"),
        ("evilpkg/", "path"),
        ("-e ./evilpkg", "option"),
        ("evilpkg @ file:///submission/evilpkg-1.0.tar.gz", "URL or VCS reference"),
        ("--no-binary :all:", "option"),
    ],
)
def test_requirement_naming_an_sdist_or_folder_fails_without_running_setup_py(
    backend, small_spec, tmp_path, line, reason
):
    marker = f"bbo{os.urandom(5).hex()}"
    submission = _with_sdist(tmp_path, marker, line)
    with SetupWatch(marker) as watch, pytest.raises(InstallFailed) as failed:
        backend.prepare(submission, small_spec.limits)
    assert reason in str(failed.value), str(failed.value)
    assert not watch.seen
    assert not re.search(r"/(root|home)/", str(failed.value))  # names nothing of the worker
