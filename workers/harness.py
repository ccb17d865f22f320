"""Run one study: bayesmark's own study loop and objective in the worker, the optimizer in its sandbox.

`RemoteOptimizer` stands in for the participant's optimizer inside `bayesmark.experiment.run_study`, so
bayesmark's semantics hold as they are: a suggest that raises gives a random batch, an observe that raises
is ignored, an objective that raises gives inf, a wrong batch size or an out-of-range point is fatal.
Time limits and a dying sandbox are signalled with BaseException subclasses, which run_study's
`except Exception` does not swallow.

What the sandbox sends is the team's and is checked before bayesmark sees it: replies are typed by the
protocol (a malformed, oversized or unsolicited one is a protocol violation), every suggested point is
checked against the declared space and normalised (queue_schema/suggestions.py). Both failures are the
team's optimizer_crashed. Only failures positively ours leave as SandboxInfrastructureError (a lost
sandbox; HarnessFault: a problem whose space cannot be checked, bayesmark refusing a point we checked);
any other exception, which is not identified as ours, leaves as itself, never swallowed by bayesmark's
`except Exception` (which would answer it with random suggestions), for the job to charge as the team's
(workers/failures.py). Whatever the study loop prints on stdout (bayesmark's notes when the optimizer
raises) goes to the organizer log, never to the process's stdout.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bayesmark.experiment import run_study

from queue_schema import protocol
from queue_schema.payloads import StudyResult
from queue_schema.seeds import optimizer_seed
from queue_schema.states import FailureCause, StudyState
from queue_schema.suggestions import OutOfSpace, Space, SpaceError, check_batch, compile_space
from queue_schema.untrusted import safe_text
from runtime.provenance import scoring_packages, study_seeds
from runtime.spec import Spec
from suites.base import BAYESMARK, Objective
from suites.errors import ObjectiveFault
from workers.errors import (  # noqa: F401 - re-exported for callers
    TEAM_TEXT_CHARS,
    FatalOptimizerError,
    HarnessFault,
    OptimizerRaised,
    SandboxInfrastructureError,
    StudyCutOff,
)
from workers.optimizer_process import CallTimeout, OptimizerDied, OptimizerProcess, ProtocolViolation

# A killed process reports -SIGKILL (137 through a container runtime); when we did not kill it, the
# kernel's OOM killer or a cgroup did.
_SIGKILL = -9
# Lines the study loop may print into the organizer log per study (bayesmark prints one per failing call).
STUDY_STDOUT_LINES = 1000


def _team_text(text: str) -> str:
    return safe_text(text, limit=TEAM_TEXT_CHARS)


def _protocol_violation(exc: ProtocolViolation) -> FatalOptimizerError:
    return FatalOptimizerError(FailureCause.OPTIMIZER_CRASHED, f"protocol violation {_team_text(str(exc))}")


class _Unclassified(BaseException):  # noqa: N818 - carries an exception past bayesmark, not an error
    def __init__(self, original: Exception) -> None:
        self.original = original
        super().__init__(repr(original))


@contextlib.contextmanager
def _not_swallowed(what: str) -> Iterator[None]:
    """Inside a call bayesmark makes: a failure that is not the optimizer's own raising must not pass
    for it (bayesmark's `except Exception` would answer it with random suggestions and go on)."""
    try:
        yield
    except OptimizerRaised:
        raise
    except Exception as exc:
        raise _Unclassified(exc) from exc


def _objective_lost(exc: ObjectiveFault) -> SandboxInfrastructureError:
    return SandboxInfrastructureError(f"objective process: {exc}")


class _CarriedObjective:
    """The study's objective as run_study sees it: its own raising is an inf loss, as bayesmark's models'
    is, but a dead or hung objective process is ours and must not pass for the team's poor point."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.objective_names = objective.objective_names

    def get_api_config(self) -> dict:
        return self.objective.get_api_config()

    def evaluate(self, params: dict) -> tuple[float, float]:
        try:
            return self.objective.evaluate(params)
        except ObjectiveFault as exc:
            raise _Unclassified(_objective_lost(exc)) from exc


def obfuscated_names(problem: str, api_config: dict[str, Any]) -> dict[str, str]:
    """real name -> alias; the order of aliases is shuffled per problem so it does not mirror the names."""
    names = sorted(api_config)
    order = list(range(len(names)))
    random.Random(f"names|{problem}").shuffle(order)
    return {name: f"x{order[i]}" for i, name in enumerate(names)}


class RemoteOptimizer:
    """An AbstractOptimizer look-alike that forwards every call to the sandboxed host."""

    def __init__(
        self, proc: OptimizerProcess, spec: Spec, aliases: dict[str, str] | None, space: Space | None = None
    ) -> None:
        self.proc = proc
        self.space = space  # the space the optimizer sees (under its aliases), to check suggestions
        self.budget_s = spec.limits.suggest_budget_s
        self.call_timeout_s = spec.limits.call_timeout_s
        self.aliases = aliases
        self.real_names = {v: k for k, v in aliases.items()} if aliases else None
        self.time_used = 0.0
        # CPU the sandbox burnt outside its calls (background threads or processes working while the
        # objective runs, or while it waited pre-started): part of time_used, as the budget is the
        # optimizer's time, not only the time it is asked for.
        self.cpu_between_calls = 0.0
        self._cpu_mark = proc.cpu_at_hello
        self.suggest_fallbacks = 0
        self.observe_errors = 0
        self.last_error = ""

    def _charge_cpu_between_calls(self) -> None:
        now = self.proc.cpu_seconds()
        if now is not None and self._cpu_mark is not None and now > self._cpu_mark:
            spent = now - self._cpu_mark
            self.cpu_between_calls += spent
            self.time_used += spent
        self._cpu_mark = now

    def _call(self, message: dict[str, Any]) -> Any:
        op = message["op"]
        self._charge_cpu_between_calls()
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
            raise _protocol_violation(exc) from None
        self.time_used += reply.seconds
        self._cpu_mark = self.proc.cpu_seconds()  # what it used during the call is in the wall time
        return reply

    def init(self, api_config: dict[str, Any], seed: int) -> None:
        visible = {self.aliases[k]: v for k, v in api_config.items()} if self.aliases else api_config
        if self.space is None:
            self.space = _space_of(visible)
        reply = self._call({"op": protocol.OP_INIT, "api_config": visible, "seed": seed})
        if reply.failure is not None:
            raise FatalOptimizerError(
                FailureCause.OPTIMIZER_CRASHED,
                f"the optimizer's constructor raised {_team_text(reply.failure.message)}",
            )

    # Called by bayesmark's run_study, inside its `except Exception`: everything the team causes leaves
    # as a BaseException (fatal, cut off) or OptimizerRaised (its method raised); anything else is ours.
    def suggest(self, n_suggestions: int = 1) -> list[dict[str, Any]]:
        with _not_swallowed("suggest"):
            reply = self._call({"op": protocol.OP_SUGGEST, "n": n_suggestions})
            if reply.failure is not None:
                self.suggest_fallbacks += 1
                self.last_error = _team_text(reply.failure.message)
                raise OptimizerRaised(self.last_error)
            assert isinstance(reply.message, protocol.Suggested) and self.space is not None
            try:
                points = check_batch(reply.message.points, self.space, n_suggestions)
            except OutOfSpace as exc:
                raise FatalOptimizerError(FailureCause.OPTIMIZER_CRASHED, _team_text(str(exc))) from None
            if self.real_names is not None:
                points = [{self.real_names[k]: v for k, v in point.items()} for point in points]
            return points

    def observe(self, X: list[dict[str, Any]], y: list[float]) -> None:
        with _not_swallowed("observe"):
            if self.aliases is not None:
                X = [{self.aliases[k]: v for k, v in point.items()} for point in X]
            reply = self._call({"op": protocol.OP_OBSERVE, "X": X, "y": [float(v) for v in y]})
            if reply.failure is not None:
                self.observe_errors += 1
                self.last_error = _team_text(reply.failure.message)
                raise OptimizerRaised(self.last_error)


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


def load_failure(failed: protocol.Failed) -> FatalOptimizerError:
    """A hello that reports the submission could not load."""
    message = _team_text(failed.message) or "the submission could not be loaded"
    if failed.kind in (protocol.ERR_LOAD, protocol.ERR_NO_CLASS):
        return FatalOptimizerError(FailureCause.INVALID_SUBMISSION, message)
    return FatalOptimizerError(FailureCause.OPTIMIZER_CRASHED, message)


def _space_of(api_config: dict[str, Any]) -> Space:
    try:
        return compile_space(api_config)
    except SpaceError as exc:
        raise HarnessFault(f"the problem's search space cannot be checked: {exc}") from None


class _StudyStdout(io.TextIOBase):
    """sys.stdout while the study loop runs: whole lines into the organizer log, made safe and bounded,
    never onto the process's stdout (a command's --json). Thread-safe: one lock around the buffer."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._buffer = ""
        self._lines = 0
        self._dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += str(text)
            *lines, self._buffer = self._buffer.split("\n")
            if len(self._buffer) > TEAM_TEXT_CHARS:  # a line that never ends is cut, not kept
                lines.append(self._buffer)
                self._buffer = ""
        for line in lines:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        with self._lock:
            self._lines += 1
            keep = self._lines <= STUDY_STDOUT_LINES
            if not keep:
                self._dropped += 1
        if keep:
            self._log(f"[harness] study stdout: {safe_text(line, limit=TEAM_TEXT_CHARS)}")

    def finish(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._emit(rest)
        if self._dropped:
            self._log(f"[harness] study stdout: {self._dropped} more line(s) dropped")


@contextlib.contextmanager
def _stdout_to_log(log: Callable[[str], None]) -> Iterator[None]:
    sink = _StudyStdout(log)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        sink.finish()


def _drive(
    proc: OptimizerProcess, problem: str, study: int, spec: Spec, log: Callable[[str], None]
) -> tuple[Objective, RemoteOptimizer, StudyState, str | None]:
    """Load, init and run the study loop; the caller closes the sandbox whatever happens."""
    proc.stderr_cap_bytes = spec.logs.study_kb * 1024
    try:
        hello = proc.wait_hello(spec.limits.call_timeout_s)
    except CallTimeout:
        if proc.launch.started is not None and not proc.launch.started():
            # Hung before anything of the submission loaded (no start marker): the sandbox's start-up.
            raise SandboxInfrastructureError(
                f"the sandbox did not start within {spec.limits.call_timeout_s:.0f} s"
            ) from None
        raise FatalOptimizerError(
            FailureCause.TIME_LIMIT, f"optimizer.py did not load within {spec.limits.call_timeout_s:.0f} s"
        ) from None
    except OptimizerDied as exc:
        raise _died(exc, proc) from None
    except ProtocolViolation as exc:
        raise _protocol_violation(exc) from None
    if hello.failure is not None:
        raise load_failure(hello.failure)

    objective = spec.suite_set.of(problem).objective(problem, study, spec.batch)
    try:
        api_config = objective.get_api_config()
    except ObjectiveFault as exc:
        objective.close()
        raise _objective_lost(exc) from exc
    aliases = obfuscated_names(problem, api_config) if spec.obfuscate_names else None
    remote = RemoteOptimizer(proc, spec, aliases)
    state, reason = StudyState.COMPLETE, None
    try:
        with _stdout_to_log(log):
            remote.init(api_config, optimizer_seed(problem, study))
            carried = _CarriedObjective(objective)
            run_study(remote, carried, spec.rounds, spec.batch, n_obj=len(objective.objective_names))
    except StudyCutOff as cut:
        state, reason = StudyState.CUT_OFF, cut.reason
        between = remote.cpu_between_calls
        told = f" ({between:.1f} s of it CPU used between calls)" if between >= 0.05 else ""
        log(f"[harness] study {study} cut off: {cut.reason}{told}")
    except (AssertionError, ValueError) as exc:
        # run_study's own checks (batch size, "Optimizer suggestion is out of range"): every suggestion
        # was checked against the space before it got there, so one failing is ours, not the team's.
        raise HarnessFault(f"bayesmark refused a checked suggestion: {type(exc).__name__}: {exc}") from exc
    except _Unclassified as unclassified:  # past bayesmark's except Exception: it leaves as itself
        raise unclassified.original from None
    finally:
        objective.close()
    return objective, remote, state, reason


def _suite_packages(spec: Spec, problem: str) -> dict[str, str]:
    """What evaluated a problem of a suite other than bayesmark's (whose stack scoring_packages names):
    the suite and its environment's versions, for `reproduce` to compare."""
    suite = spec.suite_set.of(problem)
    if suite.name == BAYESMARK:
        return {}
    described = suite.describe()
    return {f"{suite.name}:{k}": str(v) for k, v in described.items() if k != "suite"}


def run_one_study(
    proc: OptimizerProcess,
    problem: str,
    study: int,
    spec: Spec,
    describe: dict[str, str],
    log: Callable[[str], None],
    *,
    close_later: bool = False,
) -> StudyResult:
    """Drive one study to its end (complete or cut off); raise FatalOptimizerError for the batch.

    What the team causes leaves as FatalOptimizerError (or a cut-off study); what is positively ours as
    SandboxInfrastructureError (HarnessFault among them); any other exception as itself, which the job
    charges to the team (workers/failures.is_ours decides).

    The sandbox is closed before this returns, or, with `close_later` (the job, which kills whatever is
    left of its sandboxes before it ends), once the study has ended well, on a thread of its own: the
    result does not wait for the host's exit and a container's removal (0.07 s here for a process, 0.1
    to 0.2 s for a container)."""
    started = time.monotonic()
    try:
        objective, remote, state, reason = _drive(proc, problem, study, spec, log)
    except BaseException:
        proc.close()
        raise
    if close_later:
        proc.close_later()
    else:
        proc.close()

    rounds = objective.rounds()
    # The objective ran while the calls did not (CPU burnt between calls overlaps with it).
    eval_seconds = max(0.0, time.monotonic() - started - (remote.time_used - remote.cpu_between_calls))
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
        packages=scoring_packages() | _suite_packages(spec, problem),
        seeds=study_seeds(problem, study),
    )
