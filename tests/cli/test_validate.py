"""`bbo validate`: the intake checks and a few real studies through the protocol, on the team's machine
(no Redis, no server, no unsafe-sandbox opt-in), with the failure cause the service would record."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import SUBMISSIONS

# Small and fast: the demo rules (batch 4), two rounds.
QUICK = ["--spec", "demo", "--rounds", "2", "--studies", "1"]
VERDICT_KEYS = {"ok", "cause", "message", "rounds", "best_loss", "seconds", "fatal", "stderr_tail"}


@pytest.fixture(autouse=True)
def team_machine(state_dir, monkeypatch):
    """What a team has: no Redis configured and no opt-in for the unsafe sandbox."""
    monkeypatch.delenv("BBO_ALLOW_UNSAFE_SANDBOX", raising=False)
    monkeypatch.delenv("BBO_REDIS_URL", raising=False)


def validate(path: Path, *extra: str):
    result = CliRunner().invoke(app, ["validate", str(path), *QUICK, "--json", *extra])
    verdict = json.loads(result.stdout) if result.stdout.strip() else None
    return result, verdict


def optimizer(tmp_path: Path, name: str, source: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "optimizer.py").write_text(source)
    return folder


RANDOM_SEARCH_WITH = """
import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Probe(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        {suggest}
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


experiment_main(Probe)
"""


@pytest.mark.parametrize("name", ["random_search", "chatty", "bundled_module"])
def test_good_optimizers_pass(name):
    result, verdict = validate(SUBMISSIONS / name)
    assert result.exit_code == 0, result.output
    assert set(verdict) >= VERDICT_KEYS
    assert verdict["ok"] is True and verdict["cause"] is None
    assert verdict["rounds"] == 2 and verdict["studies"][0]["state"] == "complete"
    assert verdict["best_loss"] < 0  # accuracy losses are negative
    assert "round 2/2" in result.stderr and "best loss" in result.stderr


def test_two_studies_each_in_a_fresh_process_and_human_output():
    result = CliRunner().invoke(
        app, ["validate", str(SUBMISSIONS / "random_search"), "--spec", "demo", "--rounds", "2"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("passed: 2 studies of 2 rounds x 4 on DT-iris-acc")
    assert "study 1 round 2/2" in result.stderr


def test_a_zip_validates_like_its_folder(tmp_path):
    archive = tmp_path / "submission.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in (SUBMISSIONS / "bundled_module").iterdir():
            z.write(path, path.name)
    result, verdict = validate(archive)
    assert result.exit_code == 0 and verdict["ok"], result.output


def test_a_raising_suggest_passes_with_warnings_and_the_stderr_tail():
    result, verdict = validate(SUBMISSIONS / "suggest_raises", "--rounds", "3")
    assert result.exit_code == 0, result.output
    assert verdict["ok"] and verdict["studies"][0]["suggest_fallbacks"] == 1
    assert any("suggest raised" in w for w in verdict["warnings"])
    assert any("no idea this round" in line for line in verdict["stderr_tail"])
    assert not any("OptimizerRaised" in line for line in result.stderr.splitlines())  # no harness noise


@pytest.mark.parametrize(
    ("name", "cause", "words"),
    [
        ("wrong_batch", "optimizer_crashed", "wrong number of points"),
        ("out_of_bounds", "optimizer_crashed", "out of range"),
        ("exits", "optimizer_crashed", "exited with code 7"),
        ("ctor_raises", "optimizer_crashed", "constructor exploded"),
        ("bad_import", "invalid_submission", "a_package_nobody_installed"),
        ("no_class", "invalid_submission", "experiment_main"),
        ("syntax_error", "invalid_submission", "syntax error in optimizer.py line 3"),
    ],
)
def test_broken_optimizers_fail_with_the_services_cause(name, cause, words):
    result, verdict = validate(SUBMISSIONS / name)
    assert result.exit_code == 1, result.output
    assert verdict["ok"] is False and verdict["cause"] == cause and verdict["fatal"] is True
    assert words in verdict["message"]


def test_a_crash_shows_the_optimizers_stderr_tail_in_human_output():
    result = CliRunner().invoke(app, ["validate", str(SUBMISSIONS / "ctor_raises"), *QUICK])
    assert result.exit_code == 1
    assert result.stdout.startswith("failed: optimizer_crashed: ")
    assert "the service would fail the submission" in result.stdout
    assert (
        "optimizer stderr" in result.stderr and 'raise RuntimeError("constructor exploded")' in result.stderr
    )


def test_a_hanging_suggest_is_cut_off_as_a_time_limit():
    # `slow` answers two rounds, then hangs ignoring SIGTERM: killed at the call timeout.
    result, verdict = validate(SUBMISSIONS / "slow", "--rounds", "4", "--call-timeout", "2")
    assert result.exit_code == 1, result.output
    assert verdict["cause"] == "time_limit" and verdict["fatal"] is False
    assert verdict["rounds"] == 2 and verdict["best_loss"] is not None
    assert "cut off after 2 of 4 rounds" in verdict["message"]


def test_a_hang_while_loading_is_a_fatal_time_limit(tmp_path):
    folder = optimizer(tmp_path, "stuck", "import time\n\ntime.sleep(120)\n")
    result, verdict = validate(folder, "--call-timeout", "2")
    assert result.exit_code == 1, result.output
    assert verdict["cause"] == "time_limit" and verdict["fatal"] is True
    assert "did not load within 2 s" in verdict["message"]


def test_running_out_of_memory_is_a_resource_limit(tmp_path):
    folder = optimizer(tmp_path, "hog", RANDOM_SEARCH_WITH.format(suggest='raise MemoryError("hog")'))
    result, verdict = validate(folder)
    assert result.exit_code == 1, result.output
    assert verdict["cause"] == "resource_limit"


def test_intake_refusals_are_invalid_submissions(tmp_path):
    nested = tmp_path / "outer"
    (nested / "inner").mkdir(parents=True)
    (nested / "inner" / "optimizer.py").write_text("pass\n")
    result, verdict = validate(nested)
    assert result.exit_code == 1 and verdict["cause"] == "invalid_submission"
    assert "inner/optimizer.py" in verdict["message"]

    not_a_zip = tmp_path / "notes.txt"
    not_a_zip.write_text("hello")
    result, verdict = validate(not_a_zip)
    assert result.exit_code == 1 and verdict["cause"] == "invalid_submission"


def test_bundled_requirements_are_flagged_on_the_process_backend(tmp_path):
    folder = optimizer(tmp_path, "reqs", (SUBMISSIONS / "random_search" / "optimizer.py").read_text())
    (folder / "requirements.txt").write_text("# pinned\nbayesmark==0.0.8\n")
    result, verdict = validate(folder)
    assert result.exit_code == 0 and verdict["ok"]
    assert any("requirements.txt" in w for w in verdict["warnings"])


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "/no/such/folder"],
        ["validate", str(SUBMISSIONS / "random_search"), "--problem", "DT-nowhere-acc"],
        ["validate", str(SUBMISSIONS / "random_search"), "--spec", "no-such-spec"],
        ["validate", str(SUBMISSIONS / "random_search"), "--backend", "vm"],
        ["validate", str(SUBMISSIONS / "random_search"), "--rounds", "0"],
    ],
)
def test_usage_errors_exit_2_with_one_line(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""


def test_help_names_the_causes():
    result = CliRunner().invoke(app, ["validate", "--help"])
    assert result.exit_code == 0
    assert "invalid_submission" in result.stdout and "--call-timeout" in result.stdout


def _docker_missing() -> str | None:
    from workers.sandbox import docker as docker_backend

    return None if docker_backend.available() else "docker backend unavailable (no engine or image)"


DOCKER_MISSING = _docker_missing()


@pytest.mark.skipif(DOCKER_MISSING is not None, reason=DOCKER_MISSING or "")
@pytest.mark.system
def test_an_unbundled_requirement_fails_the_install_in_the_docker_sandbox(tmp_path):
    folder = optimizer(tmp_path, "unbundled", (SUBMISSIONS / "random_search" / "optimizer.py").read_text())
    (folder / "requirements.txt").write_text("bbo-tiny-dep==0.1.0\n")  # no wheel bundled, no network
    result, verdict = validate(folder, "--backend", "docker")
    assert result.exit_code == 1, result.output
    assert verdict["cause"] == "install_failed" and "bbo-tiny-dep" in verdict["message"]
