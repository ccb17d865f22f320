"""One study through the protocol and the process backend, with well-behaved and hostile optimizers."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from bayesmark.experiment import run_study

from queue_schema.states import FailureCause, StudyState
from suites.bayesmark_suite import BayesmarkObjective
from tests.conftest import SUBMISSIONS
from workers.harness import FatalOptimizerError, obfuscated_names, run_one_study
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import select


def run(name: str, spec, problem: str = "DT-iris-acc", study: int = 0, log=None):
    backend = select("process")
    lines: list[str] = [] if log is None else log
    proc = OptimizerProcess(backend.launch(SUBMISSIONS / name, spec.limits), log=lines.append).start()
    return run_one_study(proc, problem, study, spec, backend.describe(), lines.append), lines


@pytest.mark.usefixtures("state_dir", "unsafe_ok")
class TestWellBehaved:
    def test_random_search_completes(self, small_spec):
        result, _ = run("random_search", small_spec)
        assert result.state == StudyState.COMPLETE
        assert [len(r) for r in result.losses] == [3, 3, 3]
        assert all(v is not None and v < 0 for r in result.losses for v in r)  # accuracy losses are negative
        assert len(result.suggestions) == 3 and set(result.suggestions[0][0]) >= {"max_depth"}

    def test_same_points_same_losses_as_in_process_bayesmark(self, small_spec):
        """Evaluations are seeded: replaying the study's points in-process gives identical losses."""
        result, _ = run("random_search", small_spec, problem="RF-iris-acc")
        replay = BayesmarkObjective("RF-iris-acc", 0, small_spec.batch)
        points = [p for r in result.suggestions for p in r]

        class Replay:
            def __init__(self):
                self.i = 0

            def suggest(self, n):
                out = points[self.i : self.i + n]
                self.i += n
                return out

            def observe(self, X, y):
                pass

        evals, _, _ = run_study(Replay(), replay, small_spec.rounds, small_spec.batch, n_obj=2)
        assert np.array_equal(evals[:, :, 0], np.array(result.losses))

    def test_prints_do_not_break_the_protocol(self, small_spec):
        result, lines = run("chatty", small_spec)
        assert result.state == StudyState.COMPLETE
        joined = "\n".join(lines)
        assert "hello from import time" in joined and "raw write to fd 1" in joined and "suggesting" in joined

    def test_bundled_module_is_importable(self, small_spec):
        result, _ = run("bundled_module", small_spec)
        assert result.state == StudyState.COMPLETE

    def test_suggest_raising_falls_back_to_random_and_observe_raising_is_ignored(self, small_spec):
        result, _ = run("suggest_raises", small_spec)
        assert result.state == StudyState.COMPLETE
        assert result.suggest_fallbacks == 1  # round 2 of 3
        assert result.observe_errors == 3
        assert all(len(r) == small_spec.batch for r in result.losses)

    def test_obfuscated_names_hide_and_restore_parameters(self, small_spec):
        spec = dataclasses.replace(small_spec, obfuscate_names=True)
        result, _ = run("random_search", spec)
        assert result.state == StudyState.COMPLETE
        assert "max_depth" in result.suggestions[0][0]  # stored under real names
        aliases = obfuscated_names("DT-iris-acc", BayesmarkObjective("DT-iris-acc", 0, 3).get_api_config())
        assert sorted(aliases.values()) == [f"x{i}" for i in range(len(aliases))]


@pytest.mark.usefixtures("state_dir", "unsafe_ok")
class TestHostile:
    @pytest.mark.parametrize(
        ("name", "cause", "needle"),
        [
            ("no_class", FailureCause.INVALID_SUBMISSION, "never passed an optimizer class"),
            ("bad_import", FailureCause.INVALID_SUBMISSION, "a_package_nobody_installed"),
            ("syntax_error", FailureCause.INVALID_SUBMISSION, "syntax error"),
            ("ctor_raises", FailureCause.OPTIMIZER_CRASHED, "constructor exploded"),
            ("wrong_batch", FailureCause.OPTIMIZER_CRASHED, "wrong number of points"),
            ("out_of_bounds", FailureCause.OPTIMIZER_CRASHED, "out of range"),
            ("exits", FailureCause.OPTIMIZER_CRASHED, "exited with code 7"),
        ],
    )
    def test_fatal_errors_have_typed_causes(self, small_spec, name, cause, needle):
        with pytest.raises(FatalOptimizerError) as info:
            run(name, small_spec)
        assert info.value.cause == cause
        assert needle in info.value.message

    def test_hung_optimizer_is_killed_and_study_cut_off(self, small_spec):
        limits = dataclasses.replace(small_spec.limits, call_timeout_s=2.0, suggest_budget_s=30.0)
        spec = dataclasses.replace(small_spec, rounds=4, limits=limits)
        started = time.monotonic()
        result, lines = run("slow", spec)
        assert time.monotonic() - started < 20
        assert result.state == StudyState.CUT_OFF
        assert len(result.losses) == 2  # the rounds before the hang stand
        assert "call timeout" in result.cut_off_reason

    def test_study_budget_cuts_off(self, small_spec):
        limits = dataclasses.replace(small_spec.limits, call_timeout_s=3.0, suggest_budget_s=3.0)
        spec = dataclasses.replace(small_spec, rounds=4, limits=limits)
        result, _ = run("slow", spec)
        assert result.state == StudyState.CUT_OFF
        assert "budget" in result.cut_off_reason


def test_process_backend_refused_without_opt_in(monkeypatch):
    from workers.sandbox import SandboxRefused

    monkeypatch.delenv("BBO_ALLOW_UNSAFE_SANDBOX", raising=False)
    with pytest.raises(SandboxRefused, match="BBO_ALLOW_UNSAFE_SANDBOX"):
        select("process")


@pytest.mark.usefixtures("state_dir", "unsafe_ok")
def test_host_loads_a_starter_kit_zip_directly(small_spec, tmp_path):
    from artifacts import archive
    from workers.optimizer_process import LaunchSpec

    upload = tmp_path / "upload.zip"
    upload.write_bytes(archive.pack(SUBMISSIONS / "bundled_module", small_spec.submission))
    launch = select("process").launch(SUBMISSIONS / "random_search", small_spec.limits)
    zipped = LaunchSpec(
        argv=[*launch.argv[:-1], str(upload)], env=launch.env, cwd=launch.cwd, cleanup=launch.cleanup
    )
    proc = OptimizerProcess(zipped).start()
    result = run_one_study(proc, "DT-iris-acc", 0, small_spec, {"backend": "process"}, lambda line: None)
    assert result.state == StudyState.COMPLETE


@pytest.mark.usefixtures("state_dir", "unsafe_ok")
def test_a_call_after_the_sandbox_was_killed_from_outside_is_a_dead_optimizer(small_spec):
    """A stop kills the sandbox between two calls (during an evaluation): the next call must say the
    optimizer is dead, not raise a ValueError that bayesmark would take for a failing suggest and answer
    with random suggestions for the rest of the study."""
    from workers.optimizer_process import OptimizerDied

    proc = OptimizerProcess(select("process").launch(SUBMISSIONS / "random_search", small_spec.limits))
    proc.start()
    proc.wait_hello(small_spec.limits.call_timeout_s)
    proc.kill()
    with pytest.raises(OptimizerDied):
        proc.call({"op": "suggest", "n": 1}, 5)


@pytest.mark.usefixtures("state_dir", "unsafe_ok")
def test_stderr_is_kept_up_to_the_specs_share_per_study_and_made_safe(small_spec):
    """4 MiB of stderr with terminal escapes: the log keeps spec.logs.study_kb of it, escapes made
    visible, and says how much was dropped."""
    spec = dataclasses.replace(small_spec, logs=dataclasses.replace(small_spec.logs, study_kb=16))
    result, lines = run("stderr_flood", spec)
    assert result.state == StudyState.COMPLETE
    kept = [line for line in lines if not line.startswith("[harness]")]
    assert 15 * 1024 <= sum(len(line) + 1 for line in kept) <= (16 + 8) * 1024
    assert not any("\x1b" in line or "\x07" in line for line in lines)
    assert any("␛]0;owned" in line for line in kept)
    assert any("optimizer stderr truncated" in line and "bytes dropped" in line for line in lines)
