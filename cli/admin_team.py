"""`bbo admin team ...` (teams and tokens) and `bbo admin serve` (the gateway).

These call `competition` directly; tokens are printed once and never stored in clear.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import typer

from cli.output import emit_json, err, fail, guard_service_output, plain, with_redis

app = typer.Typer(
    help="Teams and their tokens: add, list, rotate, revoke, disable, enable, quota (audited).",
    no_args_is_help=True,
)

NameArg = typer.Argument(..., metavar="NAME", help="Team name: 2-40 characters among a-z, 0-9, '_' and '-'.")
JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout.")


def _redis_call(function, *args, **kwargs):
    from competition.teams import TeamError

    return with_redis(function, *args, errors=(TeamError,), **kwargs)


def _print_token(name: str, token: str, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json({"team": name, "token": token})
        return
    err.print(f"team [bold]{plain(name)}[/] {verb}; its token (shown only now, give it to the team):")
    typer.echo(token)
    err.print("the team logs in with: bbo login --server URL (it asks for the token, or reads --token -)")


@app.command()
def add(name: str = NameArg, as_json: bool = JsonOpt) -> None:
    """Register a team and print its token, once."""
    from competition import teams

    token = _redis_call(teams.add_team, name)
    _print_token(name, token, as_json, "added")


def _team_rows(r) -> list[dict]:
    from competition import quotas, teams

    overrides = quotas.overrides(r)
    return [
        t.to_dict()
        | {
            "daily_quota_override": overrides.get(t.name),
            "submissions": teams.submission_count(r, t.name),
            "charged_today": quotas.used_today(r, t.name),
        }
        for t in teams.list_teams(r)
    ]


@app.command("list")
def list_(as_json: bool = JsonOpt) -> None:
    """List the teams (never their tokens), their submission counts and quota overrides."""
    rows = _redis_call(_team_rows)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        err.print("no teams yet (`bbo admin team add NAME`)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("team", "created (UTC)", "token", "status", "today / all", "daily quota"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        override = row["daily_quota_override"]
        table.add_row(
            plain(row["team"]),
            row["created_at"],
            "yes" if row["has_token"] else "revoked",
            "disabled" if row["disabled"] else "active",
            f"{row['charged_today']} / {row['submissions']}",
            "spec" if override is None else str(override),
        )
    Console().print(table)


@app.command()
def rotate(name: str = NameArg, as_json: bool = JsonOpt) -> None:
    """Give a team a new token; the old one stops working at once. Prints the new token, once."""
    from competition import teams

    token = _redis_call(teams.rotate_token, name)
    _print_token(name, token, as_json, "has a new token")


@app.command()
def revoke(name: str = NameArg) -> None:
    """Revoke a team's token (it gets a new one with `rotate`)."""
    from competition import teams

    _redis_call(teams.revoke_token, name)
    err.print(f"revoked the token of team {plain(name)}")


@app.command()
def disable(name: str = NameArg) -> None:
    """Disable a team: its token is refused and it leaves the public leaderboard."""
    from competition import teams

    _redis_call(teams.set_disabled, name, True)
    err.print(f"team {plain(name)} is disabled")


@app.command()
def enable(name: str = NameArg) -> None:
    """Enable a disabled team again."""
    from competition import teams

    _redis_call(teams.set_disabled, name, False)
    err.print(f"team {plain(name)} is enabled")


@app.command()
def quota(
    name: str = NameArg,
    limit: int = typer.Argument(None, metavar="[N]", min=0, help="Submissions per UTC day for this team."),
    clear: bool = typer.Option(False, "--clear", help="Go back to the spec's daily quota."),
) -> None:
    """Set a team's own daily submission quota (0 blocks its uploads), or --clear it."""
    from competition import quotas

    if (limit is None) != clear:
        fail("give the team's daily quota N, or --clear to go back to the spec's")
    _redis_call(quotas.set_override, name, limit)
    if clear:
        err.print(f"team {plain(name)} has the spec's daily quota again")
    else:
        err.print(f"team {plain(name)} may submit {limit} time(s) per UTC day")


def _safe_log_config() -> dict:
    """uvicorn's logging with every line through safe_text (access lines carry request paths, error lines
    exception text), in each of its worker processes too, and no colours (they would show as text)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["class"] = "queue_schema.untrusted.SafeStreamHandler"
    for formatter in config["formatters"].values():
        formatter["use_colors"] = False
    return config


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def serve_command(
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind (put a TLS reverse proxy in front for the internet)."
    ),
    spec_name: str = typer.Option("demo", "--spec", help="Competition spec: a shipped name or a path."),
    backend: str = typer.Option(
        "auto", "--backend", help="Sandbox the jobs ask workers for: auto, docker, bwrap, process."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (warning, info, debug)."),
    ssl_certfile: Path = typer.Option(
        None, "--ssl-certfile", exists=True, dir_okay=False, help="Serve HTTPS: PEM certificate (chain)."
    ),
    ssl_keyfile: Path = typer.Option(
        None, "--ssl-keyfile", exists=True, dir_okay=False, help="Serve HTTPS: the certificate's PEM key."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, max=64, help="Gateway processes (uvicorn workers): about one per core."
    ),
) -> None:
    """Run the teams' HTTP gateway. With BBO_REDIS_URL unset it uses (or starts and owns) the embedded
    Redis for as long as it runs. TLS: a reverse proxy in front, or --ssl-certfile/--ssl-keyfile."""
    if (ssl_certfile is None) != (ssl_keyfile is None):
        fail("--ssl-certfile and --ssl-keyfile go together")
    guard_service_output()  # request paths, exception text: every log line made safe, URLs redacted
    scheme = "https" if ssl_certfile else "http"
    # uvicorn re-raises SIGTERM after its graceful shutdown; as an exception it still lets an embedded
    # Redis this command owns flush and stop (a process manager such as honcho stops us with SIGTERM).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    import uvicorn

    from queue_schema.connection import RedisUnavailable
    from queue_schema.untrusted import redact_url
    from runtime.redis_server import ensure_redis
    from runtime.spec import SpecError

    try:
        with ensure_redis() as url:
            from gateway.app import create_app

            try:
                application = create_app(spec_name, backend, redis_url=url)
            except (SpecError, ValueError) as exc:
                fail(str(exc))
            err.print(
                f"gateway for [bold]{application.state.spec.name}[/] on {scheme}://{host}:{port} "
                f"(store {redact_url(url)}, sandbox {backend}); Ctrl-C to stop",
                soft_wrap=True,
            )
            options = {
                "host": host,
                "port": port,
                "log_level": log_level,
                "proxy_headers": True,
                # httptools with a size cap and a deadline on request heads (slow loris, huge headers).
                "http": "gateway.http_limits:GuardedHttpToolsProtocol",
                "ssl_certfile": str(ssl_certfile) if ssl_certfile else None,
                "ssl_keyfile": str(ssl_keyfile) if ssl_keyfile else None,
                "log_config": _safe_log_config(),
            }
            if workers == 1:
                uvicorn.run(application, **options)
                return
            # Several processes need an importable factory; each builds the same app from these (the
            # spec was checked above, so a bad one fails here, once, with a clear message).
            os.environ.update({"BBO_SPEC": spec_name, "BBO_BACKEND": backend, "BBO_REDIS_URL": url})
            uvicorn.run("gateway.app:app_from_env", factory=True, workers=workers, **options)
    except RedisUnavailable as exc:
        fail(str(exc))
