"""`bbo admin sandbox`: build and inspect the docker sandbox image, offline."""

from __future__ import annotations

import typer

from cli.output import emit_json, err, fail

app = typer.Typer(
    help="Build and inspect the sandbox image that runs every study's optimizer under the docker backend. "
    "The build needs no image registry: the base comes from debootstrap and packages from a wheelhouse.",
    no_args_is_help=True,
)

JSON_HELP = "Print JSON to stdout instead of a summary."


@app.command()
def build(
    base: str = typer.Option(
        "auto",
        "--base",
        help="Base image with Python 3.11 and venv. 'auto': python:3.11-slim if the engine already has "
        "it, else an offline Debian bookworm base made with debootstrap (needs root and the debootstrap "
        "package); 'debootstrap' forces the latter; any other name is used as is (pulled if missing).",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the content-tagged image exists."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Build the content-tagged sandbox image (skipped if present) and record its id."""
    from sandbox_image.build import BuildError
    from sandbox_image.build import build as build_image

    try:
        record = build_image(base=base, force=force)
    except BuildError as exc:
        fail(str(exc))
    if as_json:
        emit_json(record)
        return
    verb = "present" if record["reused"] else f"built in {record['build_seconds']:.0f} s"
    err.print(
        f"{record['tag']} {verb}: {record['image_id']} ({record['size_bytes'] / 1e6:.0f} MB, base "
        f"{record['base'] or '?'})",
        soft_wrap=True,
    )


@app.command()
def venv(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Build the bwrap backend's optimizer environment: the image's packages as a venv (no engine needed)."""
    from sandbox_image.build import BuildError, ensure_sandbox_venv

    try:
        path = ensure_sandbox_venv()
    except BuildError as exc:
        fail(str(exc))
    if as_json:
        emit_json({"venv": str(path), "python": str(path / "bin" / "python")})
    else:
        err.print(f"sandbox venv ready: {path}", soft_wrap=True)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Say which image this source tree needs, whether the engine answers and has it; exit 1 if not."""
    from sandbox_image.build import BuildError, engine, image_tag, recorded

    tag = image_tag()
    info: dict[str, object] = {"tag": tag, "engine": False, "present": False, "image_id": None}
    try:
        client = engine()
        info["engine"] = True
        image = client.images.get(tag)
        info.update(present=True, image_id=image.id, size_bytes=int(image.attrs.get("Size", 0)))
    except BuildError as exc:
        info["error"] = str(exc)
    except Exception:  # noqa: BLE001 - the image is missing (or unreadable): not present
        pass
    info["last_build"] = recorded()
    if as_json:
        emit_json(info)
    elif not info["engine"]:
        err.print(f"error: {info['error']}", soft_wrap=True)
    elif info["present"]:
        err.print(f"{tag} present: {info['image_id']}", soft_wrap=True)
    else:
        err.print(f"{tag} missing: build it with `bbo admin sandbox build`", soft_wrap=True)
    if not info["present"]:
        raise typer.Exit(1)
