"""Running one study in a sandbox for the backend tests, recording what the backend says of its end."""

from __future__ import annotations

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
