"""The team CLI against a live gateway (uvicorn on 127.0.0.1, a random port) and a real Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest
import typer
from typer.testing import CliRunner

from cli import team as team_cli
from competition import service, teams
from gateway.app import create_app
from queue_schema.connection import rq_connection
from runtime.spec import load
from tests.conftest import SUBMISSIONS
from tests.live_server import free_port, serving
from workers.fair_worker import FairSimpleWorker

SUBMISSION_KEYS = {"id", "team", "state", "score", "failure", "progress", "created_at"}
OPTIONAL_KEYS = {"partial_score"}


def tiny_spec():
    """The demo rules on two fast problems, one study each: a submission scores in seconds."""
    spec = load("demo")
    feedback = dataclasses.replace(
        spec.phases["feedback"], problems=("DT-iris-acc", "lasso-diabetes-mae"), studies=1, studies_per_job=1
    )
    return dataclasses.replace(spec, phases={**spec.phases, "feedback": feedback})


def bbo() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """bbo (team commands under test)."""

    team_cli.register(app)
    return app


@pytest.fixture()
def server(r, unsafe_ok):
    with serving(create_app(tiny_spec(), "process")) as url:
        yield url


@pytest.fixture()
def config_dir(tmp_path, monkeypatch):
    folder = tmp_path / "bbo-config"
    monkeypatch.setenv("BBO_CONFIG_DIR", str(folder))
    monkeypatch.delenv("BBO_SERVER", raising=False)
    monkeypatch.delenv("BBO_TOKEN", raising=False)
    return folder


def run(*args: str):
    return CliRunner().invoke(bbo(), list(args), catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture()
def logged_in(server, config_dir, r):
    token = teams.add_team(r, "alpha")
    result = run("login", "--server", server, "--token", token)
    assert result.exit_code == 0, result.stderr
    return server, token


def assert_submission_shape(obj: dict) -> None:
    assert SUBMISSION_KEYS <= set(obj) <= SUBMISSION_KEYS | OPTIONAL_KEYS, obj
    assert set(obj["progress"]) == {"studies_done", "studies_total"}
    assert obj["state"] in ("queued", "running", "scored", "failed", "stopped")


def work() -> None:
    conn = rq_connection()
    FairSimpleWorker(connection=conn).work(burst=True, logging_level="WARNING")


def test_login_checks_the_token_and_writes_a_private_config(server, config_dir, r):
    token = teams.add_team(r, "alpha")
    result = run("login", "--server", server + "/", "--token", token)
    assert result.exit_code == 0, result.stderr
    assert "alpha" in result.stderr
    path = config_dir / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"server": server, "token": token}
    info = run("info", "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["quota"]["remaining"] == 20


def test_login_keeps_the_token_out_of_the_command_line(server, config_dir, r, monkeypatch):
    token = teams.add_team(r, "alpha")
    saved = config_dir / "config.json"
    # From stdin: `bbo login --server URL --token - < token.txt`.
    result = CliRunner().invoke(bbo(), ["login", "--server", server, "--token", "-"], input=f"{token}\n")
    assert result.exit_code == 0, result.stderr
    assert "alpha" in result.stderr and "warning" not in result.stderr
    assert json.loads(saved.read_text()) == {"server": server, "token": token}
    saved.unlink()
    # From the environment.
    monkeypatch.setenv("BBO_TOKEN", token)
    result = run("login", "--server", server)
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr
    assert json.loads(saved.read_text())["token"] == token
    monkeypatch.delenv("BBO_TOKEN")
    saved.unlink()
    # On the command line it still works (the contract), with a one-line warning.
    result = run("login", "--server", server, "--token", token)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "shell history" in warnings[0] and token not in result.stderr
    # No token at all and no terminal to ask on: a one-line error.
    saved.unlink()
    line = one_line_error(run("login", "--server", server))
    assert "--token -" in line and "BBO_TOKEN" in line
    assert not saved.exists()
    assert "--token -" in run("login", "--help").stdout


def test_login_asks_for_the_token_on_a_terminal_without_echoing_it(server, config_dir, r):
    from bench.terminal_scan import PtyProgram

    token = teams.add_team(r, "alpha")
    env = {k: v for k, v in os.environ.items() if k != "BBO_TOKEN"}
    login = PtyProgram([sys.executable, "-m", "cli", "login", "--server", server], env)
    try:
        login.wait_text("team token", 60, "the hidden prompt")
        login.send(token + "\r")
        login.proc.wait(60)
    finally:
        login.stop()
    shown = login.output.decode(errors="replace")
    assert login.proc.returncode == 0, shown
    assert "logged in" in shown and "alpha" in shown and "warning" not in shown
    assert token not in shown  # not echoed
    assert json.loads((config_dir / "config.json").read_text()) == {"server": server, "token": token}


def test_a_wrong_token_or_a_dead_server_is_a_one_line_error(server, config_dir):
    line = one_line_error(run("login", "--server", server, "--token", "bbo_not_a_token"))
    assert "token" in line and "401" in line
    assert not (config_dir / "config.json").exists()
    port = free_port()  # nobody listens there
    line = one_line_error(run("login", "--server", f"http://127.0.0.1:{port}", "--token", "x"))
    assert f"cannot reach the server at http://127.0.0.1:{port}" in line
    result = run("submissions")
    assert "not logged in" in one_line_error(result) and result.exit_code == 2
    team_cli.save_config(f"http://127.0.0.1:{port}", "x")
    dead = run("status", "--json")
    assert "cannot reach" in one_line_error(dead) and dead.exit_code == 3


def test_submit_score_status_leaderboard_through_a_live_server(logged_in, r):
    result = run("submit", str(SUBMISSIONS / "random_search"), "--json")
    assert result.exit_code == 0, result.stderr
    submitted = json.loads(result.stdout)
    assert_submission_shape(submitted)
    assert submitted["state"] == "queued" and submitted["team"] == "alpha"
    assert submitted["progress"] == {"studies_done": 0, "studies_total": 2}
    work()
    status = run("status", "--json")  # no id: the latest
    assert status.exit_code == 0, status.stderr
    scored = json.loads(status.stdout)
    assert_submission_shape(scored)
    assert scored["id"] == submitted["id"] and scored["state"] == "scored"
    assert isinstance(scored["score"], float) and scored["failure"] is None
    assert scored["progress"] == {"studies_done": 2, "studies_total": 2}
    board = run("leaderboard", "--json")
    assert board.exit_code == 0
    parsed = json.loads(board.stdout)
    assert parsed["phase"] == "feedback"
    assert [(row["rank"], row["team"], row["submission"]) for row in parsed["rows"]] == [
        (1, "alpha", submitted["id"])
    ]
    assert parsed["rows"][0]["score"] == scored["score"]
    listed = run("submissions", "--json")
    assert [s["id"] for s in json.loads(listed.stdout)] == [submitted["id"]]
    human = run("status", submitted["id"])
    assert human.exit_code == 0 and "scored" in human.stdout and "score" in human.stdout


def test_stop_and_watch(logged_in, r):
    sid = json.loads(run("submit", str(SUBMISSIONS / "random_search"), "--json").stdout)["id"]
    other = json.loads(run("submit", str(SUBMISSIONS / "random_search"), "--json").stdout)["id"]
    threading.Timer(0.6, service.stop, args=(r, sid)).start()
    watched = run("status", sid, "--watch", "--json", "--interval", "0.1")
    assert watched.exit_code == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    for obj in lines:
        assert_submission_shape(obj)
    assert [obj["state"] for obj in lines] == ["queued", "stopped"]  # one line per change
    stopped = run("stop", other, "--json")
    assert stopped.exit_code == 0 and json.loads(stopped.stdout)["state"] == "stopped"
    again = run("stop", other)
    assert "already stopped" in one_line_error(again) and again.exit_code == 2
    assert "no submission" in one_line_error(run("status", "s00000000ffffffffff"))


def test_a_rejected_upload_is_a_one_line_error(logged_in, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "optimizer.py").write_text("def broken(:\n")
    line = one_line_error(run("submit", str(folder)))
    assert "syntax error in optimizer.py line 1" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no optimizer.py" in one_line_error(run("submit", str(empty)))


@pytest.mark.system
def test_submit_wait_follows_a_real_worker_to_the_score(logged_in, redis_server):
    env = {**os.environ, "BBO_REDIS_URL": redis_server, "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "admin", "worker"], env=env, stdin=subprocess.DEVNULL
    )
    try:
        result = run("submit", str(SUBMISSIONS / "random_search"), "--wait", "--json", "--interval", "0.2")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert result.exit_code == 0, result.stderr
    final = json.loads(result.stdout)  # one object: the final state
    assert_submission_shape(final)
    assert final["state"] == "scored" and final["score"] is not None


def test_validate_follows_the_rules_of_the_competition_logged_in_to(logged_in, monkeypatch):
    monkeypatch.delenv("BBO_ALLOW_UNSAFE_SANDBOX", raising=False)  # a team's machine has no opt-in
    spec = tiny_spec()
    from cli.main import app

    result = CliRunner().invoke(
        app, ["validate", str(SUBMISSIONS / "random_search"), "--rounds", "2", "--studies", "1"]
    )
    assert result.exit_code == 0, result.output
    assert f"{spec.name} rules" in result.stderr
    assert f"x {spec.batch} (" in result.stderr  # the server's batch size, not neurips2020's 8
