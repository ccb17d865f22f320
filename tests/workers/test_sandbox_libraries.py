"""Submissions that use the preinstalled 2020 optimizer libraries score in both isolating sandboxes."""

from __future__ import annotations

import pytest

from queue_schema.states import StudyState
from tests.conftest import SUBMISSIONS
from workers.harness import run_one_study
from workers.optimizer_process import OptimizerProcess

pytestmark = pytest.mark.system


def backend(name: str):
    from workers.sandbox import SandboxUnavailable, select

    try:
        return select(name)
    except SandboxUnavailable as exc:
        pytest.skip(f"{name} sandbox not available here: {exc}")


@pytest.mark.usefixtures("state_dir")
@pytest.mark.parametrize("sandbox", ["bwrap", "docker"])
@pytest.mark.parametrize("submission", ["uses_skopt", "uses_hyperopt"])
def test_optimizer_libraries_are_there(small_spec, sandbox, submission):
    chosen = backend(sandbox)
    lines: list[str] = []
    proc = OptimizerProcess(
        chosen.launch(SUBMISSIONS / submission, small_spec.limits), log=lines.append
    ).start()
    result = run_one_study(proc, "DT-iris-acc", 0, small_spec, chosen.describe(), lines.append)
    assert result.state == StudyState.COMPLETE, lines[-10:]
    assert result.suggest_fallbacks == 0, lines[-20:]  # the library worked: no random fallback batches
    assert len(result.losses) == small_spec.rounds
