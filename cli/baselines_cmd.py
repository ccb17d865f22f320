"""`bbo admin baselines`: build and inspect the baselines that normalize every score of a spec."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

import typer

app = typer.Typer(
    help="Build and inspect a spec's baselines: random-search studies and a long strong-optimizer run per "
    "problem, from which bayesmark derives the clip and best-known (opt) losses that normalize scores. "
    "A build goes beside a spec given by path (myspec.toml -> myspec.baselines.json), else to the state "
    "folder (<state>/baselines/SPEC.json); every command looks there first, then in the package's "
    "shipped files.",
    no_args_is_help=True,
)

SPEC_HELP = "Competition spec: a shipped name (e.g. demo, neurips2020) or a path to a spec TOML file."
JSON_HELP = "Print JSON to stdout instead of a table."


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _load_spec(name: str):
    from runtime.spec import SpecError, load

    try:
        return load(name)
    except SpecError as exc:
        _fail(str(exc))


def _phase_of(spec, problem: str) -> str:
    return next((name for name, phase in spec.phases.items() if problem in phase.problems), "-")


def _table(spec, data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"baselines {data['version']} ({data['rounds']} rounds x {data['batch']})")
    for column in ("problem", "phase", "clip", "opt", "random best", "strong best", "random final"):
        table.add_column(column, justify="left" if column in ("problem", "phase") else "right", no_wrap=True)
    for name, entry in data["problems"].items():
        table.add_row(
            name,
            _phase_of(spec, name) if spec else "-",
            f"{entry['clip']:.6g}",
            f"{entry['opt']:.6g}",
            f"{entry['random_best']:.6g}",
            f"{entry['strong_best']:.6g}",
            f"{entry['mean_normed'][-1]:.4f}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or captured: print whole rows rather than ellipses
    console.print(table)


@app.command()
def build(
    spec: str = typer.Option(..., "--spec", help=SPEC_HELP),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Worker processes running studies in parallel (default: CPU count)."
    ),
    fleet: bool = typer.Option(
        False,
        "--fleet",
        help="Run the studies on the running fleet (one job per study on the organizers' queue, taken by "
        "any worker) instead of this machine, and wait for them. Ctrl-C leaves the build running there; "
        "the same command again resumes it (nothing stored, queued or running is enqueued twice) and "
        "writes the file when every study is stored.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where to write the baseline file (default: beside a spec given by path, as "
        "SPEC.baselines.json, else <state>/baselines/SPEC.json; never inside the package).",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the baseline studies of every problem of SPEC (both phases) and write its baseline file."""
    from baselines.build import build_baselines, build_path, rich_progress, write_baseline_file
    from cli.output import stdout_to_stderr

    loaded = _load_spec(spec)
    plan = loaded.baseline_plan()
    if fleet and workers is not None:
        _fail("--workers sizes a local build; on the fleet, the running workers take the studies")
    extra: dict[str, Any] = {}
    if fleet:
        from cli.baselines_fleet import build_on_fleet

        data, r, extra["fleet"] = build_on_fleet(plan, spec)
    else:
        n_workers = workers or os.cpu_count() or 1
        # bayesmark's study loop prints notes on stdout (in this process or its pool's): stdout is the JSON's.
        with stdout_to_stderr(), rich_progress(f"baselines {loaded.name}") as progress:
            data = build_baselines(plan, n_workers, progress)
    try:
        path = write_baseline_file(data, out if out is not None else build_path(plan))
    except OSError as exc:
        _fail(f"cannot write the baseline file: {exc}")
    if fleet:
        from runtime.baseline_fleet import written

        written(r, plan, str(path), data["version"])
    if as_json:
        typer.echo(json.dumps({"path": str(path), **extra, **data}))
        return
    typer.echo(str(path))
    _table(loaded, data)


@app.command()
def show(
    spec: str = typer.Option(..., "--spec", help=SPEC_HELP),
    path: Path | None = typer.Option(
        None, "--path", help="Read this baseline file instead of the one the lookup finds."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show the baselines of SPEC: which file the scores use (the lookup order: beside a spec given by
    path, the state folder, the package), its version, provenance and per-problem clip/opt values."""
    from baselines.store import BaselineError, build_command, load_baselines, lookup_paths

    loaded = _load_spec(spec)
    plan = loaded.baseline_plan()
    try:
        baselines = load_baselines(plan, path, check=False)
    except BaselineError as exc:
        _fail(str(exc))
    problem = None
    try:
        baselines.check_compatible(plan)
    except BaselineError as exc:
        problem = str(exc)
    missing = [p for p in loaded.all_problems() if p not in baselines]
    if missing and problem is None:
        problem = f"no baseline for {', '.join(missing)}; rebuild with: {build_command(loaded.name)}"
    looked = [{"path": str(p), "exists": p.is_file()} for p in lookup_paths(plan)]
    if as_json:
        extra = {"path": str(baselines.path), "spec_hash_current": loaded.hash, "usable": problem is None}
        typer.echo(json.dumps(extra | {"problem": problem, "lookup": looked} | baselines.data))
        return
    typer.echo(str(baselines.path))
    if path is None:
        # Which file wins and why: an organizer's build shadows what shipped.
        typer.echo("lookup order (first found is used):")
        for rank, entry in enumerate(looked, 1):
            mark = (
                "used" if entry["path"] == str(baselines.path) else "found" if entry["exists"] else "absent"
            )
            typer.echo(f"  {rank}. {entry['path']} ({mark})")
    provenance = baselines.data.get("provenance", {})
    typer.echo(
        f"created {baselines.data.get('created_at')} for spec hash {baselines.spec_hash}"
        f"{'' if baselines.spec_hash == loaded.hash else f' (spec now hashes to {loaded.hash})'}; "
        f"{provenance.get('random_studies')} random studies, "
        f"strong run of {provenance.get('strong_rounds')} rounds"
    )
    _table(loaded, baselines.data)
    if problem:
        typer.echo(f"warning: {problem}", err=True)


if __name__ == "__main__":
    app()
