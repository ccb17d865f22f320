"""`bbo validate PATH`: a local dry run of a submission before it costs quota.

On the team's own machine, with no server and no Redis: the gateway's intake checks on the zip that
`bbo submit` would upload, then a few short studies of one small bayesmark problem through the real
protocol (the worker's harness, the optimizer host in a child process), with the spec's batch size,
parameter-name obfuscation and (scaled) time limits. A failure is reported with the cause the service
would record, so a team fixes it before spending a submission.

Exit status: 0 when the optimizer passed, 1 when it failed validation, 2 for usage errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import shutil
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from cli.output import emit_json, err, fail, plain, stdout_to_stderr

EXIT_PASSED = 0
EXIT_FAILED = 1
STDERR_TAIL_LINES = 20
# The process backend needs no install step; these files are only installed by docker (and bwrap later).
BUNDLED_INSTALL_FILES = ("requirements.txt", "install_order.txt")


@dataclasses.dataclass
class Verdict:
    """What `--json` prints; `fatal` says whether the service would fail the whole submission (a cut-off
    study is not fatal there: its best-so-far stands, but the optimizer broke the time limit)."""

    ok: bool = True
    cause: str | None = None
    message: str = ""
    fatal: bool = False
    problem: str = ""
    spec: str = ""
    backend: str = ""
    batch: int = 0
    rounds: int = 0  # rounds evaluated, all studies together
    rounds_planned: int = 0
    best_loss: float | None = None
    seconds: float = 0.0
    studies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    stderr_tail: list[str] = dataclasses.field(default_factory=list)

    def failed(self, cause: str, message: str, *, fatal: bool = True) -> Verdict:
        self.ok, self.cause, self.message, self.fatal = False, cause, message, fatal
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _reporting_process_class() -> type:
    """OptimizerProcess that reports each round as the harness drives it (imported late: the command's
    help must not pay for the scoring stack)."""
    from queue_schema import protocol
    from workers.optimizer_process import LaunchSpec, LogSink, OptimizerProcess, Reply

    class RoundReporter(OptimizerProcess):
        def __init__(self, launch: LaunchSpec, log: LogSink, on_round: Callable[..., None]) -> None:
            super().__init__(launch, log=log)
            self._on_round = on_round
            self._suggest_s = 0.0
            self._suggest_ok = True
            self._suggest_done_at = 0.0

        def call(self, message: dict[str, Any], timeout: float) -> Reply:
            reply = super().call(message, timeout)
            if message["op"] == protocol.OP_SUGGEST:
                self._suggest_s, self._suggest_ok = reply.seconds, reply.ok
                self._suggest_done_at = time.monotonic()
            elif message["op"] == protocol.OP_OBSERVE:
                objective_s = time.monotonic() - self._suggest_done_at - reply.seconds
                self._on_round(self._suggest_s, self._suggest_ok, objective_s, reply, message["y"])
            return reply

    return RoundReporter


def _pack(path: Path, rules: Any) -> bytes:
    """The bytes `bbo submit` would upload; a folder without optimizer.py is zipped anyway so that the
    intake check names the problem (and a nested optimizer.py) exactly as the gateway would."""
    from artifacts import archive
    from cli.team import pack

    if path.is_dir() and not (path / "optimizer.py").is_file():
        return archive.pack(path, rules)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise archive.InvalidSubmission(f"{path.name} is neither a folder nor a zip archive")
    data, _ = pack(path)
    return data


def _study_spec(spec: Any, rounds: int, call_timeout: float) -> Any:
    """The spec cut to `rounds`, its optimizer budget scaled to match, so a run that would break the real
    budget pace breaks this one; one call never gets more than the whole (scaled) budget."""
    budget = spec.limits.suggest_budget_s * min(1.0, rounds / spec.rounds)
    call = min(spec.limits.call_timeout_s, budget)
    if call_timeout:
        call = min(call, call_timeout)
    limits = dataclasses.replace(spec.limits, suggest_budget_s=budget, call_timeout_s=call)
    return dataclasses.replace(spec, rounds=rounds, limits=limits)


def _select_backend(name: str) -> Any:
    from workers.sandbox import select
    from workers.sandbox.process import ProcessBackend

    if name == "process":
        # The team's own code on the team's own machine: no opt-in needed, and none is set globally.
        return ProcessBackend(allow_unsafe=True)
    if name not in ("docker", "bwrap"):
        fail(f"unknown --backend {name!r} (choose from process, docker, bwrap)")
    return select(name)


def _bundles_requirements(folder: Path) -> bool:
    for name in BUNDLED_INSTALL_FILES:
        file = folder / name
        if file.is_file() and any(
            line.strip() and not line.strip().startswith("#")
            for line in file.read_text(errors="replace").splitlines()
        ):
            return True
    return False


def _fmt_loss(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def run_validation(
    path: Path,
    spec: Any,
    problem: str,
    studies: int,
    backend: Any,
    say: Callable[[str], None],
) -> Verdict:
    """Intake checks, then `studies` studies of `problem` under `spec` (already cut to size)."""
    from artifacts import archive
    from workers.harness import FatalOptimizerError, SandboxInfrastructureError, run_one_study
    from workers.sandbox.base import InstallFailed

    verdict = Verdict(
        problem=problem,
        spec=spec.name,
        backend=backend.name,
        batch=spec.batch,
        rounds_planned=studies * spec.rounds,
    )
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    def collect(line: str) -> None:
        if not line.startswith("[harness]"):  # our own notes, not the optimizer's output
            tail.append(line)

    def finish() -> Verdict:
        verdict.seconds = round(time.monotonic() - started, 3)
        verdict.stderr_tail = list(tail)
        return verdict

    try:
        data = _pack(path, spec.submission)
        artifact = archive.check(data, spec.submission)
    except archive.InvalidSubmission as exc:
        return finish().failed("invalid_submission", str(exc))
    say(f"intake: ok ({len(data) / 1024:.1f} KiB zip, {artifact.files} entries)")

    work = Path(tempfile.mkdtemp(prefix="bbo-validate-"))
    try:
        try:
            folder = archive.extract(data, work / "submission", spec.submission)
        except archive.InvalidSubmission as exc:
            return finish().failed("invalid_submission", str(exc))
        if backend.name == "process" and _bundles_requirements(folder):
            verdict.warnings.append(
                "requirements.txt / install_order.txt are not installed by --backend process: this run uses "
                "the packages of this Python; the service installs them in its sandbox (--backend docker "
                "checks that install)"
            )
            say(f"[yellow]warning:[/] {verdict.warnings[-1]}")
        try:
            backend.prepare(folder, spec.limits)
        except InstallFailed as exc:
            return finish().failed("install_failed", str(exc))
        describe = backend.describe()
        reporter = _reporting_process_class()
        tracker = _BestLoss()
        for study in range(studies):
            on_round = tracker.printer(study, spec.rounds, say)
            proc = reporter(backend.launch(folder, spec.limits), collect, on_round).start()
            try:
                with _quiet_bayesmark():
                    result = run_one_study(proc, problem, study, spec, describe, collect)
            except FatalOptimizerError as fatal:
                verdict.best_loss, verdict.rounds = tracker.value, tracker.rounds
                # The message the service would show the team, word for word.
                return finish().failed(fatal.cause.value, fatal.message)
            except SandboxInfrastructureError as lost:
                verdict.best_loss, verdict.rounds = tracker.value, tracker.rounds
                return finish().failed(
                    "infrastructure", f"study {study}: {lost} (not your optimizer's fault)"
                )
            verdict.studies.append(_study_summary(result))
            verdict.best_loss, verdict.rounds = tracker.value, tracker.rounds
            if result.suggest_fallbacks:
                verdict.warnings.append(
                    f"study {study}: suggest raised {result.suggest_fallbacks} time(s); bayesmark "
                    "substituted random batches (see the stderr tail)"
                )
            if result.observe_errors:
                verdict.warnings.append(
                    f"study {study}: observe raised {result.observe_errors} time(s); bayesmark ignored it"
                )
            if result.state.value == "cut_off":
                return finish().failed(
                    "time_limit",
                    f"study {study} was cut off after {len(result.losses)} of {spec.rounds} rounds: "
                    f"{result.cut_off_reason} (the service keeps the best-so-far and runs no further rounds)",
                    fatal=False,
                )
            say(
                f"study {study}: complete, optimizer time {result.suggest_time_s:.2f} s of "
                f"{spec.limits.suggest_budget_s:.0f} s, objective and start-up {result.eval_time_s:.2f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    verdict.message = (
        f"{studies} stud{'y' if studies == 1 else 'ies'} of {spec.rounds} rounds x {spec.batch} on {problem} "
        f"ran through the protocol"
    )
    return finish()


@contextlib.contextmanager
def _quiet_bayesmark() -> Iterator[None]:
    """bayesmark's study loop prints JSON notes on stdout and logs the harness's own traceback when the
    optimizer's suggest/observe raised: neither helps a team (the round lines and the optimizer's stderr
    say it), and stdout belongs to --json."""
    logger = logging.getLogger("bayesmark.experiment")
    was_disabled, logger.disabled = logger.disabled, True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.disabled = was_disabled


class _BestLoss:
    """The best visible loss so far over every study, and a per-round line printer for one study."""

    def __init__(self) -> None:
        self._best = math.inf
        self.rounds = 0  # observed rounds, all studies together

    @property
    def value(self) -> float | None:
        return self._best if math.isfinite(self._best) else None

    def printer(self, study: int, rounds: int, say: Callable[[str], None]) -> Callable[..., None]:
        done = 0

        def on_round(suggest_s: float, suggest_ok: bool, objective_s: float, observed: Any, y: list) -> None:
            nonlocal done
            done += 1
            self.rounds += 1
            finite = [v for v in y if isinstance(v, int | float) and math.isfinite(v)]
            self._best = min([self._best, *finite])
            notes = [] if suggest_ok else ["suggest raised: bayesmark used a random batch"]
            if not observed.ok:
                notes.append("observe raised: bayesmark ignored it")
            say(
                f"  study {study} round {done}/{rounds}: suggest {suggest_s:.3f} s, objective "
                f"{objective_s:.3f} s, observe {observed.seconds:.3f} s, best loss {_fmt_loss(self.value)}"
                + (f"  ({'; '.join(notes)})" if notes else "")
            )

        return on_round


def _study_summary(result: Any) -> dict[str, Any]:
    losses = [v for r in result.losses for v in r if v is not None]
    return {
        "study": result.study,
        "state": result.state.value,
        "rounds": len(result.losses),
        "best_loss": min(losses) if losses else None,
        "suggest_time_s": result.suggest_time_s,
        "eval_time_s": result.eval_time_s,
        "suggest_fallbacks": result.suggest_fallbacks,
        "observe_errors": result.observe_errors,
        "cut_off_reason": result.cut_off_reason,
    }


def _logged_in_rules(fallback: Any) -> Any:
    """The rules of the competition `bbo login` points at (batch, rounds, time and size limits from its
    `/v1/info`), laid over `fallback`; `fallback` itself when not logged in or the server does not answer."""
    import httpx

    from cli.team import load_config

    config = load_config()
    if not config.get("server"):
        return fallback
    try:
        response = httpx.get(config["server"].rstrip("/") + "/v1/info", timeout=5)
        response.raise_for_status()
        info = response.json()
        limits = dataclasses.replace(
            fallback.limits,
            suggest_budget_s=float(info["limits"]["suggest_budget_s"]),
            call_timeout_s=float(info["limits"]["call_timeout_s"]),
            memory_mb=int(info["limits"]["memory_mb"]),
        )
        submission = dataclasses.replace(
            fallback.submission,
            max_zip_mb=int(info["submission"]["max_zip_mb"]),
            max_unpacked_mb=int(info["submission"]["max_unpacked_mb"]),
            max_files=int(info["submission"]["max_files"]),
        )
        return dataclasses.replace(
            fallback,
            name=str(info["competition"]),
            rounds=int(info["rounds"]),
            batch=int(info["batch"]),
            limits=limits,
            submission=submission,
        )
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        err.print(
            f"[yellow]could not read the rules of {plain(config['server'])} ({plain(exc)}); "
            f"using {fallback.name}'s[/]"
        )
        return fallback


def validate(
    path: Path = typer.Argument(..., help="A folder with optimizer.py at its top level, or a zip of one."),
    spec_name: str = typer.Option(
        None,
        "--spec",
        help="Competition rules to check against: a shipped name or a path. Default: the rules of the "
        "competition you are logged in to (`bbo info`), else neurips2020.",
    ),
    problem: str = typer.Option(
        "DT-iris-acc", "--problem", help="bayesmark problem MODEL-DATASET-METRIC (a fast one by default)."
    ),
    studies: int = typer.Option(
        2, "--studies", min=1, max=20, help="Studies to run, each in a fresh process."
    ),
    rounds: int = typer.Option(
        3, "--rounds", min=1, max=100, help="Rounds per study (the spec's batch size is kept)."
    ),
    call_timeout: float = typer.Option(
        0.0,
        "--call-timeout",
        min=0.0,
        help="Cap one optimizer call (and loading optimizer.py) at this many seconds; default: the "
        "spec's, at most the study's scaled budget.",
    ),
    backend_name: str = typer.Option(
        "process",
        "--backend",
        help="process: this Python, no isolation (your own code on your own machine); docker or bwrap: "
        "the service's sandboxes, where set up (docker also installs requirements.txt).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help='Print {"ok", "cause", "message", "rounds", "best_loss", "seconds", ...}.'
    ),
) -> None:
    """Try a submission locally before spending quota: the service's intake checks, then a few short
    studies of a small problem through the real protocol. Reports the failure cause the service would
    record (invalid_submission, install_failed, optimizer_crashed, time_limit, resource_limit) with the
    tail of the optimizer's stderr. Exit 0 when it passed, 1 when it failed, 2 for usage errors."""
    from queue_schema.settings import pin_threads

    pin_threads()  # before numpy loads: the objective runs on one thread, as on a worker

    from runtime.spec import SpecError, load
    from suites.errors import UnknownProblem
    from workers.sandbox import SandboxRefused, SandboxUnavailable

    if not path.exists():
        fail(f"{path} does not exist")
    try:
        spec = load(spec_name) if spec_name else _logged_in_rules(load("neurips2020"))
        spec.suite_set.check(problem)
        backend = _select_backend(backend_name)
    except (SpecError, UnknownProblem, SandboxRefused, SandboxUnavailable) as exc:
        fail(str(exc))
    cut = _study_spec(spec, rounds, call_timeout)
    err.print(
        f"validating [bold]{plain(path)}[/] on {problem}: {studies} x {cut.rounds} rounds x "
        f"{cut.batch} ({spec.name} rules, optimizer budget {cut.limits.suggest_budget_s:.0f} s per study, "
        f"{cut.limits.call_timeout_s:.0f} s per call; {backend.name} backend)",
        soft_wrap=True,
    )
    with stdout_to_stderr():  # stdout holds the verdict alone, whatever the study prints
        verdict = run_validation(
            path, cut, problem, studies, backend, lambda line: err.print(line, soft_wrap=True)
        )
    if as_json:
        emit_json(verdict.to_dict())
    else:
        _print_verdict(verdict)
    raise typer.Exit(EXIT_PASSED if verdict.ok else EXIT_FAILED)


def _print_verdict(verdict: Verdict) -> None:
    from queue_schema.untrusted import safe_text

    for warning in verdict.warnings:
        err.print(f"[yellow]warning:[/] {plain(warning)}", soft_wrap=True)
    if verdict.stderr_tail and (verdict.warnings or not verdict.ok):
        err.print("optimizer stderr (last lines):")
        for line in verdict.stderr_tail:
            err.print(f"  {safe_text(line)}", markup=False, highlight=False, soft_wrap=True)
    if verdict.ok:
        typer.echo(
            f"passed: {verdict.message}; best loss {_fmt_loss(verdict.best_loss)} ({verdict.seconds:.1f} s)"
        )
        return
    scope = (
        "the service would fail the submission" if verdict.fatal else "the service would cut the study off"
    )
    typer.echo(safe_text(f"failed: {verdict.cause}: {verdict.message} ({scope})"))
