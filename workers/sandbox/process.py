"""The `process` backend: the optimizer in a plain child process. No isolation: development only."""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from queue_schema.settings import UNSAFE_SANDBOX_ENV, state_dir, unsafe_sandbox_allowed
from runtime.spec import Limits
from workers.optimizer_process import LaunchSpec
from workers.sandbox.base import THREAD_ENV, SandboxRefused


class ProcessBackend:
    name = "process"

    def __init__(self, *, allow_unsafe: bool = False) -> None:
        # `allow_unsafe`: the caller runs code it owns on its own machine (`bbo validate`), so the
        # environment opt-in that guards the service's workers does not apply.
        if not (allow_unsafe or unsafe_sandbox_allowed()):
            raise SandboxRefused(
                f"the process backend runs participant code without isolation; set {UNSAFE_SANDBOX_ENV}=1 "
                "to allow it (development only)"
            )

    def prepare(self, submission_dir: Path, limits: Limits) -> None:
        return None

    def launch(self, submission_dir: Path, limits: Limits) -> LaunchSpec:
        # Each study gets its own copy of the submission and its own HOME/TMPDIR, so at least the files
        # one study writes are not there for the next.
        launched, study_dir = self._launch(limits, warm=False)
        shutil.copytree(submission_dir, study_dir, symlinks=False, dirs_exist_ok=True)
        return launched

    def launch_warm(self, limits: Limits) -> LaunchSpec:
        """A host started before its submission is known, whose `fill` copies it in (see host.py --warm)."""
        launched, study_dir = self._launch(limits, warm=True)

        def fill(submission_dir: Path) -> bool:
            shutil.copytree(submission_dir, study_dir, symlinks=False, dirs_exist_ok=True)
            return True

        launched.fill = fill
        return launched

    def _launch(self, limits: Limits, warm: bool) -> tuple[LaunchSpec, Path]:
        work = Path(tempfile.mkdtemp(prefix="study-", dir=_scratch()))
        study_dir = work / "submission"
        study_dir.mkdir()
        home = work / "home"
        home.mkdir()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(home),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            **THREAD_ENV,
        }
        file_size = limits.file_size_mb * 1024 * 1024

        def limit_child() -> None:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

        launched = LaunchSpec(
            argv=[
                sys.executable,
                "-I",
                "-m",
                "sandbox_image.host",
                *(["--warm"] if warm else []),
                str(study_dir),
            ],
            env=env,
            cwd=str(work),
            cleanup=lambda: shutil.rmtree(work, ignore_errors=True),
            preexec=limit_child,
        )
        return launched, study_dir

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "python": sys.version.split()[0]}


def _scratch() -> Path:
    path = state_dir() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
