"""`bbo admin demo`: the whole service on this machine with a few teams, scoring, in the organizer console.

It runs in a throw-away state folder of its own ($BBO_STATE_DIR/demo, reset each run) so demo teams never
mix with a real competition's: the embedded Redis there, the gateway and the local autoscaler with its
workers (`bbo admin up`'s machinery), four demo teams, and one submission each uploaded through the
gateway over HTTP exactly as `bbo submit` does. One of them fails on purpose, so there is a failure cause
to look at. Then the console opens on it; quitting the console stops everything. `--headless` waits
for every submission to end instead and reports (`--json`: one object on stdout).

The gateway's web pages are served too: the demo teams' tokens are written to a file in the state folder
(readable by this user only; never printed, as screens and logs get shared) so that one can sign in as a
team and watch its submission score in a browser.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from cli.output import emit_json, err, fail, plain, stdout_to_stderr
from runtime.supervisor import StoreWatch, free_port, stop_children, supervise

SPEC = "demo"
FLEET = "demo"
MARKER = ".bbo-demo"  # only a folder carrying this is ever wiped
TOKENS_FILE = "demo-tokens.txt"
# Long enough to be read once the console has drawn; short enough not to cover its views for long.
NOTICE_S = 20
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Entry:
    """A demo team and the optimizer it submits."""

    team: str
    folder: Path
    should_score: bool


def entries() -> tuple[Entry, ...]:
    import baselines
    import competition

    examples = Path(competition.__file__).parent / "examples"
    return (
        Entry("random-search", Path(baselines.__file__).parent / "optimizers" / "random_search", True),
        Entry("evolution", examples / "local_search", True),
        Entry("sobol", examples / "quasi_random", True),
        Entry("forgetful", examples / "missing_dependency", False),
    )


def demo_command(
    headless: bool = typer.Option(
        False, "--headless", help="No console: wait until every submission ends, report, stop."
    ),
    as_json: bool = typer.Option(False, "--json", help="With --headless: print one JSON object on stdout."),
    backend: str = typer.Option(
        "auto", "--backend", help="Sandbox for studies: auto (docker, then bwrap), docker, bwrap, process."
    ),
    workers: int = typer.Option(
        os.cpu_count() or 1, "--workers", min=1, help="Most workers the autoscaler may run."
    ),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Gateway port (0: a free one)."),
    timeout: float = typer.Option(
        900, "--timeout", min=1, help="With --headless: give up after this many seconds."
    ),
) -> None:
    """Start everything in a throw-away state folder, register demo teams, submit example optimizers
    through the gateway (one fails on purpose), then open the organizer console; quitting stops it all."""
    from runtime.spec import SpecError, load
    from workers.sandbox import SandboxRefused, SandboxUnavailable, select

    if as_json and not headless:
        fail("--json goes with --headless (the console is the other way to see the result)")
    try:
        load(SPEC)
        select(backend)  # refuse an unusable or unsafe sandbox before starting anything
    except (SpecError, SandboxRefused, SandboxUnavailable) as exc:
        fail(str(exc))
    console_app = None if headless else _console_class()
    home = _fresh_home()
    port = port or free_port()
    interrupted = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        interrupted.set()

    if headless:
        signal.signal(signal.SIGINT, request_stop)
    # SIGHUP: the terminal went away; the demo still stops everything rather than orphaning its store.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    started = time.monotonic()
    # Headless, stdout is the report's alone; with the console, the console owns the terminal.
    guard = stdout_to_stderr() if headless else contextlib.nullcontext()
    with guard:
        result = _run(home, port, backend, workers, headless, timeout, interrupted, console_app, started)
    if result is None:
        err.print(f"demo stopped after {time.monotonic() - started:.0f} s; logs in {home}")
        return
    seconds = round(time.monotonic() - started, 1)
    report, problems = result
    report["seconds"] = seconds
    if as_json:
        emit_json(report)
    else:
        _print_report(report)
    err.print(f"demo ran {seconds:.0f} s; logs in {home}")
    if interrupted.is_set():
        raise typer.Exit(EXIT_INTERRUPTED)
    if problems:
        for problem in problems:
            err.print(f"[bold red]unexpected:[/] {plain(problem)}", soft_wrap=True)
        raise typer.Exit(EXIT_UNEXPECTED)


def _run(
    home: Path,
    port: int,
    backend: str,
    workers: int,
    headless: bool,
    timeout: float,
    interrupted: threading.Event,
    console_app: Any,
    started: float,
) -> tuple[dict[str, Any], list[str]] | None:
    from cli.up import system_children
    from competition import teams
    from queue_schema.connection import RedisUnavailable, connect
    from runtime.redis_server import ensure_redis

    store: list[StoreWatch] = []
    try:
        with ensure_redis(on_owned=lambda server: store.append(StoreWatch(server))) as url:
            r = connect(url)
            demo = entries()
            tokens = {entry.team: teams.add_team(r, entry.team, actor="demo") for entry in demo}
            server = f"http://127.0.0.1:{port}"
            tokens_file = _write_tokens(home, tokens, server)
            env = {**os.environ, "BBO_REDIS_URL": url}
            children = system_children(
                env,
                host="127.0.0.1",
                port=port,
                spec_name=SPEC,
                backend=backend,
                workers=workers,
                autoscale="local",
                # A step a second: the demo's queue fills at once and workers should follow quickly.
                autoscaler_args=("--fleet", FLEET, "--interval", "1"),
                log_dir=home / "logs",
            )
            for child in children:
                child.start()
            supervising = threading.Event()
            supervisor = threading.Thread(
                target=supervise,
                # The console owns the terminal: the supervisor's news go to its log (and to stderr
                # only when headless).
                args=([*children, *store], supervising.is_set, _log_lines(home / "logs", headless)),
                name="demo-supervisor",
                daemon=True,
            )
            supervisor.start()
            submitted: list[tuple[Entry, str]] = []
            try:
                err.print(
                    f"demo: gateway {server}, up to {workers} autoscaled worker(s), sandbox {backend}, "
                    f"state {home}",
                    soft_wrap=True,
                )
                _wait_for_gateway(server, children[0], home)
                web = _web_notice(server, tokens_file)
                err.print(f"demo: {plain(web)}", soft_wrap=True)
                submitted = _submit_all(server, demo, tokens)
                if headless:
                    _follow(r, submitted, timeout, interrupted, started)
                    report, problems = _report(r, submitted)
                    return {**report, "web": f"{server}/", "tokens_file": str(tokens_file)}, problems
                if not interrupted.is_set():  # a SIGTERM/SIGHUP while setting up: no console to open
                    _open_console(console_app, r, web)
                return None
            finally:
                _stop_active(r, [sid for _, sid in submitted])
                err.print("stopping: the autoscaler drains its workers, the gateway closes, Redis flushes")
                supervising.set()
                supervisor.join()
                stop_children(children)
                _sweep_fleet(r, env)
    except RedisUnavailable as exc:
        fail(str(exc))


# -- setting up -------------------------------------------------------------------------------------


def _console_class() -> Any:
    try:
        from console.app import ConsoleApp
    except ImportError as exc:
        fail(f"the organizer console is not available ({exc}); run the demo with --headless")
    return ConsoleApp


def _fresh_home() -> Path:
    """$BBO_STATE_DIR/demo, emptied, and made this process's (and its children's) state folder."""
    from queue_schema import settings
    from queue_schema.connection import RedisUnavailable, ping, reset_clients

    home = settings.state_dir() / "demo"
    os.environ[settings.STATE_DIR_ENV] = str(home)
    # The demo's store is always its own embedded one, never the deployment's BBO_REDIS_URL.
    os.environ.pop(settings.REDIS_URL_ENV, None)
    reset_clients()
    if home.exists():
        with contextlib.suppress(RedisUnavailable):
            ping(settings.redis_url())
            fail(f"a demo is already running in {home}")
        if not (home / MARKER).exists() and any(home.iterdir()):
            fail(f"{home} holds something that is not a demo; move it away first")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("bbo admin demo's throw-away state folder, reset at each run\n")
    return home


def _write_tokens(home: Path, tokens: dict[str, str], server: str) -> Path:
    """The demo teams' tokens, one `team token` line each, in a file only this user may read: the way to
    sign in to the web pages as a demo team without a token ever reaching the screen or a log."""
    path = home / TOKENS_FILE
    # Created 0600 from the start (never briefly readable); the folder is fresh, so it cannot exist yet.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"# bbo admin demo's teams (new tokens each run): sign in at {server}/signin with one\n")
        for team, token in tokens.items():
            out.write(f"{team} {token}\n")
    return path


def _web_notice(server: str, tokens_file: Path) -> str:
    return f"web pages {server}/ (sign in as a demo team with a token from {tokens_file})"


def _log_lines(folder: Path, to_stderr: bool) -> Callable[[str], None]:
    """A `say` for the supervisor: timestamped plain lines in FOLDER/supervisor.log (`line` is Rich
    markup whose untrusted parts went through `plain`)."""
    from rich.text import Text

    from queue_schema.untrusted import safe_line

    def say(line: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "supervisor.log", "a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {safe_line(Text.from_markup(line).plain)}\n")
        if to_stderr:
            err.print(line, soft_wrap=True)

    return say


def _wait_for_gateway(server: str, gateway: Any, home: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server}/health", timeout=2).status_code == 200:
                return
        if gateway.restarts:
            break  # it exited once already (a taken port, a broken install): say so, do not loop
        time.sleep(0.2)
    fail(f"the gateway did not come up on {server}; see {home / 'logs' / 'gateway.log'}", code=1)


def _submit_all(server: str, demo: tuple[Entry, ...], tokens: dict[str, str]) -> list[tuple[Entry, str]]:
    """Upload each team's optimizer with the team CLI's own client, as `bbo submit` does."""
    from cli.team import Api, pack, upload

    submitted = []
    for entry in demo:
        data, filename = pack(entry.folder)
        sub = upload(Api(server, tokens[entry.team]), data, filename)
        err.print(f"  {entry.team:<14} submitted {sub['id']} ({entry.folder.name})")
        submitted.append((entry, sub["id"]))
    return submitted


# -- running ----------------------------------------------------------------------------------------


def _open_console(console_app: Any, r: Any, web: str) -> None:
    app = console_app(r, readonly=False)
    # The console takes the whole terminal, hiding the lines printed before it: it says where the web
    # pages are itself, once it has drawn (a notification posted now is shown when the app runs).
    app.notify(web, title="demo", timeout=NOTICE_S, markup=False)

    def quit_from_signal(signum: int, frame: object) -> None:
        # A signal lands on the app's own thread; call_from_thread must come from another one.
        threading.Thread(target=app.call_from_thread, args=(app.exit,), daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, quit_from_signal)
    app.run()


def _follow(
    r: Any, submitted: list[tuple[Entry, str]], timeout: float, interrupted: threading.Event, started: float
) -> None:
    """Until every submission ends: one line on stderr whenever one changes state or finishes studies."""
    from queue_schema.records import load_submission
    from queue_schema.states import TERMINAL_STATES

    shown: dict[str, tuple[str, int]] = {}
    while not interrupted.is_set():
        done = 0
        for entry, sid in submitted:
            sub = load_submission(r, sid)
            seen = (sub.state.value, sub.progress.studies_done)
            if shown.get(sid) != seen:
                shown[sid] = seen
                err.print(
                    f"  {time.monotonic() - started:5.0f}s {entry.team:<14} {plain(_line(sub))}",
                    soft_wrap=True,
                )
            done += sub.state in TERMINAL_STATES
        if done == len(submitted):
            return
        if time.monotonic() - started > timeout:
            err.print(f"[bold red]gave up after {timeout:.0f} s[/]; reporting what is there")
            return
        time.sleep(0.5)


def _line(sub: Any) -> str:
    text = f"{sub.id} {sub.state.value} {sub.progress.studies_done}/{sub.progress.studies_total} studies"
    if sub.score is not None:
        text += f", score {sub.score:.3f}"
    if sub.failure is not None:
        text += f", {sub.failure.cause.value}: {sub.failure.message}"
    return text


def _stop_active(r: Any, sids: list[str]) -> None:
    """Stop what still runs, so the workers' warm shutdown has no study left to finish."""
    from competition import service

    for sid in sids:
        with contextlib.suppress(service.ServiceError):
            service.stop(r, sid, actor="demo")


def _sweep_fleet(r: Any, env: dict[str, str]) -> None:
    """Workers outlive the autoscaler by design (they are in sessions of their own); if it died before
    draining them, end them here, while their store still runs, rather than leave them retrying it."""
    from autoscaler.providers.local import LocalProvider

    provider = LocalProvider(r, fleet=FLEET, env=env)
    left = [machine.name for machine in provider.list()]
    for name in left:
        provider.delete(name)
    if left:
        err.print(f"ended {len(left)} worker(s) the autoscaler left running: {', '.join(left)}")


# -- the report -------------------------------------------------------------------------------------


def _report(r: Any, submitted: list[tuple[Entry, str]]) -> tuple[dict[str, Any], list[str]]:
    from competition import service
    from queue_schema.records import load_submission

    rows, problems = [], []
    for entry, sid in submitted:
        sub = load_submission(r, sid)
        rows.append(
            {
                "team": entry.team,
                "id": sid,
                "optimizer": entry.folder.name,
                "state": sub.state.value,
                "score": sub.score,
                "failure_cause": sub.failure.cause.value if sub.failure else None,
                "failure_message": sub.failure.message if sub.failure else None,
            }
        )
        if entry.should_score and sub.state.value != "scored":
            problems.append(f"{entry.team}'s {entry.folder.name} should have scored; it is {_line(sub)}")
        if not entry.should_score and sub.state.value != "failed":
            problems.append(f"{entry.team}'s {entry.folder.name} should have failed; it is {_line(sub)}")
    board = service.leaderboard(r, "feedback", SPEC)
    return {"leaderboard": board, "submissions": rows}, problems


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    board = Table(title="demo leaderboard (feedback)")
    for column in ("rank", "team", "score", "submission"):
        board.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for row in report["leaderboard"]:
        board.add_row(str(row["rank"]), plain(row["team"]), f"{row['score']:.3f}", row["submission"])
    err.print(board)
    for row in report["submissions"]:
        if row["failure_cause"]:
            err.print(
                plain(f"{row['team']}: {row['state']}, {row['failure_cause']}: {row['failure_message']}")
            )
