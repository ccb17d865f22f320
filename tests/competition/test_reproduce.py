"""Provenance recorded with every score, and `bbo admin reproduce` rerunning one study for real."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from competition import audit, scores
from competition.reproduce import ReproduceError, first_mismatch, reproduce
from queue_schema import keys
from queue_schema.records import read_studies
from runtime import provenance
from tests.scoring_helpers import PROBLEM, score_tiny, tiny_spec

pytestmark = pytest.mark.usefixtures("unsafe_ok")

runner = CliRunner()


@pytest.fixture()
def scored(r):
    sub = score_tiny(r, "alpha")
    assert sub.state.value == "scored", sub
    return sub


def test_every_study_and_score_version_records_what_it_was_computed_with(r, scored):
    spec = tiny_spec()
    study = read_studies(r, scored.id, 1, PROBLEM)[0]
    assert study.packages == provenance.scoring_packages()
    assert set(study.packages) == {"python", "bayesmark", "numpy", "scipy", "scikit-learn"}
    assert study.packages["bayesmark"] == "0.0.8"
    assert study.seeds["optimizer"] == provenance.study_seeds(PROBLEM, 0)["optimizer"]
    assert "eval_seed" in study.seeds["evaluation_scheme"]
    assert study.sandbox["backend"] == study.backend == "process"

    record = r.hgetall(keys.score_version(scored.id, 1))
    stored = json.loads(record["provenance"])
    assert float(record["scored_at"]) == pytest.approx(scored.scored_at)
    assert stored["artifact_sha256"] == scored.artifact_sha256
    assert stored["spec_hash"] == spec.hash == scored.spec_hash
    assert stored["baseline_version"] == scored.baseline_version
    assert len(stored["baseline_sha256"]) == 64
    assert stored["sandboxes"] == [{"backend": "process", "image_digest": None}]
    assert stored["packages"] == provenance.scoring_packages() and "mixed_packages" not in stored
    assert stored["studies"] == 1
    assert scores.report(r, scored.id)["provenance"] == stored


def test_reproduce_reruns_a_study_and_its_losses_match(r, scored):
    outcome = reproduce(r, scored.id, PROBLEM, 0)
    stored = read_studies(r, scored.id, 1, PROBLEM)[0]
    spec = tiny_spec()
    assert outcome["match"] is True, outcome
    assert outcome["first_mismatch"] is None and outcome["error"] is None
    assert outcome["rounds_compared"] == spec.rounds
    assert outcome["new_losses"] == outcome["stored_losses"] == stored.losses
    assert outcome["suggestions_match"] is True
    assert outcome["environment_differences"] == {}
    assert outcome["backend"] == "process" and outcome["seconds"] > 0
    entry = audit.read(r, target=scored.id)[-1]
    assert entry.action == "reproduce" and entry.details["match"] is True
    assert (entry.details["problem"], entry.details["study"]) == (PROBLEM, 0)


def test_a_tampered_stored_loss_is_reported_as_the_first_mismatch(r, scored):
    key = keys.study_results(scored.id, 1, PROBLEM)
    study = read_studies(r, scored.id, 1, PROBLEM)[0]
    original = study.losses[2][1]
    study.losses[2][1] = original + 0.125
    r.hset(key, "0", study.to_json())  # tampered, in the older form of a record (which still reads)

    outcome = reproduce(r, scored.id, PROBLEM, 0)
    assert outcome["match"] is False
    assert outcome["first_mismatch"] == {"round": 2, "index": 1, "stored": original + 0.125, "now": original}
    assert outcome["rounds_compared"] == 3
    assert outcome["suggestions_match"] is True  # the optimizer did the same: the stored loss moved


def test_first_mismatch_covers_shorter_studies_and_infinite_losses():
    assert first_mismatch([[1.0, None]], [[1.0, None]]) == (None, 1)
    infinite = {"round": 0, "index": 1, "stored": None, "now": 2.0}
    assert first_mismatch([[1.0, None]], [[1.0, 2.0]])[0] == infinite
    mismatch, compared = first_mismatch([[1.0], [2.0]], [[1.0]])
    assert compared == 1 and mismatch == {"round": 1, "index": None, "stored": "2 rounds", "now": "1 rounds"}


def test_reproduce_refuses_what_does_not_exist(r, scored):
    with pytest.raises(ReproduceError, match="no submission"):
        reproduce(r, "nope", PROBLEM, 0)
    with pytest.raises(ReproduceError, match="has no problem 'RF-wine-nll'"):
        reproduce(r, scored.id, "RF-wine-nll", 0)
    with pytest.raises(ReproduceError, match=r"study 5 of DT-iris-acc has no stored result .*stored: 0"):
        reproduce(r, scored.id, PROBLEM, 5)
    with pytest.raises(ReproduceError, match="no score version 2"):
        reproduce(r, scored.id, PROBLEM, 0, version=2)


def test_the_reproduce_command_prints_a_verdict_and_exits_by_the_contract(r, scored):
    result = runner.invoke(app, ["admin", "reproduce", scored.id, PROBLEM, "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("MATCH: study 0 of DT-iris-acc")

    key = keys.study_results(scored.id, 1, PROBLEM)
    study = read_studies(r, scored.id, 1, PROBLEM)[0]
    study.losses[0][0] = -1.0
    r.hset(key, "0", study.to_json())
    mismatch = runner.invoke(app, ["admin", "reproduce", scored.id, PROBLEM, "0"])
    assert mismatch.exit_code == 0, mismatch.output  # it ran: a mismatch is a finding, not an error
    assert mismatch.stdout.startswith("MISMATCH:") and "round 0, suggestion 0" in mismatch.stdout
    as_json = runner.invoke(app, ["admin", "reproduce", scored.id, PROBLEM, "0", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["match"] is False

    for args, message in (
        (["nope", PROBLEM, "0"], "no submission 'nope'"),
        ([scored.id, "RF-wine-nll", "0"], "has no problem"),
        ([scored.id, PROBLEM, "9"], "no stored result"),
    ):
        refused = runner.invoke(app, ["admin", "reproduce", *args])
        assert refused.exit_code != 0 and message in refused.stderr, refused.output
        assert len(refused.stderr.strip().splitlines()) == 1
