"""The team commands of `bbo`: login, submit, status, stop, submissions, leaderboard, select, info.

They speak HTTP to the gateway only (httpx); the server and token come from `bbo login`'s config file
($BBO_CONFIG_DIR/config.json, else ~/.config/bbo/config.json, mode 0600), overridden by BBO_SERVER and
BBO_TOKEN. Messages and progress bars go to stderr, `--json` output to stdout. Exit status: 0 when the
command did its job (also when it reports a failed or stopped submission), 2 for rejected input (a 4xx
answer, a missing login), 3 when the server cannot be reached or fails, 130 when interrupted.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer

from cli.output import emit_json, err, plain, studies_progress
from queue_schema.states import TERMINAL_STATES
from queue_schema.untrusted import safe_text

CONFIG_DIR_ENV = "BBO_CONFIG_DIR"
SERVER_ENV = "BBO_SERVER"
TOKEN_ENV = "BBO_TOKEN"
TERMINAL = frozenset(state.value for state in TERMINAL_STATES)  # the state machine's, as the API spells them
# Folders and files a submission never needs (the starter kit's prepare script zips the rest).
SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints", ".venv", "venv"}
PROGRESS_BAR_MIN_BYTES = 1024 * 1024

EXIT_REJECTED = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout (the command contract's shapes).")
IntervalOpt = typer.Option(
    1.0, "--interval", min=0.05, help="Seconds between status requests while following a submission."
)


def _fail(message: str, code: int = EXIT_REJECTED) -> NoReturn:
    # Plain text: it often carries the server's words (a file name, another team's name).
    err.print(f"[bold red]error:[/] {plain(message)}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


# -- configuration ----------------------------------------------------------------------------------


def config_path() -> Path:
    base = os.environ.get(CONFIG_DIR_ENV)
    folder = Path(base).expanduser() if base else Path.home() / ".config" / "bbo"
    return folder / "config.json"


def load_config() -> dict[str, str]:
    path = config_path()
    config: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {path}: {exc}; run `bbo login` again")
        if isinstance(loaded, dict):
            config = {k: str(v) for k, v in loaded.items() if isinstance(v, str)}
    if os.environ.get(SERVER_ENV):
        config["server"] = os.environ[SERVER_ENV]
    if os.environ.get(TOKEN_ENV):
        config["token"] = os.environ[TOKEN_ENV]
    return config


def save_config(server: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".config.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"server": server, "token": token}, out, indent=2)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _normalize_server(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        _fail(f"--server must be an http:// or https:// URL, got {url!r}")
    return url


# -- HTTP -------------------------------------------------------------------------------------------


class ApiFailure(Exception):
    """A request that did not get its answer: one line for people (str), the exit status for it, and, when
    the server answered, the HTTP status and the start of its body."""

    def __init__(self, message: str, code: int, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.body = body


class Api:
    """A thin client that turns every failure into a one-line message and an exit status; with
    `exit_on_failure=False` (the benchmarks, which count refusals) into an ApiFailure instead."""

    def __init__(
        self, server: str, token: str | None, *, timeout: float | None = None, exit_on_failure: bool = True
    ) -> None:
        import httpx

        self.server = server
        self.exit_on_failure = exit_on_failure
        headers = {"User-Agent": "bbo-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(
            base_url=server,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0, write=300.0) if timeout is None else timeout,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._request(method, path, **kwargs)
        except ApiFailure as exc:
            if not self.exit_on_failure:
                raise
            _fail(str(exc), exc.code)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiFailure(f"the server at {self.server} did not answer in time", EXIT_UNREACHABLE) from exc
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiFailure(f"cannot reach the server at {self.server}: {reason}", EXIT_UNREACHABLE) from exc
        if response.status_code >= 400:
            code = EXIT_REJECTED if response.status_code < 500 else EXIT_UNREACHABLE
            raise ApiFailure(_error_message(response), code, response.status_code, response.text[:300])
        try:
            return response.json()
        except ValueError:
            raise ApiFailure(
                f"the server at {self.server} sent a reply that is not JSON",
                EXIT_UNREACHABLE,
                response.status_code,
                response.text[:300],
            ) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def _error_message(response: Any) -> str:
    try:
        body = response.json()
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    message = " ".join(str(message).split()) or response.reason_phrase
    if response.status_code == 401:
        return f"{message} (HTTP 401)"
    if response.status_code >= 500:
        return f"server error (HTTP {response.status_code}): {message}"
    return message


def _api(need_token: bool = True) -> Api:
    config = load_config()
    server = config.get("server")
    token = config.get("token")
    if not server:
        _fail("not logged in: run `bbo login --server URL` (it asks for the token) or set BBO_SERVER")
    if need_token and not token:
        _fail("no token: run `bbo login --server URL` (it asks for the token) or set BBO_TOKEN")
    return Api(_normalize_server(server), token)


# -- packing ----------------------------------------------------------------------------------------


def pack(path: Path) -> tuple[bytes, str]:
    """The zip to upload and its name: a zip file as is, or a folder's contents at the top level, as the
    2020 starter kit's prepare script builds it (caches, VCS folders, .pyc files and links left out)."""
    if not path.exists():
        _fail(f"{path} does not exist")
    if path.is_file():
        data = path.read_bytes()
        if not zipfile.is_zipfile(io.BytesIO(data)):
            _fail(f"{path} is neither a folder nor a zip archive")
        return data, path.name
    if not (path / "optimizer.py").is_file():
        _fail(f"{path} has no optimizer.py at its top level (the starter kit's layout)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                full = Path(root) / name
                if full.is_symlink() or name.endswith((".pyc", ".pyo")):
                    continue
                archive.write(full, full.relative_to(path).as_posix())
    return buffer.getvalue(), f"{path.resolve().name or 'submission'}.zip"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"


def _multipart(data: bytes, filename: str) -> tuple[bytes, bytes, str]:
    boundary = f"bbo-{secrets.token_hex(16)}"
    safe = filename.replace('"', "").replace("\r", "").replace("\n", "") or "submission.zip"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{safe}"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail, f"multipart/form-data; boundary={boundary}"


def upload(api: Api, data: bytes, filename: str, phase: str | None = None) -> dict[str, Any]:
    """POST the zip to /v1/submissions (a progress bar on stderr for a large one); the new submission."""
    head, tail, content_type = _multipart(data, filename)
    total = len(head) + len(data) + len(tail)
    params = {"phase": phase} if phase else None
    headers = {"Content-Type": content_type, "Content-Length": str(total)}
    if len(data) < PROGRESS_BAR_MIN_BYTES:
        return api.post("/v1/submissions", content=head + data + tail, headers=headers, params=params)

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("upload"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("upload", total=total)

        def chunks() -> Iterator[bytes]:
            yield head
            progress.advance(task, len(head))
            step = 256 * 1024
            for start in range(0, len(data), step):
                piece = data[start : start + step]
                yield piece
                progress.advance(task, len(piece))
            yield tail
            progress.advance(task, len(tail))

        return api.post("/v1/submissions", content=chunks(), headers=headers, params=params)


# -- following a submission -------------------------------------------------------------------------


def _describe(sub: dict[str, Any]) -> str:
    progress = sub.get("progress") or {}
    parts = [
        sub["id"],
        sub["state"],
        f"{progress.get('studies_done', 0)}/{progress.get('studies_total', 0)} studies",
    ]
    if sub.get("score") is not None:
        parts.append(f"score {sub['score']:.3f}")
    elif sub.get("partial_score") is not None:
        label = "partial score" if sub["state"] == "stopped" else "running score"
        parts.append(f"{label} {sub['partial_score']:.3f}")
    if sub.get("failure"):
        parts.append(f"failed: {sub['failure']['cause']}: {sub['failure']['message']}")
    return safe_text("  ".join(parts))


def _follow(api: Api, sid: str, *, as_json_lines: bool, interval: float) -> dict[str, Any]:
    """Poll until the submission is terminal. JSON lines: one object per change on stdout; otherwise a
    progress bar with the running score on stderr. Returns the last object."""
    try:
        if as_json_lines:
            last = None
            while True:
                sub = api.get(f"/v1/submissions/{sid}")
                if sub != last:
                    emit_json(sub)
                    last = sub
                if sub["state"] in TERMINAL:
                    return sub
                time.sleep(interval)
        return _follow_bar(api, sid, interval)
    except KeyboardInterrupt:
        err.print(f"stopped following; {sid} keeps going (`bbo status {sid}`, `bbo stop {sid}`)")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _follow_bar(api: Api, sid: str, interval: float) -> dict[str, Any]:
    with studies_progress() as progress:
        task = progress.add_task(sid, total=None, score="")
        while True:
            sub = api.get(f"/v1/submissions/{sid}")
            counts = sub.get("progress") or {}
            shown = sub.get("score") if sub.get("score") is not None else sub.get("partial_score")
            label = "score" if sub.get("score") is not None else "running score"
            progress.update(
                task,
                description=plain(f"{sid} {sub['state']}"),  # the bar's column is Rich markup
                completed=counts.get("studies_done", 0),
                total=counts.get("studies_total") or None,
                score="" if shown is None else f"{label} {shown:.3f}",
            )
            if sub["state"] in TERMINAL:
                return sub
            time.sleep(interval)


def _report(sub: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(sub)
    else:
        typer.echo(_describe(sub))


# -- commands ---------------------------------------------------------------------------------------


def login(
    server: str = typer.Option(
        ..., "--server", help="The competition's gateway URL, e.g. https://bbo.example.org"
    ),
    token: str = typer.Option(
        None,
        "--token",
        help="Your team's token, from the organizers (shown to them once). `--token -` reads it from "
        "stdin; without --token it comes from BBO_TOKEN, else you are asked for it (hidden). A token "
        "written on the command line stays in your shell history.",
    ),
) -> None:
    """Check a team token against the server and save both in the config file (mode 0600).

    Safer than `--token TOKEN`: `bbo login --server URL` (asks for the token, hidden), `--token -` (reads
    it from stdin: `bbo login --server URL --token - < token.txt`), or BBO_TOKEN in the environment."""
    server = _normalize_server(server)
    token, on_command_line = _login_token(token)
    info = Api(server, token).get("/v1/info")
    if "team" not in info:
        _fail("the server did not recognise a team for this token")
    path = save_config(server, token)
    err.print(
        f"logged in to {plain(info.get('competition', server))} as team [bold]{plain(info['team'])}[/]; "
        f"saved {plain(path)}"
    )
    if on_command_line:
        err.print(
            "[yellow]warning:[/] the token was given on the command line, so it is in your shell history "
            "(and, while this ran, in the process list); next time use `--token -`, BBO_TOKEN, or the prompt",
            soft_wrap=True,
        )


def _login_token(given: str | None) -> tuple[str, bool]:
    """The token `login` checks, and whether it came on the command line: `-` reads one line of stdin;
    none given, BBO_TOKEN, else a hidden prompt when stdin is a terminal."""
    if given == "-":
        token = sys.stdin.readline().strip()
        if not token:
            _fail("--token - read no token from stdin")
        return token, False
    if given is not None:
        if not given.strip():
            _fail("--token is empty")
        return given.strip(), True
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), False
    if not sys.stdin.isatty():
        _fail(
            f"no token: give --token - (read from stdin), set {TOKEN_ENV}, or run in a terminal to be asked"
        )
    import getpass

    try:
        token = getpass.getpass("team token (hidden): ").strip()
    except (EOFError, KeyboardInterrupt):
        err.print("")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not token:
        _fail("no token given")
    return token, False


def submit(
    path: Path = typer.Argument(..., help="A folder with optimizer.py at its top level, or a zip of one."),
    phase: str = typer.Option(None, "--phase", help="Phase to enter: feedback (default) or final."),
    wait: bool = typer.Option(False, "--wait", help="Follow the scoring live until it ends."),
    as_json: bool = JsonOpt,
    interval: float = IntervalOpt,
) -> None:
    """Zip a submission like the starter kit does, upload it, and (with --wait) follow it to its score."""
    api = _api()
    info = api.get("/v1/info")
    data, filename = pack(path)
    max_mb = (info.get("submission") or {}).get("max_zip_mb")
    if max_mb and len(data) > max_mb * 1024 * 1024:
        _fail(f"{filename} is {len(data) / 2**20:.1f} MiB; this competition accepts at most {max_mb} MiB")
    sub = upload(api, data, filename, phase)
    err.print(f"submitted [bold]{plain(sub['id'])}[/] ({_size(len(data))}): {plain(sub['state'])}")
    if wait:
        sub = _follow(api, sub["id"], as_json_lines=False, interval=interval)
    _report(sub, as_json)


def status(
    sid: str = typer.Argument(None, metavar="[ID]", help="Submission id (default: your latest submission)."),
    watch: bool = typer.Option(
        False, "--watch", help="Keep following until it ends (with --json: one JSON line per change)."
    ),
    as_json: bool = JsonOpt,
    interval: float = IntervalOpt,
) -> None:
    """Show a submission's state, progress and (running) score."""
    api = _api()
    if sid is None:
        found = api.get("/v1/submissions", params={"limit": 1})
        if not found:
            _fail("you have no submissions yet (`bbo submit PATH`)")
        sid = found[0]["id"]
    if watch:
        sub = _follow(api, sid, as_json_lines=as_json, interval=interval)
        if not as_json:
            typer.echo(_describe(sub))
        return
    _report(api.get(f"/v1/submissions/{sid}"), as_json)


def stop(
    sid: str = typer.Argument(..., metavar="ID", help="The submission to stop (queued or running)."),
    as_json: bool = JsonOpt,
) -> None:
    """Stop one of your submissions; finished studies are kept, the rest is cancelled or killed."""
    sub = _api().post(f"/v1/submissions/{sid}/stop")
    err.print(f"stopped {sid}")
    _report(sub, as_json)


def submissions(
    as_json: bool = JsonOpt,
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="How many, newest first."),
) -> None:
    """List your submissions, newest first."""
    subs = _api().get("/v1/submissions", params={"limit": limit})
    if as_json:
        emit_json(subs)
        return
    if not subs:
        err.print("no submissions yet")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("id", "created (UTC)", "state", "studies", "score"):
        table.add_column(column, justify="right" if column in ("studies", "score") else "left", no_wrap=True)
    for sub in subs:
        counts = sub["progress"]
        if sub.get("score") is not None:
            score = f"{sub['score']:.3f}"
        elif sub.get("partial_score") is not None:
            score = f"({sub['partial_score']:.3f})"
        else:
            score = sub["failure"]["cause"] if sub.get("failure") else ""
        table.add_row(
            plain(sub["id"]),
            plain(sub["created_at"]),
            plain(sub["state"]),
            f"{counts['studies_done']}/{counts['studies_total']}",
            plain(score),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def leaderboard(
    phase: str = typer.Option("feedback", "--phase", help="Which leaderboard: feedback or final."),
    as_json: bool = JsonOpt,
) -> None:
    """The public leaderboard: each team's best scored submission, best first."""
    board = _api(need_token=False).get("/v1/leaderboard", params={"phase": phase})
    if as_json:
        shown = {"phase": board["phase"], "frozen": board.get("frozen", False), "rows": board["rows"]}
        for field in ("released", "pending"):
            if field in board:
                shown[field] = board[field]
        emit_json(shown)
        return
    if board.get("pending"):
        err.print(plain(board["pending"]))
        return
    if board.get("frozen"):
        err.print(f"the leaderboard is frozen since {plain(board['frozen_at'])}: later scores are not shown")
    if not board["rows"]:
        err.print(f"no scored submissions in the {phase} phase yet")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=plain(f"{board.get('competition', '')} {phase} leaderboard".strip()))
    # The final board says how sure it is: a 95% interval over studies and how often the rank holds.
    uncertain = "ci_low" in board["rows"][0]
    extra = ("95% interval", "rank holds") if uncertain else ()
    for column in ("rank", "team", "score", *extra, "submission", "scored (UTC)"):
        left = column in ("team", "submission", "scored (UTC)")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for row in board["rows"]:
        cells = ()
        if uncertain:
            cells = (f"{row['ci_low']:.3f} - {row['ci_high']:.3f}", f"{row['rank_stability']:.0%}")
        table.add_row(
            str(row["rank"]),
            plain(row["team"]),  # every team's name: another team's may be hostile
            f"{row['score']:.3f}",
            *cells,
            plain(row["submission"]),
            plain(row["scored_at"]),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def select(
    sid: str = typer.Argument(
        None, metavar="[ID]", help="One of your scored feedback submissions (none: show your current entry)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Choose the submission you enter the final phase with; without a choice, your best one enters."""
    api = _api()
    chosen = api.post(f"/v1/submissions/{sid}/select") if sid else api.get("/v1/selection")
    if as_json:
        emit_json(chosen)
        return
    if chosen["submission"] is None:
        typer.echo("no scored feedback submission yet: your best one will enter the final phase")
        return
    how = "your pick" if chosen["selected"] else "your best (no pick made)"
    locked = "; locked: the final phase has been launched" if chosen["locked"] else ""
    typer.echo(
        safe_text(f"final-phase entry: {chosen['submission']} ({how}), score {chosen['score']:.3f}{locked}")
    )


def info(as_json: bool = JsonOpt) -> None:
    """The competition's rules, phase windows and your remaining quota for today."""
    data = _api(need_token=False).get("/v1/info")
    if as_json:
        emit_json(data)
        return
    lines = [f"{data['competition']}: {data.get('description', '')}".rstrip(": ")]
    lines.append(f"studies of {data['rounds']} rounds x {data['batch']} suggestions")
    for phase in data["phases"]:
        window = (
            f"opens {phase['opens'] or 'now'}, closes {phase['closes'] or 'never'}, "
            f"{'open' if phase['open'] else 'closed'}"
        )
        lines.append(
            f"phase {phase['name']}: {phase['problems']} problems x {phase['studies']} studies; {window}"
        )
    limits = data.get("limits", {})
    rules = data.get("submission", {})
    lines.append(
        f"optimizer time per study {limits.get('suggest_budget_s')} s, "
        f"per call {limits.get('call_timeout_s')} s; zip up to {rules.get('max_zip_mb')} MiB; "
        f"{rules.get('daily_quota')} submissions per UTC day"
    )
    if "quota" in data:
        quota = data["quota"]
        lines.append(
            f"team {data['team']}: {quota['remaining']} of {quota['limit']} submissions left today "
            f"(resets {quota['resets_at']})"
        )
    typer.echo("\n".join(safe_text(line) for line in lines))


def register(app: typer.Typer) -> None:
    """Add the team commands to the `bbo` app."""
    for command in (login, submit, status, stop, submissions, leaderboard, select, info):
        app.command(command.__name__)(command)
