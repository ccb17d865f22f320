"""The teams' HTTP API, in process against a real Redis: auth and isolation, uploads, quota, stop,
leaderboard, metrics, and no 5xx on malformed requests."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import warnings
import zipfile

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from artifacts import archive
from competition import teams
from gateway.app import create_app
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.records import transition
from queue_schema.states import FailureCause, SubmissionState
from runtime import lifecycle
from runtime.spec import load
from tests.conftest import SUBMISSIONS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient

SUBMISSION_KEYS = {"id", "team", "state", "score", "failure", "progress", "created_at"}


def _spec(quota: int = 2, max_zip_mb: int = 1):
    spec = load("demo")
    rules = dataclasses.replace(spec.submission, daily_quota=quota, max_zip_mb=max_zip_mb)
    return dataclasses.replace(spec, submission=rules)


@pytest.fixture(scope="module")
def good_zip() -> bytes:
    return archive.pack(SUBMISSIONS / "random_search", load("demo").submission)


@pytest.fixture()
def env(r):
    tokens = {name: teams.add_team(r, name) for name in ("alpha", "beta")}
    client = TestClient(create_app(_spec(), "auto"))
    return client, tokens


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(client, token, data, name="sub.zip", **params):
    return client.post(
        "/v1/submissions", files={"file": (name, data, "application/zip")}, headers=auth(token), params=params
    )


def assert_error(response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


def test_tokens_are_required_and_a_foreign_submission_looks_unknown(env, good_zip):
    client, tokens = env
    created = upload(client, tokens["alpha"], good_zip)
    assert created.status_code == 201
    sid = created.json()["id"]
    assert_error(client.get("/v1/submissions"), 401, "unauthorized")
    assert client.get("/v1/submissions").headers["www-authenticate"].startswith("Bearer")
    assert_error(client.get("/v1/submissions", headers=auth("bbo_wrong")), 401)
    assert_error(client.get("/v1/submissions", headers={"Authorization": f"Basic {tokens['alpha']}"}), 401)
    assert_error(upload(client, "bbo_wrong", good_zip), 401)
    # beta cannot tell alpha's submission from one that does not exist
    foreign = client.get(f"/v1/submissions/{sid}", headers=auth(tokens["beta"]))
    unknown = client.get("/v1/submissions/s00000000aaaaaaaaaa", headers=auth(tokens["beta"]))
    assert_error(foreign, 404, "not_found")
    assert_error(unknown, 404, "not_found")
    assert foreign.json()["error"]["message"].replace(sid, "X") == unknown.json()["error"]["message"].replace(
        "s00000000aaaaaaaaaa", "X"
    )
    assert_error(client.post(f"/v1/submissions/{sid}/stop", headers=auth(tokens["beta"])), 404)
    assert client.get("/v1/submissions", headers=auth(tokens["beta"])).json() == []
    mine = client.get(f"/v1/submissions/{sid}", headers=auth(tokens["alpha"]))
    assert mine.status_code == 200 and mine.json()["state"] == "queued"


def test_a_good_upload_is_stored_and_its_jobs_enqueued(env, good_zip, r):
    client, tokens = env
    response = upload(client, tokens["alpha"], good_zip)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == SUBMISSION_KEYS
    assert body["team"] == "alpha" and body["state"] == "queued" and body["score"] is None
    assert body["progress"] == {"studies_done": 0, "studies_total": 8}
    assert response.headers["location"] == f"/v1/submissions/{body['id']}"
    assert len(r.smembers(keys.submission_jobs(body["id"], 1))) == 4
    assert Queue(keys.team_queue("alpha"), connection=rq_connection()).count == 4
    listed = client.get("/v1/submissions", headers=auth(tokens["alpha"])).json()
    assert [s["id"] for s in listed] == [body["id"]]
    # nothing about problems in what the team sees
    for text in (response.text, client.get("/v1/info", headers=auth(tokens["alpha"])).text):
        assert "iris" not in text and "diabetes" not in text


def test_bad_uploads_are_refused_with_the_reason_and_store_nothing(env, r):
    client, tokens = env
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("sub/optimizer.py", "x = 1\n")
    nested = buffer.getvalue()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("optimizer.py", "x = 1\n")
        zf.writestr("weights.bin", os.urandom(1024 * 1024 + 10))
    oversize = buffer.getvalue()
    before = r.dbsize()
    assert "not a readable zip" in assert_error(
        upload(client, tokens["alpha"], b"PK\x03\x04 broken"), 422, "invalid_submission"
    )
    message = assert_error(upload(client, tokens["alpha"], nested), 422, "invalid_submission")
    assert "optimizer.py not found at the top level" in message and "sub/optimizer.py" in message
    assert "1 MiB" in assert_error(upload(client, tokens["alpha"], oversize), 413, "too_large")

    # A client that sends no Content-Length is cut off while the body streams in.
    def chunks():
        head, tail, ctype = _multipart(oversize)
        yield head
        for i in range(0, len(oversize), 65536):
            yield oversize[i : i + 65536]
        yield tail

    head, tail, ctype = _multipart(oversize)
    streamed = client.post(
        "/v1/submissions", content=chunks(), headers={**auth(tokens["alpha"]), "Content-Type": ctype}
    )
    assert_error(streamed, 413, "too_large")
    assert_error(client.post("/v1/submissions", headers=auth(tokens["alpha"]), data={"x": "1"}), 415)
    missing = client.post("/v1/submissions", headers=auth(tokens["alpha"]), files={"other": ("a.zip", b"x")})
    assert "field named 'file'" in assert_error(missing, 422, "missing_file")
    assert "no phase 'bonus'" in assert_error(
        upload(client, tokens["alpha"], nested, phase="bonus"), 422, "invalid_phase"
    )
    assert r.dbsize() == before
    assert client.get("/v1/info", headers=auth(tokens["alpha"])).json()["quota"]["remaining"] == 2


def _multipart(data: bytes) -> tuple[bytes, bytes, str]:
    boundary = "testboundary1234"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_the_quota_answers_429_with_retry_after_and_refunds_infrastructure_failures(env, good_zip, r):
    client, tokens = env
    first = upload(client, tokens["alpha"], good_zip).json()
    assert upload(client, tokens["alpha"], good_zip).status_code == 201
    refused = upload(client, tokens["alpha"], good_zip)
    message = assert_error(refused, 429, "quota_exceeded")
    assert "resets at" in message
    assert 0 < int(refused.headers["retry-after"]) <= 86_400
    assert upload(client, tokens["beta"], good_zip).status_code == 201  # quotas are per team
    lifecycle.fail(r, first["id"], 1, FailureCause.INFRASTRUCTURE, "worker lost")
    info = client.get("/v1/info", headers=auth(tokens["alpha"])).json()
    assert info["team"] == "alpha" and info["quota"]["remaining"] == 1
    assert upload(client, tokens["alpha"], good_zip).status_code == 201
    assert_error(upload(client, tokens["alpha"], good_zip), 429)
    failed = client.get(f"/v1/submissions/{first['id']}", headers=auth(tokens["alpha"])).json()
    refunded = {"cause": "infrastructure", "message": "worker lost; not charged to your quota"}
    assert failed["failure"] == refunded
    assert failed["refund"] == "auto"


def test_stop_of_a_queued_submission_cancels_its_jobs(env, good_zip, r):
    client, tokens = env
    sid = upload(client, tokens["alpha"], good_zip).json()["id"]
    stopped = client.post(f"/v1/submissions/{sid}/stop", headers=auth(tokens["alpha"]))
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    conn = rq_connection()
    for job_id in r.smembers(keys.submission_jobs(sid, 1)):
        assert Job.fetch(job_id, connection=conn).get_status() == JobStatus.CANCELED
    assert Queue(keys.team_queue("alpha"), connection=conn).count == 0
    again = client.post(f"/v1/submissions/{sid}/stop", headers=auth(tokens["alpha"]))
    assert "already stopped" in assert_error(again, 409, "conflict")


def test_a_running_submission_shows_its_running_score(env, good_zip, r):
    client, tokens = env
    sid = upload(client, tokens["alpha"], good_zip).json()["id"]
    transition(r, sid, SubmissionState.RUNNING)
    r.hset(keys.submission(sid), mapping={"studies_done": 3, "norm_sum": 0.3, "norm_count": 3})
    body = client.get(f"/v1/submissions/{sid}", headers=auth(tokens["alpha"])).json()
    assert body["state"] == "running" and body["progress"]["studies_done"] == 3
    assert body["partial_score"] == pytest.approx(90.0)


def _scored(r, client, token, data, score):
    sid = upload(client, token, data).json()["id"]
    assert transition(r, sid, SubmissionState.SCORED, score=score) is not None
    return sid


def test_the_leaderboard_shows_each_registered_teams_best_only(r, good_zip):
    from competition import service

    tokens = {name: teams.add_team(r, name) for name in ("alpha", "beta", "gamma")}
    client = TestClient(create_app(_spec(quota=10), "auto"))
    _scored(r, client, tokens["alpha"], good_zip, 80.0)
    best_alpha = _scored(r, client, tokens["alpha"], good_zip, 90.0)
    best_beta = _scored(r, client, tokens["beta"], good_zip, 85.0)
    later_tie = _scored(r, client, tokens["gamma"], good_zip, 85.0)
    lifecycle.fail(r, upload(client, tokens["beta"], good_zip).json()["id"], 1, FailureCause.TIME_LIMIT, "x")
    spec = _spec(quota=10)
    organizers = service.submit(r, "organizers", good_zip, "x.zip", spec)  # not a registered team
    transition(r, organizers.id, SubmissionState.SCORED, score=99.0)
    board = client.get("/v1/leaderboard").json()
    assert board["phase"] == "feedback"
    rows = board["rows"]
    assert [(row["rank"], row["team"], row["score"], row["submission"]) for row in rows] == [
        (1, "alpha", 90.0, best_alpha),
        (2, "beta", 85.0, best_beta),
        (3, "gamma", 85.0, later_tie),
    ]
    assert all(
        {"rank", "team", "score", "submission", "score_version", "scored_at"} <= set(row) for row in rows
    )
    assert client.get("/v1/leaderboard", params={"phase": "final"}).json()["rows"] == []
    assert_error(client.get("/v1/leaderboard", params={"phase": "bogus"}), 422, "invalid_phase")
    teams.set_disabled(r, "alpha", True)
    client.app.state.leaderboard_cache_s = 0  # the public board is cached for 2 s
    assert [row["team"] for row in client.get("/v1/leaderboard").json()["rows"]] == ["beta", "gamma"]


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? (-?[0-9.eE+-]+|NaN)$'
)


def test_metrics_are_prometheus_text(env, good_zip, r):
    client, tokens = env
    upload(client, tokens["alpha"], good_zip)
    sid = upload(client, tokens["beta"], good_zip).json()["id"]
    lifecycle.fail(r, sid, 1, FailureCause.OPTIMIZER_CRASHED, "boom")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    typed: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter")
            typed[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a Prometheus sample: {line!r}"
            assert match.group(1) in typed, f"{match.group(1)} has no TYPE line"
            samples[line.rsplit(" ", 1)[0]] = float(match.group(4))
    assert samples['bbo_queue_depth{queue="bbo-team-alpha"}'] == 4  # alpha's four jobs; beta's were cancelled
    assert samples['bbo_submissions{state="queued"}'] == 1
    assert samples['bbo_failures_total{cause="optimizer_crashed"}'] == 1
    assert samples["bbo_teams"] == 2 and samples["bbo_workers"] == 0
    assert 'bbo_jobs_running{queue="bbo-score"}' in samples


def test_malformed_requests_get_4xx_json_never_5xx(env):
    client, tokens = env
    token = auth(tokens["alpha"])
    attempts = [
        client.get("/nowhere"),
        client.delete("/v1/submissions"),
        client.get("/v1/submissions", params={"limit": "many"}, headers=token),
        client.get("/v1/submissions", params={"limit": "-5"}, headers=token),
        client.get("/v1/submissions/" + "x" * 5000, headers=token),
        client.get("/v1/submissions/%00%ff..%2F..", headers=token),
        client.get("/v1/submissions/s1", headers={"Authorization": "Bearer"}),
        client.get("/v1/submissions/s1", headers={"Authorization": "Bearer " + "t" * 10_000}),
        client.get("/v1/submissions/s1", headers={"Authorization": "garbage"}),
        client.post("/v1/submissions", headers=token),
        client.post("/v1/submissions", headers={**token, "Content-Type": "application/json"}, content=b"{}"),
        client.post(
            "/v1/submissions", headers={**token, "Content-Type": "multipart/form-data"}, content=b"x"
        ),
        client.post(
            "/v1/submissions",
            headers={**token, "Content-Type": "multipart/form-data; boundary=zz"},
            content=b'--zz\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--zz--\r\n',
        ),
        client.post(
            "/v1/submissions",
            headers={**token, "Content-Type": "multipart/form-data; boundary=zz"},
            content=b"\xff",
        ),
        client.post(
            "/v1/submissions",
            headers={
                **token,
                "Content-Type": "multipart/form-data; boundary=zz",
                "Content-Length": "99999999999",
            },
            content=b"",
        ),
        client.post("/v1/submissions/s1/stop", headers=token),
        client.post("/v1/submissions/s1/stop"),
        client.get("/v1/leaderboard", params={"phase": "x" * 100}),
        client.get("/v1/info", headers={"Authorization": "Bearer nope"}),
    ]
    for response in attempts:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
        assert "error" in response.json()


def test_health_and_a_store_that_is_down(r, tmp_path):
    client = TestClient(create_app(_spec(), "auto"))
    assert client.get("/health").json()["status"] == "ok"
    down = TestClient(create_app(_spec(), "auto", redis_url=f"unix://{tmp_path}/nothing.sock"))
    assert_error(down.get("/health"), 503, "unavailable")
    assert_error(down.get("/v1/leaderboard"), 503)
    assert_error(down.get("/v1/submissions", headers=auth("bbo_something")), 503)
    assert down.get("/v1/info").status_code == 200  # the rules need no store


def test_unsafe_or_unknown_backends_are_refused_at_start(monkeypatch):
    monkeypatch.delenv("BBO_ALLOW_UNSAFE_SANDBOX", raising=False)
    with pytest.raises(ValueError, match="BBO_ALLOW_UNSAFE_SANDBOX"):
        create_app("demo", "process")
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        create_app("demo", "vm")
