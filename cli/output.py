"""How every command speaks: JSON on stdout, messages and progress on stderr, one-line errors."""

from __future__ import annotations

import json
import sys
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

    from competition.redis_server import ensure_redis
    from queue_schema.connection import RedisUnavailable, connect, store_refusal

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
    """Rejected input or an unreachable service: one line on stderr, non-zero exit."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)
