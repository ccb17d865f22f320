"""Competition administration on a real Redis: leaderboard freeze, disqualification, quota overrides, and
every organizer action in the audit log (through the real `bbo admin` commands)."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from artifacts import archive
from cli.main import app
from competition import audit, moderation, quotas, service, teams
from gateway.app import create_app
from runtime.spec import Spec, SpecError, load
from tests.conftest import SUBMISSIONS
from tests.scoring_helpers import score_tiny, tiny_spec

runner = CliRunner()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _admin(*args: str):
    return runner.invoke(app, ["admin", *args])


# -- spec -------------------------------------------------------------------------------------------


def test_a_phase_freeze_is_validated_and_hashed_only_when_set():
    demo = load("demo")
    raw = json.loads(demo.to_json())
    assert "leaderboard_freeze" not in raw["phases"]["feedback"]  # shipped hashes stay what they were

    raw["phases"]["feedback"] |= {"opens": "2030-01-01T00:00:00", "leaderboard_freeze": "2030-02-01T12:00:00"}
    frozen = Spec.from_json(json.dumps(raw))
    assert frozen.phase("feedback").leaderboard_freeze == "2030-02-01T12:00:00"
    assert frozen.hash != demo.hash
    again = Spec.from_json(frozen.to_json())
    assert again.hash == frozen.hash and again.phases == frozen.phases

    raw["phases"]["feedback"]["leaderboard_freeze"] = "next friday"
    with pytest.raises(SpecError, match="phases.feedback.leaderboard_freeze is not an ISO 8601"):
        Spec.from_json(json.dumps(raw))
    raw["phases"]["feedback"]["leaderboard_freeze"] = "2029-12-31T00:00:00"
    with pytest.raises(SpecError, match="leaderboard_freeze must come after opens"):
        Spec.from_json(json.dumps(raw))


# -- freeze -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("unsafe_ok")
def test_after_the_freeze_the_public_board_shows_only_what_was_scored_before_it(r):
    for name in ("alpha", "beta"):
        teams.add_team(r, name)
    early = score_tiny(r, "alpha")
    freeze = time.time()
    time.sleep(0.05)
    late = score_tiny(r, "beta")
    assert early.scored_at < freeze < late.scored_at

    spec = tiny_spec(leaderboard_freeze=_iso(freeze))
    before = service.leaderboard_view(r, spec, "feedback", now=freeze - 60)
    assert before["frozen"] is False and before["frozen_at"] is None
    assert {row["team"] for row in before["rows"]} == {"alpha", "beta"}

    public = service.leaderboard_view(r, spec, "feedback")
    assert public["frozen"] is True and public["frozen_at"] == service.utc_iso(freeze)
    assert [(row["team"], row["submission"]) for row in public["rows"]] == [("alpha", early.id)]

    organizers = service.leaderboard_view(r, spec, "feedback", organizer=True)
    assert organizers["frozen"] is False and organizers["frozen_at"] == public["frozen_at"]
    assert {row["submission"] for row in organizers["rows"]} == {early.id, late.id}
    window = service.phase_window(spec, "feedback")
    assert window["leaderboard_freeze"] == service.utc_iso(freeze)

    served = TestClient(create_app(spec, "auto")).get("/v1/leaderboard").json()
    assert served["frozen"] is True and served["frozen_at"] == public["frozen_at"]
    assert [row["submission"] for row in served["rows"]] == [early.id]


# -- disqualification -------------------------------------------------------------------------------


@pytest.mark.usefixtures("unsafe_ok")
def test_a_disqualified_submission_leaves_the_board_and_its_team_sees_why(r, monkeypatch):
    monkeypatch.setenv("BBO_ACTOR", "judge")
    teams.add_team(r, "alpha")
    sub = score_tiny(r, "alpha")
    spec = tiny_spec()
    assert [row["submission"] for row in service.leaderboard(r, "feedback", spec.name)] == [sub.id]

    moderation.disqualify(r, sub.id, "  shared code\nwith team beta ")
    assert moderation.is_disqualified(r, sub.id)
    assert service.leaderboard(r, "feedback", spec.name) == []
    assert service.leaderboard(r, "feedback", spec.name, registered_only=False) == []
    seen = service.public_view(service.status(r, "alpha", sub.id))
    assert seen["state"] == "scored" and seen["score"] == sub.score  # the ruling does not rewrite the score
    assert seen["disqualified"] == "shared code with team beta"

    moderation.requalify(r, sub.id, reason="appeal granted")
    assert not moderation.is_disqualified(r, sub.id)
    assert "disqualified" not in service.public_view(service.status(r, "alpha", sub.id))
    rows = service.leaderboard(r, "feedback", spec.name)
    assert [row["submission"] for row in rows] == [sub.id]
    assert rows[0]["scored_at"] == service.utc_iso(sub.scored_at)  # moderation did not move the scoring time

    with pytest.raises(moderation.ModerationError, match="needs a reason"):
        moderation.disqualify(r, sub.id, "   ")
    with pytest.raises(moderation.ModerationError, match="not disqualified"):
        moderation.requalify(r, sub.id)
    with pytest.raises(moderation.UnknownSubmission):
        moderation.disqualify(r, "nope", "x")
    actions = [(e.actor, e.action, e.details.get("reason")) for e in audit.read(r, target=sub.id)]
    assert actions == [
        ("judge", "disqualify", "shared code with team beta"),
        ("judge", "requalify", "appeal granted"),
    ]


# -- quota override ---------------------------------------------------------------------------------


def test_a_quota_override_allows_and_refuses_uploads_and_clears_back_to_the_spec(r):
    spec = load("demo")
    spec = dataclasses.replace(spec, submission=dataclasses.replace(spec.submission, daily_quota=1))
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    teams.add_team(r, "alpha")

    def upload():
        return service.submit(r, "alpha", data, "s.zip", spec)

    upload()
    with pytest.raises(service.QuotaExceeded, match="1 of 1"):
        upload()
    quotas.set_override(r, "alpha", 3)
    assert quotas.remaining(r, "alpha", spec).to_dict()["limit"] == 3
    upload()
    upload()
    with pytest.raises(service.QuotaExceeded, match="3 of 3"):
        upload()
    quotas.set_override(r, "alpha", 0)
    with pytest.raises(service.QuotaExceeded):
        upload()
    assert service.info(r, spec, "alpha")["quota"]["remaining"] == 0
    quotas.set_override(r, "alpha", None)
    assert quotas.daily_limit(r, "alpha", spec) == 1 and quotas.overrides(r) == {}
    with pytest.raises(teams.UnknownTeam):
        quotas.set_override(r, "ghost", 2)
    with pytest.raises(teams.TeamError, match="whole number"):
        quotas.set_override(r, "alpha", -1)


# -- the audit log through the real commands ---------------------------------------------------------


def test_every_organizer_command_lands_in_the_audit_log_with_actor_and_details(r, monkeypatch):
    monkeypatch.setenv("BBO_ACTOR", "ops-anna")
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)

    added = _admin("team", "add", "alpha", "--json")
    assert added.exit_code == 0, added.output
    token = json.loads(added.stdout)["token"]
    for args in (
        ["team", "rotate", "alpha", "--json"],
        ["team", "revoke", "alpha"],
        ["team", "disable", "alpha"],
        ["team", "enable", "alpha"],
        ["team", "quota", "alpha", "7"],
        ["team", "quota", "alpha", "--clear"],
    ):
        result = _admin(*args)
        assert result.exit_code == 0, (args, result.output)

    sub = service.submit(r, "alpha", data, "s.zip", spec)
    assert _admin("disqualify", sub.id, "--reason", "late upload").exit_code == 0
    assert _admin("requalify", sub.id, "--reason", "clock skew").exit_code == 0
    service.stop(r, sub.id)  # an organizer's stop (the console's path)

    listing = _admin("audit", "--json")
    assert listing.exit_code == 0, listing.output
    entries = json.loads(listing.stdout)
    assert [(e["action"], e["target"]) for e in entries] == [
        ("team_add", "alpha"),
        ("token_rotate", "alpha"),
        ("token_revoke", "alpha"),
        ("team_disable", "alpha"),
        ("team_enable", "alpha"),
        ("quota_override", "alpha"),
        ("quota_clear", "alpha"),
        ("disqualify", sub.id),
        ("requalify", sub.id),
        ("stop", sub.id),
    ]
    assert {e["actor"] for e in entries} == {"ops-anna"}
    assert all(e["ts"].endswith("Z") for e in entries)
    details = {e["action"]: e["details"] for e in entries}
    assert details["quota_override"] == {"daily_quota": 7}
    assert details["disqualify"]["reason"] == "late upload" and details["disqualify"]["team"] == "alpha"
    assert details["requalify"]["reason"] == "clock skew"
    assert details["stop"]["team"] == "alpha" and "cancelled" in details["stop"]
    assert token not in listing.stdout  # tokens never reach the log

    # A team stopping its own submission is not an organizer action.
    own = service.submit(r, "alpha", data, "s.zip", spec)
    service.stop(r, own.id, by_team="alpha")
    assert audit.read(r, target=own.id) == []

    about_sub = json.loads(_admin("audit", "--target", sub.id, "--json").stdout)
    assert [e["action"] for e in about_sub] == ["disqualify", "requalify", "stop"]
    table = _admin("audit", "--target", "alpha")
    assert table.exit_code == 0 and "quota_override" in table.stdout and "ops-anna" in table.stdout


def test_team_list_shows_quota_overrides_and_submission_counts(r):
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    teams.add_team(r, "alpha")
    teams.add_team(r, "beta")
    quotas.set_override(r, "beta", 9)
    service.submit(r, "alpha", data, "s.zip", spec)
    service.submit(r, "alpha", data, "s.zip", spec)
    result = _admin("team", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["team"]: row for row in json.loads(result.stdout)}
    assert (rows["alpha"]["daily_quota_override"], rows["alpha"]["submissions"]) == (None, 2)
    assert rows["alpha"]["charged_today"] == 2
    assert (rows["beta"]["daily_quota_override"], rows["beta"]["submissions"]) == (9, 0)


def test_admin_commands_refuse_bad_input_with_one_line(r):
    teams.add_team(r, "alpha")
    for args, message in (
        (["team", "quota", "alpha"], "--clear"),
        (["team", "quota", "alpha", "3", "--clear"], "--clear"),
        (["team", "quota", "ghost", "3"], "no team 'ghost'"),
        (["disqualify", "nope", "--reason", "x"], "no submission 'nope'"),
        (["requalify", "nope"], "no submission 'nope'"),
    ):
        result = _admin(*args)
        assert result.exit_code != 0, args
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_organizers_list_every_teams_submissions_and_stop_any_of_them(r, monkeypatch):
    monkeypatch.setenv("BBO_ACTOR", "referee")
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    teams.add_team(r, "ada")
    teams.add_team(r, "bob")
    first = service.submit(r, "ada", data, "a.zip", spec, backend="process")
    second = service.submit(r, "bob", data, "b.zip", spec, backend="process")

    listed = _admin("submissions", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == [second.id, first.id]  # newest first, every team
    assert {row["state"] for row in rows} == {"queued"}
    only_ada = json.loads(_admin("submissions", "--team", "ada", "--json").stdout)
    assert [row["id"] for row in only_ada] == [first.id]

    stopped = _admin("stop", first.id, "--json")
    assert stopped.exit_code == 0, stopped.output
    assert json.loads(stopped.stdout)["state"] == "stopped"
    (entry,) = [e for e in audit.read(r) if e.action == "stop"]
    assert entry.actor == "referee" and entry.target == first.id
    assert json.loads(_admin("submissions", "--state", "stopped", "--json").stdout)[0]["id"] == first.id

    again = _admin("stop", first.id)
    assert again.exit_code != 0 and "already stopped" in again.output
    unknown = _admin("stop", "s-nope")
    assert unknown.exit_code != 0 and "no submission" in unknown.output


def test_a_team_cannot_stop_its_final_phase_run_but_organizers_can(r):
    from queue_schema.records import update_record

    spec = load("demo")
    teams.add_team(r, "ada")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    sub = service.submit(r, "ada", data, "a.zip", spec, backend="process")
    update_record(r, sub.id, source="s-feedback-pick")  # as the final phase launches it
    with pytest.raises(service.Forbidden, match="final-phase"):
        service.stop(r, sub.id, by_team="ada")
    assert service.stop(r, sub.id).state.value == "stopped"


def test_teams_cannot_upload_into_the_final_phase_unless_the_spec_allows_it(r):
    spec = load("demo")
    teams.add_team(r, "ada")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    with pytest.raises(service.Forbidden, match="takes no uploads"):
        service.submit(r, "ada", data, "a.zip", spec, phase="final", backend="process")
    assert r.zcard("bbo:subs") == 0  # nothing stored, nothing charged
    final = dataclasses.replace(spec.phases["final"], team_uploads=True)
    open_final = dataclasses.replace(spec, phases={**spec.phases, "final": final})
    assert open_final.hash != spec.hash  # the rule is part of the competition
    sub = service.submit(r, "ada", data, "a.zip", open_final, phase="final", backend="process")
    assert sub.phase == "final"
    assert [p["team_uploads"] for p in service.info(r, spec)["phases"]] == [True, False]
