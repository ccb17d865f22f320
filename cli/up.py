"""`bbo admin up`: the whole service on one machine, in the foreground.

Owns the embedded Redis (unless BBO_REDIS_URL points elsewhere), runs the gateway and N workers as child
processes, restarts a child or the owned Redis when it dies (with a back-off, so a crash loop does not
spin), and on Ctrl-C or SIGTERM stops everything warmly: workers finish nothing new, running studies'
sandboxes are killed with them, and Redis flushes its AOF last.

The children, their restarts and their output (relayed line by line through `safe_line`, never onto our
stdout) are runtime.supervisor's, shared with the demo, the benchmarks and the tests. Each child runs in a
process group of its own, so a Ctrl-C reaches `up` alone, which stops them in order; SIGHUP (the terminal
went away) stops everything too, rather than leaving the children running without it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import typer

from cli.output import err, fail
from queue_schema.connection import RedisUnavailable
from queue_schema.untrusted import redact_url
from runtime.supervisor import Child, StoreWatch, stop_children, supervise


def up_command(
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", min=0, help="Scoring workers to run."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Gateway port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Gateway interface."),
    spec_name: str = typer.Option("demo", "--spec", help="Competition spec: a shipped name or a path."),
    backend: str = typer.Option(
        "auto", "--backend", help="Sandbox for studies: auto, docker, bwrap, process."
    ),
    autoscale: str = typer.Option(
        "none",
        "--autoscale",
        help="Fleet sizing: none (--workers fixed workers) or local (the autoscaler daemon runs local "
        "workers, up to --workers, as the queue needs them; drained on stop).",
    ),
) -> None:
    """Run the embedded Redis, the gateway and the workers in the foreground; Ctrl-C stops all of it."""
    from runtime.redis_server import ensure_redis
    from runtime.spec import SpecError, load
    from workers.sandbox import SandboxRefused, SandboxUnavailable, select

    if autoscale not in ("none", "local"):
        fail(f"--autoscale {autoscale} is not available in this build: use none or local")
    try:
        spec = load(spec_name)
        select(backend)  # refuse an unusable or unsafe sandbox before starting anything
    except (SpecError, SandboxRefused, SandboxUnavailable) as exc:
        fail(str(exc))
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    store: list[StoreWatch] = []
    try:
        with ensure_redis(on_owned=lambda server: store.append(StoreWatch(server))) as url:
            env = {**os.environ, "BBO_REDIS_URL": url}
            children = system_children(
                env,
                host=host,
                port=port,
                spec_name=spec_name,
                backend=backend,
                workers=workers,
                autoscale=autoscale,
            )
            for child in children:
                child.start()
            err.print(
                f"bbo-arena up: [bold]{spec.name}[/] on http://{host}:{port}, "
                f"{workers} worker(s){' at most, autoscaled' if autoscale == 'local' else ''}, sandbox "
                f"{backend}, store {redact_url(url)}; Ctrl-C to stop",
                soft_wrap=True,
            )
            supervise([*children, *store], lambda: stopping, lambda line: err.print(line, soft_wrap=True))
            err.print("stopping: workers finish nothing new, the gateway closes, Redis flushes")
            stop_children(children)
    except RedisUnavailable as exc:
        fail(str(exc))


# -- the system's processes, shared with `bbo admin demo` -------------------------------------------


def system_children(
    env: dict[str, str],
    *,
    host: str,
    port: int,
    spec_name: str,
    backend: str,
    workers: int,
    autoscale: str,
    autoscaler_args: tuple[str, ...] = (),
    log_dir: Path | None = None,
) -> list[Child]:
    """The gateway and the fleet, not started yet; with `log_dir`, each writes to its own log there."""
    cli = [sys.executable, "-m", "cli", "admin"]
    serve = [*cli, "serve", "--host", host, "--port", str(port), "--spec", spec_name, "--backend", backend]
    children = [Child("gateway", [*serve, "--log-level", "warning"], env)]
    children += _fleet(cli, env, workers, autoscale, autoscaler_args)
    for child in children:
        child.log = None if log_dir is None else log_dir / f"{child.name}.log"
    return children


def _fleet(
    cli: list[str], env: dict[str, str], workers: int, autoscale: str, autoscaler_args: tuple[str, ...] = ()
) -> list[Child]:
    """The scoring workers: a fixed set, or the autoscaler daemon that starts and drains them itself
    (draining them when `up` stops, so none outlives the Redis they need)."""
    if autoscale == "local":
        run = [*cli, "autoscaler", "run", "--provider", "local", "--max", str(max(1, workers))]
        return [Child("autoscaler", [*run, "--drain-on-exit", *autoscaler_args], env)]
    return [
        Child(f"worker-{i}", [*cli, "worker", "--name", f"up-{os.getpid()}-{i}"], env) for i in range(workers)
    ]
