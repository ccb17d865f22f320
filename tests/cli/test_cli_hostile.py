"""The admin and team commands facing a hostile optimizer's text (issue 14, findings 5 and 10): stdout
holds a command's JSON alone, whatever a worker or a study prints; Rich markup in a failure message or in
the optimizer's output is shown as text (it was a MarkupError); no escape sequence of the team's reaches
the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.terminal_scan import count_hostile, hostile
from cli.main import app
from runtime.spec import SPECS_DIR
from tests.conftest import SUBMISSIONS
from tests.scoring_helpers import PROBLEM, score_tiny

ROOT = Path(__file__).resolve().parents[2]
MARKUP = "[/] [link=file:///etc/passwd]x[/link] [bold red]"

CHATTY = f'''"""Random search that writes escapes and markup on stderr at every call, and whose first
suggest raises with them (bayesmark substitutes a random batch)."""

import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HOSTILE = {hostile("CHATTY")!r}


class Chatty(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.calls = 0

    def suggest(self, n_suggestions=1):
        print(HOSTILE, file=sys.stderr, flush=True)
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError(HOSTILE)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        print(HOSTILE, file=sys.stderr, flush=True)


if __name__ == "__main__":
    experiment_main(Chatty)
'''

CTOR_RAISES = f'''"""Its constructor raises with markup and escapes in the message."""

from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Crashes(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        raise RuntimeError({(MARKUP + " " + hostile("CTOR"))!r})

    def suggest(self, n_suggestions=1):
        return []

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Crashes)
'''


def optimizer(tmp_path: Path, name: str, source: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "optimizer.py").write_text(source)
    return folder


def tiny_spec_file(tmp_path: Path) -> Path:
    """The demo spec (its rounds x batch and baseline settings, so its baselines apply) with one problem
    and one study in the feedback phase: a submission scores in seconds."""
    demo = (SPECS_DIR / "demo.toml").read_text()
    problems = 'problems = ["DT-iris-acc", "lasso-diabetes-mae", "SVM-wine-nll", "RF-iris-acc"]\nstudies = 2'
    assert problems in demo
    path = tmp_path / "tiny.toml"
    path.write_text(demo.replace(problems, f'problems = ["{PROBLEM}"]\nstudies = 1'))
    return path


def bbo(*args: str, state: Path, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "BBO_REDIS_URL"}
    env.update(BBO_STATE_DIR=str(state), BBO_ALLOW_UNSAFE_SANDBOX="1")
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, env=env, timeout=timeout, cwd=ROOT
    )


@pytest.mark.system
def test_score_json_is_one_object_on_stdout_when_suggest_raises(tmp_path):
    # bayesmark prints {"optimizer_suggest_exception": ...} from inside the study loop, in the worker.
    done = bbo(
        "admin",
        "score",
        str(SUBMISSIONS / "suggest_raises"),
        "--spec",
        str(tiny_spec_file(tmp_path)),
        "--backend",
        "process",
        "--workers",
        "1",
        "--json",
        state=tmp_path / "state",
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1, done.stdout.decode()
    report = json.loads(lines[0])
    assert report["state"] == "scored" and [p["problem"] for p in report["problems"]] == [PROBLEM]


@pytest.mark.system
def test_score_shows_a_failure_message_with_markup_and_escapes_as_text(tmp_path):
    done = bbo(
        "admin",
        "score",
        str(optimizer(tmp_path, "ctor_raises_hostile", CTOR_RAISES)),
        "--spec",
        str(tiny_spec_file(tmp_path)),
        "--backend",
        "process",
        "--workers",
        "1",
        state=tmp_path / "state",
    )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr  # a failed submission is a reported result, not an error
    assert "MarkupError" not in stderr and "Traceback" not in stderr
    assert "optimizer_crashed" in stderr and "[link=file:///etc/passwd]x[/link]" in stderr
    assert count_hostile(done.stdout + done.stderr) == 0
    assert done.stdout.decode().strip() == "state: failed"


@pytest.mark.usefixtures("unsafe_ok")
def test_reproduce_shows_the_optimizers_output_as_text(r, tmp_path):
    sub = score_tiny(r, "alpha", folder=str(optimizer(tmp_path, "chatty_hostile", CHATTY)))
    assert sub.state.value == "scored", sub
    result = CliRunner().invoke(app, ["admin", "reproduce", sub.id, PROBLEM, "0"])
    assert result.exit_code == 0, result.output  # was a MarkupError on the "[/]" of the first line
    assert result.stdout.startswith(("MATCH:", "MISMATCH:"))
    assert "CHATTY" in result.stderr and "[link=file:///etc/passwd]x[/link]" in result.stderr
    assert count_hostile(result.stdout_bytes + result.stderr_bytes) == 0


def test_validate_json_is_one_object_and_its_stderr_tail_is_safe(tmp_path):
    folder = optimizer(tmp_path, "chatty_hostile", CHATTY)
    done = bbo("validate", str(folder), "--rounds", "2", "--studies", "1", "--json", state=tmp_path / "state")
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["ok"] is True
    shown = bbo("validate", str(folder), "--rounds", "2", "--studies", "1", state=tmp_path / "state")
    assert shown.returncode == 0, shown.stderr.decode()
    assert "optimizer stderr (last lines)" in shown.stderr.decode()  # the tail is shown: suggest raised
    assert count_hostile(shown.stdout + shown.stderr) == 0


def test_admin_tables_and_messages_show_a_hostile_team_and_reason_as_text(r):
    from queue_schema.records import transition
    from queue_schema.states import FailureCause, SubmissionState
    from runtime.spec import load
    from tests.console_helpers import record

    # A team name as no organizer would type it (records take what they are given), a failure message
    # and an organizer's reason with markup and escapes.
    team = "evil\x1b]0;bbo-hostile-title\x07[/]"
    sub = record(r, "s0000000eeeeeeeee1", team, 1_790_000_000.0, load("demo"))
    transition(r, sub.id, SubmissionState.RUNNING)
    transition(r, sub.id, SubmissionState.FAILED, failure=(FailureCause.OPTIMIZER_CRASHED, MARKUP))
    runner = CliRunner()
    outputs = []
    for args in (
        ["admin", "submissions"],
        ["admin", "disqualify", sub.id, "--reason", f"{MARKUP} {hostile('REASON')}"],
        ["admin", "audit"],
        ["admin", "requalify", sub.id],
        ["admin", "team", "quota", team, "3"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code in (0, 2) and "MarkupError" not in result.output, (args, result.output)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), args
        outputs.append(result.stdout_bytes + result.stderr_bytes)
    assert "evil" in outputs[0].decode() and "[link=file:///etc/passwd]" in outputs[2].decode()
    assert count_hostile(b"".join(outputs)) == 0
