"""The final phase end to end: selection through the team CLI against a live gateway, the launch, real
workers scoring the held-out problems, the final leaderboard with its uncertainty, and idempotence."""

from __future__ import annotations

import dataclasses
import json
import time

import httpx
import pytest
from rq import Queue
from typer.testing import CliRunner

from artifacts import archive
from baselines import ranking
from cli import admin, final_cmd
from competition import audit, final, quotas, scores, service, teams
from competition.submit import create_submission
from gateway.app import LEADERBOARD_CACHE_S, create_app
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.records import load_submission
from runtime.spec import Spec
from tests.cli.test_team_cli import one_line_error, run
from tests.competition.test_rescore import ROOT, burst_worker, quick_spec
from tests.conftest import SUBMISSIONS
from tests.live_server import serving

pytestmark = pytest.mark.system


def final_spec() -> Spec:
    """quick_spec cut to one problem per phase (one feedback study; 4 final studies, 2 per job): the
    whole flow scores 3 feedback and 8 final studies."""
    spec = quick_spec()
    feedback = dataclasses.replace(spec.phases["feedback"], problems=("DT-iris-acc",))
    final_phase = dataclasses.replace(spec.phases["final"], problems=("DT-breast-acc",))
    return dataclasses.replace(spec, phases={"feedback": feedback, "final": final_phase})


@pytest.fixture()
def server(r, unsafe_ok):
    with serving(create_app(final_spec(), "process")) as url:
        yield url


@pytest.fixture()
def as_alpha(server, r, tmp_path, monkeypatch):
    monkeypatch.setenv("BBO_CONFIG_DIR", str(tmp_path / "bbo-config"))
    monkeypatch.delenv("BBO_SERVER", raising=False)
    monkeypatch.delenv("BBO_TOKEN", raising=False)
    token = teams.add_team(r, "alpha")
    teams.add_team(r, "beta")
    assert run("login", "--server", server, "--token", token).exit_code == 0
    return server


def submit(r, team: str, folder) -> str:
    spec = final_spec()
    data = archive.pack(folder, spec.submission)
    return create_submission(r, team=team, data=data, spec=spec, phase="feedback", backend="process").id


def cli_json(*args: str):
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def admin_cli(*args: str):
    return CliRunner().invoke(admin.app, list(args), catch_exceptions=False)


def test_final_phase_from_selection_to_leaderboard(as_alpha, r, redis_server):
    spec = final_spec()
    alpha_ids = [
        submit(r, "alpha", SUBMISSIONS / "random_search"),
        submit(r, "alpha", ROOT / "baselines" / "optimizers" / "random_search"),
    ]
    beta_id = submit(r, "beta", SUBMISSIONS / "random_search")
    pending = submit(r, "alpha", SUBMISSIONS / "random_search")
    service.stop(r, pending)
    burst_worker(redis_server)

    # Without a pick, the team's best enters; it picks the other (not better) one.
    current = cli_json("select", "--json")
    assert current["selected"] is False and current["locked"] is False
    best = current["submission"]
    assert best in alpha_ids
    worse = next(sid for sid in alpha_ids if sid != best)
    picked = cli_json("select", worse, "--json")
    assert picked["submission"] == worse and picked["selected"] is True
    assert picked["score"] <= current["score"]
    assert "no submission" in one_line_error(run("select", beta_id))  # another team's looks unknown
    assert "only a scored submission" in one_line_error(run("select", pending))
    human = run("select")
    assert human.exit_code == 0 and worse in human.stdout and "your pick" in human.stdout

    used = quotas.remaining(r, "alpha", spec).used
    launches = final.run_final(r, spec, actor="tester", backend="process")
    assert {x.team for x in launches} == {"alpha", "beta"} and all(x.created for x in launches)
    by_team = {x.team: x for x in launches}
    assert by_team["alpha"].source == worse and by_team["alpha"].selected
    assert by_team["beta"].source == beta_id and not by_team["beta"].selected
    entries = {team: load_submission(r, x.submission) for team, x in by_team.items()}
    for team, sub in entries.items():
        assert sub.phase == "final" and sub.team == team and not sub.charged
        assert sub.source == by_team[team].source
        assert sub.artifact_sha256 == load_submission(r, sub.source).artifact_sha256
        assert sub.progress.studies_total == 4  # the held-out problem x 4 studies
    assert Queue(keys.PRIORITY_QUEUE, connection=rq_connection()).count == 4  # 2 teams x 2 chunks of 2
    assert quotas.remaining(r, "alpha", spec).used == used
    assert "locked" in one_line_error(run("select", best))
    (entry,) = [e for e in audit.read(r, target=spec.name) if e.action == "final"]
    assert entry.actor == "tester" and set(entry.details["launched"]) == {"alpha", "beta"}

    burst_worker(redis_server)
    for sub in entries.values():
        report = scores.report(r, sub.id)
        assert report["state"] == "scored"
        assert [p["problem"] for p in report["problems"]] == ["DT-breast-acc"]  # held out, not feedback
        assert [s["study"] for s in report["problems"][0]["studies"]] == [0, 1, 2, 3]

    # Scored, but not released: teams get "pending", organizers the live board.
    pending = cli_json("leaderboard", "--phase", "final", "--json")
    assert pending["rows"] == [] and pending["released"] is False and "pending" in pending["pending"]
    assert "final results pending" in run("leaderboard", "--phase", "final").stderr
    assert len(service.leaderboard_view(r, spec, "final", organizer=True)["rows"]) == 2
    released = admin_cli("final", "release", "--spec", spec.name, "--json")
    assert released.exit_code == 0, released.output
    assert json.loads(released.stdout)["released_at"]
    assert any(e.action == "final_release" for e in audit.read(r, target=spec.name))

    time.sleep(LEADERBOARD_CACHE_S)  # the gateway's public board is cached this long
    board = cli_json("leaderboard", "--phase", "final", "--json")
    assert board["released"] is True
    assert board["phase"] == "final" and [row["rank"] for row in board["rows"]] == [1, 2]
    for row in board["rows"]:
        sub = load_submission(r, row["submission"])
        assert row["submission"] == entries[row["team"]].id and row["score"] == sub.score
        assert row["source"] == sub.source and row["studies"] == 4 and row["score_version"] == 1
        assert 0.0 <= row["rank_stability"] <= 1.0 and row["ci_low"] <= row["ci_high"]
        assert row["ci_low"] - 1e-9 <= row["score"] <= row["ci_high"] + 1e-9
        # The point estimate is the submission's score, recomputed from its per-study scores.
        assert abs(ranking.point_score(final.study_scores(r, sub)) - sub.score) < 1e-9
    assert board["rows"][0]["score"] >= board["rows"][1]["score"]
    table = run("leaderboard", "--phase", "final")
    assert table.exit_code == 0 and "95% interval" in table.stdout and "rank holds" in table.stdout
    # The public web page shows the same board, with its intervals and rank stability.
    page = httpx.get(f"{as_alpha}/leaderboard", params={"phase": "final"}).text
    assert "95% interval" in page and "Rank stability" in page and "pending" not in page
    for row in board["rows"]:
        assert f"{row['ci_low']:.3f} – {row['ci_high']:.3f}" in page and f">{row['team']}<" in page
    final_cmd._wait(r, [sub.id for sub in entries.values()], timeout=30)  # `--wait`: all ended already
    final_cmd._print_board(service.leaderboard(r, "final", spec.name))

    # Running the final again launches nothing new; --top limits it to the leader.
    before = r.zcard(keys.submissions_index())
    again = final.run_final(r, spec, backend="process")
    assert {(x.team, x.submission, x.created) for x in again} == {
        (t, x.submission, False) for t, x in by_team.items()
    }
    leader = service.leaderboard(r, "feedback", spec.name)[0]["team"]
    assert [(x.team, x.created) for x in final.run_final(r, spec, top=1)] == [(leader, False)]
    assert r.zcard(keys.submissions_index()) == before


def test_admin_final_cli_reuses_and_reports(r, redis_server, monkeypatch):
    """The admin command over the same functions: nothing scored yet means nothing launched, in JSON."""
    monkeypatch.setenv("BBO_ACTOR", "cli-tester")
    result = admin_cli("final", "--top", "3", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"phase": "final", "launches": [], "rows": []}
    bad = admin_cli("final", "--spec", "no-such-spec")
    assert bad.exit_code == 2 and "no spec named" in bad.stderr
    refused = admin_cli("rescore", "s00000000aaaaaaaaaa")
    assert refused.exit_code == 2 and "no submission" in refused.stderr
    assert admin_cli("rescore").exit_code == 2
