"""How every command speaks: JSON on stdout, messages and progress on stderr, one-line errors.

Text a team controls (failure messages, file names, team names, optimizer output, exception text) is
shown through `queue_schema.untrusted.safe_text` (with `markup=True` inside Rich markup or a Rich table
cell); a URL through `redact_url`. `fail` does both for its whole message.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True, highlight=False)


def studies_progress() -> Progress:
    """The bar `bbo admin score` and `bbo submit --wait` show: state, studies done, running score, time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[score]}"),
        TimeElapsedColumn(),
        console=err,
    )


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def with_redis(function: Any, *args: Any, errors: tuple[type[Exception], ...] = (), **kwargs: Any) -> Any:
    """`function(redis, *args, **kwargs)` on the configured or embedded Redis (started if none runs); an
    unreachable store, one that refuses writes, or one of `errors` (the caller's refusals) is a one-line
    failure."""
    import redis

    from queue_schema.connection import RedisUnavailable, connect, store_refusal
    from runtime.redis_server import ensure_redis

    try:
        with ensure_redis() as url:
            return function(connect(url), *args, **kwargs)
    except (RedisUnavailable, *errors) as exc:
        fail(str(exc))
    except redis.ResponseError as exc:
        refusal = store_refusal(exc)
        if refusal is None:
            raise
        fail(f"the store refuses writes ({refusal}): {exc}")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        fail(f"the store stopped answering: {exc}")


def fail(message: str, code: int = 2) -> NoReturn:
    """Rejected input or an unreachable service: one line on stderr, non-zero exit. The message is plain
    text (it often carries an exception's, or a team's, words): shown as written, credentials redacted."""
    err.print(f"[bold red]error:[/] {plain(message)}", soft_wrap=True)
    raise typer.Exit(code)


def plain(text: object, limit: int | None = None) -> str:
    """Untrusted text for a Rich markup string or table cell: controls made visible, markup escaped, URL
    credentials redacted."""
    from queue_schema.untrusted import markup_text

    return markup_text(text, limit)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While scoring: whatever anything prints on stdout (a study's notes, a worker started meanwhile,
    which inherits the descriptor) goes to stderr, so that a command's stdout holds its JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def guard_service_output() -> None:
    """A service process (worker, gateway, autoscaler): every line it writes on stdout or stderr goes
    through safe_text with URL credentials redacted, wherever it lands (a terminal, a log file), since
    log lines carry exception text, request paths and team names."""
    from queue_schema.untrusted import SafeLines

    if not isinstance(sys.stdout, SafeLines):
        sys.stdout = SafeLines(sys.stdout)
    if not isinstance(sys.stderr, SafeLines):
        sys.stderr = SafeLines(sys.stderr)
