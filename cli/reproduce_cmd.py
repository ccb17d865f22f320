"""`bbo admin reproduce SUBMISSION PROBLEM STUDY`: rerun one stored study and say MATCH or MISMATCH."""

from __future__ import annotations

from typing import Any

import typer

from cli.output import emit_json, err, fail, plain


def reproduce_command(
    submission: str = typer.Argument(..., help="Submission id."),
    problem: str = typer.Argument(..., help="Real problem name, e.g. DT-iris-acc."),
    study: int = typer.Argument(..., min=0, help="Study index, from 0."),
    version: int = typer.Option(0, "--version", min=0, help="Score version (default: the current one)."),
    backend: str = typer.Option(
        None,
        "--backend",
        help="Sandbox for the rerun: auto, docker, bwrap, process (default: the one the study ran on).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
) -> None:
    """Rerun one study with its stored spec, artifact and seeds in a fresh sandbox, and compare its losses
    with the stored ones. Exits 0 when the rerun happened, whether or not the losses matched."""
    from queue_schema.settings import pin_threads

    pin_threads()  # as a worker does, before the objective's numerical libraries load
    from competition.reproduce import ReproduceError, reproduce
    from queue_schema.connection import RedisUnavailable, connect
    from runtime.redis_server import ensure_redis
    from workers.sandbox import SandboxRefused, SandboxUnavailable

    def progress(line: str) -> None:  # the rerun's log: the optimizer's stderr among it
        err.print(f"[dim]{plain(line)}[/]", soft_wrap=True, markup=True, highlight=False)

    try:
        with ensure_redis() as url:
            outcome = reproduce(
                connect(url), submission, problem, study, version or None, backend, log=progress
            )
    except (ReproduceError, SandboxRefused, SandboxUnavailable, RedisUnavailable, RuntimeError) as exc:
        fail(str(exc))
    if as_json:
        emit_json(outcome)
        return
    from queue_schema.untrusted import safe_text

    for line in verdict_lines(outcome):
        typer.echo(safe_text(line))  # the rerun's error is the optimizer's words


def verdict_lines(outcome: dict[str, Any]) -> list[str]:
    """The readable verdict: MATCH or MISMATCH first, then what differs."""
    what = (
        f"study {outcome['study']} of {outcome['problem']} "
        f"(submission {outcome['submission']} v{outcome['score_version']})"
    )
    where = f"{outcome['backend']} backend, {outcome['seconds']:.1f} s"
    evals = sum(len(round_) for round_ in outcome["stored_losses"])
    if outcome["match"]:
        rounds = outcome["rounds_compared"]
        return [f"MATCH: {what}: all {evals} losses of {rounds} rounds are identical ({where})"]
    lines = [f"MISMATCH: {what} ({where})"]
    if outcome["error"]:
        lines.append(f"  the rerun failed: {outcome['error']}")
    mismatch = outcome["first_mismatch"]
    if mismatch is not None and mismatch["index"] is None:
        lines.append(
            f"  the study ran {mismatch['now']} now, {mismatch['stored']} when scored "
            f"(state {outcome['state']}, was {outcome['stored_state']})"
        )
    elif mismatch is not None:
        lines.append(
            f"  first difference at round {mismatch['round']}, suggestion {mismatch['index']}: "
            f"stored loss {_loss(mismatch['stored'])}, now {_loss(mismatch['now'])}"
        )
    if outcome["suggestions_match"] is True:
        lines.append(
            "  the optimizer suggested the same points: the losses differ on the objective's side "
            "(scoring stack, data) or in the stored record"
        )
    elif outcome["suggestions_match"] is False:
        lines.append("  the optimizer suggested different points: it is not deterministic given its seed")
    for name, values in outcome["environment_differences"].items():
        lines.append(f"  {name}: {values['stored']} when scored, {values['now']} now")
    return lines


def _loss(value: Any) -> str:
    if value is None:
        return "inf"
    return f"{value!r}" if isinstance(value, float) else str(value)
