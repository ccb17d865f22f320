"""`bbo`: the team commands, with the organizers' commands under `bbo admin`."""

from __future__ import annotations

import typer

from cli import admin, team, validate_cmd

app = typer.Typer(
    name="bbo",
    help="bbo-arena: submit black-box optimizers and follow their scores; `bbo admin` runs the competition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(admin.app, name="admin")
team.register(app)
app.command("validate")(validate_cmd.validate)


@app.callback()
def main() -> None:
    """bbo-arena command line."""


if __name__ == "__main__":
    app()
