"""Run one study: bayesmark's own study loop and objective in the worker, the optimizer in its sandbox.

`RemoteOptimizer` stands in for the participant's optimizer inside `bayesmark.experiment.run_study`, so
bayesmark's semantics hold as they are: a suggest that raises gives a random batch, an observe that raises
is ignored, an objective that raises gives inf, a wrong batch size or an out-of-range point is fatal.
Time limits and a dying sandbox are signalled with BaseException subclasses, which run_study's
`except Exception` does not swallow.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from bayesmark.experiment import run_study

from baselines.objective import SeededProblem
from competition.provenance import scoring_packages, study_seeds
from competition.spec import Spec
from queue_schema import protocol
from queue_schema.payloads import StudyResult
from queue_schema.seeds import optimizer_seed
from queue_schema.states import FailureCause, StudyState
from workers.optimizer_process import CallTimeout, OptimizerDied, OptimizerProcess, ProtocolViolation

# A killed process reports -SIGKILL (137 through a container runtime); when we did not kill it, the
# kernel's OOM killer or a cgroup did.
_SIGKILL = -9


class StudyCutOff(BaseException):  # noqa: N818 - a control-flow signal, not an error
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FatalOptimizerError(BaseException):
    """The submission cannot be scored: stop the whole batch with this cause."""

    def __init__(self, cause: FailureCause, message: str) -> None:
        self.cause = cause
        self.message = message
        super().__init__(f"{cause.value}: {message}")


class SandboxInfrastructureError(BaseException):
    """Our infrastructure lost the sandbox (engine gone, container vanished): retried, not charged."""


class OptimizerRaised(Exception):
    """The optimizer's own suggest/observe raised: bayesmark falls back (random batch) or ignores it."""


def obfuscated_names(problem: str, api_config: dict[str, Any]) -> dict[str, str]:
    """real name -> alias; the order of aliases is shuffled per problem so it does not mirror the names."""
    names = sorted(api_config)
    order = list(range(len(names)))
    random.Random(f"names|{problem}").shuffle(order)
    return {name: f"x{order[i]}" for i, name in enumerate(names)}


class RemoteOptimizer:
    """An AbstractOptimizer look-alike that forwards every call to the sandboxed host."""

    def __init__(self, proc: OptimizerProcess, spec: Spec, aliases: dict[str, str] | None) -> None:
        self.proc = proc
        self.budget_s = spec.limits.suggest_budget_s
        self.call_timeout_s = spec.limits.call_timeout_s
        self.aliases = aliases
        self.real_names = {v: k for k, v in aliases.items()} if aliases else None
        self.time_used = 0.0
        self.suggest_fallbacks = 0
        self.observe_errors = 0
        self.last_error = ""

    def _call(self, message: dict[str, Any]) -> Any:
        op = message["op"]
        timeout = min(self.call_timeout_s, self.budget_s - self.time_used)
        if timeout <= 0:
            raise StudyCutOff(f"time budget of {self.budget_s:.0f} s used up before {op}")
        try:
            reply = self.proc.call(message, timeout)
        except CallTimeout:
            self.time_used += timeout
            if timeout < self.call_timeout_s:
                raise StudyCutOff(f"{op} ran past the study's time budget of {self.budget_s:.0f} s") from None
            raise StudyCutOff(f"{op} took longer than the {self.call_timeout_s:.0f} s call timeout") from None
        except OptimizerDied as exc:
            raise _died(exc, self.proc) from None
        except ProtocolViolation as exc:
            raise FatalOptimizerError(FailureCause.OPTIMIZER_CRASHED, f"protocol violation {exc}") from None
        self.time_used += reply.seconds
        return reply

    def init(self, api_config: dict[str, Any], seed: int) -> None:
        visible = {self.aliases[k]: v for k, v in api_config.items()} if self.aliases else api_config
        reply = self._call({"op": protocol.OP_INIT, "api_config": visible, "seed": seed})
        if not reply.ok:
            raise FatalOptimizerError(
                FailureCause.OPTIMIZER_CRASHED,
                f"the optimizer's constructor raised {reply.error.get('message', '')}",
            )

    def suggest(self, n_suggestions: int = 1) -> list[dict[str, Any]]:
        reply = self._call({"op": protocol.OP_SUGGEST, "n": n_suggestions})
        if not reply.ok:
            self.suggest_fallbacks += 1
            self.last_error = reply.error.get("message", "")
            raise OptimizerRaised(self.last_error)
        points = reply.body.get("X")
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise FatalOptimizerError(
                FailureCause.OPTIMIZER_CRASHED,
                f"suggest must return a list of dicts, got {type(points).__name__}",
            )
        if self.real_names is not None:
            points = [self._unalias(p) for p in points]
        return points

    def observe(self, X: list[dict[str, Any]], y: list[float]) -> None:
        if self.aliases is not None:
            X = [{self.aliases[k]: v for k, v in point.items()} for point in X]
        reply = self._call({"op": protocol.OP_OBSERVE, "X": X, "y": [float(v) for v in y]})
        if not reply.ok:
            self.observe_errors += 1
            self.last_error = reply.error.get("message", "")
            raise OptimizerRaised(self.last_error)

    def _unalias(self, point: dict[str, Any]) -> dict[str, Any]:
        assert self.real_names is not None
        unknown = [k for k in point if k not in self.real_names]
        if unknown:
            raise FatalOptimizerError(
                FailureCause.OPTIMIZER_CRASHED,
                f"suggestion has unknown parameter(s): {', '.join(unknown[:5])}",
            )
        return {self.real_names[k]: v for k, v in point.items()}


def _died(exc: OptimizerDied, proc: OptimizerProcess) -> FatalOptimizerError:
    explain = proc.launch.exit_cause
    known = explain(exc.returncode) if explain is not None else None
    if known == FailureCause.INFRASTRUCTURE.value:
        raise SandboxInfrastructureError(f"the sandbox was lost during {exc.during} (exit {exc.returncode})")
    limit_codes = (_SIGKILL, 137, protocol.EXIT_OUT_OF_MEMORY)
    if known == FailureCause.RESOURCE_LIMIT.value or (known is None and exc.returncode in limit_codes):
        return FatalOptimizerError(
            FailureCause.RESOURCE_LIMIT,
            f"the optimizer was killed during {exc.during} (memory or process limit)",
        )
    return FatalOptimizerError(
        FailureCause.OPTIMIZER_CRASHED,
        f"the optimizer process exited with code {exc.returncode} during {exc.during}",
    )


def _plain(point: dict[str, Any]) -> dict[str, Any]:
    """Builtin types only (a random fallback batch holds numpy scalars)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in point.items()}


def load_failure(reply_error: dict[str, Any]) -> FatalOptimizerError:
    """A hello that reports the submission could not load."""
    kind = reply_error.get("kind")
    message = reply_error.get("message", "the submission could not be loaded")
    if kind in (protocol.ERR_LOAD, protocol.ERR_NO_CLASS):
        return FatalOptimizerError(FailureCause.INVALID_SUBMISSION, message)
    return FatalOptimizerError(FailureCause.OPTIMIZER_CRASHED, message)


def _drive(
    proc: OptimizerProcess, problem: str, study: int, spec: Spec, log: Callable[[str], None]
) -> tuple[SeededProblem, RemoteOptimizer, StudyState, str | None]:
    """Load, init and run the study loop; the caller closes the sandbox whatever happens."""
    try:
        hello = proc.wait_hello(spec.limits.call_timeout_s)
    except CallTimeout:
        raise FatalOptimizerError(
            FailureCause.TIME_LIMIT, f"optimizer.py did not load within {spec.limits.call_timeout_s:.0f} s"
        ) from None
    except OptimizerDied as exc:
        raise _died(exc, proc) from None
    except ProtocolViolation as exc:
        raise FatalOptimizerError(FailureCause.OPTIMIZER_CRASHED, f"protocol violation {exc}") from None
    if not hello.ok:
        raise load_failure(hello.error)

    objective = SeededProblem(problem, study, spec.batch)
    api_config = objective.get_api_config()
    aliases = obfuscated_names(problem, api_config) if spec.obfuscate_names else None
    remote = RemoteOptimizer(proc, spec, aliases)
    state, reason = StudyState.COMPLETE, None
    try:
        remote.init(api_config, optimizer_seed(problem, study))
        run_study(remote, objective, spec.rounds, spec.batch, n_obj=len(objective.objective_names))
    except StudyCutOff as cut:
        state, reason = StudyState.CUT_OFF, cut.reason
        log(f"[harness] study {study} cut off: {cut.reason}")
    except AssertionError as exc:
        # run_study asserts the batch size the optimizer returned.
        raise FatalOptimizerError(
            FailureCause.OPTIMIZER_CRASHED, f"suggest returned the wrong number of points ({exc})"
        ) from None
    except ValueError as exc:
        # run_study's own check: "Optimizer suggestion is out of range."
        raise FatalOptimizerError(FailureCause.OPTIMIZER_CRASHED, f"{exc} (study {study})") from None
    return objective, remote, state, reason


def run_one_study(
    proc: OptimizerProcess,
    problem: str,
    study: int,
    spec: Spec,
    describe: dict[str, str],
    log: Callable[[str], None],
) -> StudyResult:
    """Drive one study to its end (complete or cut off); raise FatalOptimizerError for the batch."""
    started = time.monotonic()
    try:
        objective, remote, state, reason = _drive(proc, problem, study, spec, log)
    finally:
        proc.close()

    rounds = objective.rounds()
    eval_seconds = max(0.0, time.monotonic() - started - remote.time_used)
    return StudyResult(
        study=study,
        state=state,
        losses=[[StudyResult.encode_loss(v) for v, _ in r] for r in rounds],
        generalization=[[StudyResult.encode_loss(g) for _, g in r] for r in rounds],
        suggestions=[
            [_plain(p) for p in objective.suggestions[i * spec.batch : (i + 1) * spec.batch]]
            for i in range(len(rounds))
        ],
        suggest_time_s=round(remote.time_used, 4),
        eval_time_s=round(eval_seconds, 4),
        cut_off_reason=reason,
        suggest_fallbacks=remote.suggest_fallbacks,
        observe_errors=remote.observe_errors,
        backend=describe.get("backend", ""),
        image_digest=describe.get("image_digest"),
        sandbox=dict(describe),
        packages=scoring_packages(),
        seeds=study_seeds(problem, study),
    )
