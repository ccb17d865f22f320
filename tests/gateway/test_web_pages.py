"""The web pages in process against a real Redis: the public leaderboard and competition page, signing in
and out with a token, the upload form's intake (same refusals as the API), isolation between teams, CSRF,
sessions that end with their token, and team text shown as text."""

from __future__ import annotations

import dataclasses
import html
import io
import re
import warnings
import zipfile

import pytest

from artifacts import archive
from competition import sessions, teams
from gateway.app import create_app
from queue_schema import keys
from queue_schema.records import transition
from queue_schema.states import FailureCause, SubmissionState
from runtime import lifecycle
from runtime.spec import load
from tests.conftest import SUBMISSIONS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _spec(quota: int = 2):
    spec = load("demo")
    return dataclasses.replace(spec, submission=dataclasses.replace(spec.submission, daily_quota=quota))


@pytest.fixture(scope="module")
def good_zip() -> bytes:
    return archive.pack(SUBMISSIONS / "random_search", load("demo").submission)


@pytest.fixture()
def site(r):
    tokens = {name: teams.add_team(r, name) for name in ("alpha", "beta")}
    return create_app(_spec(), "auto"), tokens


def client_of(app) -> TestClient:
    return TestClient(app, follow_redirects=False)


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Sign in through the form; returns the session's CSRF secret (from the team page)."""
    form = client.get("/signin")
    assert form.status_code == 200
    done = client.post("/signin", data={"token": token, "csrf": csrf_of(form.text)})
    assert done.status_code == 303 and done.headers["location"] == "/team", done.text
    team = client.get("/team")
    assert team.status_code == 200
    return csrf_of(team.text)


def upload(client: TestClient, csrf: str | None, data: bytes, name: str = "sub.zip"):
    fields = {"phase": "feedback"} | ({"csrf": csrf} if csrf is not None else {})
    return client.post("/team/submissions", data=fields, files={"file": (name, data, "application/zip")})


def test_the_public_pages_need_no_sign_in(site):
    app, _ = site
    client = client_of(app)
    home = client.get("/")
    assert home.status_code == 200 and "text/html" in home.headers["content-type"]
    assert "random search (reference)" in home.text  # the demo's baselines give random search's score
    assert "<main" in home.text and 'aria-label="Main"' in home.text
    assert home.headers["content-security-policy"].startswith("default-src 'self'")
    assert "Sign in" in home.text
    final = client.get("/leaderboard", params={"phase": "final"})
    assert final.status_code == 200 and "have not released the final leaderboard yet" in final.text
    assert client.get("/leaderboard", params={"phase": "nope"}).status_code == 404
    page = client.get("/competition").text
    assert "8 rounds of 4 suggestions" in page and "20 submissions per team" not in page
    assert "2 submissions per team per UTC day" in page
    for name in ("iris", "diabetes", "wine"):  # problem names stay hidden
        assert name not in home.text and name not in page
    starter = client.get("/starter.zip")
    assert starter.status_code == 200 and starter.headers["content-type"] == "application/zip"
    assert "optimizer.py" in zipfile.ZipFile(io.BytesIO(starter.content)).namelist()
    css = client.get("/static/style.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]


def test_sign_in_gives_a_strict_http_only_cookie_and_refuses_bad_tokens_and_forged_forms(site, r):
    app, tokens = site
    client = client_of(app)
    assert client.get("/team").headers["location"] == "/signin"
    form = client.get("/signin")
    signin_cookie = form.headers["set-cookie"]
    assert "HttpOnly" in signin_cookie and "SameSite=strict" in signin_cookie.replace("Strict", "strict")
    csrf = csrf_of(form.text)
    wrong = client.post("/signin", data={"token": "bbo_wrong", "csrf": csrf})
    assert (
        wrong.status_code == 401
        and "not valid" in wrong.text
        and "bbo_session" not in wrong.headers.get("set-cookie", "")
    )
    forged = client_of(app).post("/signin", data={"token": tokens["alpha"], "csrf": "forged"})
    assert forged.status_code == 403 and "did not come from this site" in forged.text
    done = client.post(
        "/signin", data={"token": tokens["alpha"], "csrf": csrf_of(client.get("/signin").text)}
    )
    assert done.status_code == 303
    cookie = done.headers["set-cookie"]
    assert cookie.startswith("bbo_session=") and "HttpOnly" in cookie and "secure" not in cookie.lower()
    assert "strict" in cookie.lower()
    assert tokens["alpha"] not in cookie
    # The store keeps a hash of the session id, never the id.
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert not r.exists(keys.web_session(session_id))
    assert r.zcard(keys.team_web_sessions("alpha")) == 1
    # Behind TLS (a proxy saying so) the cookie is Secure.
    tls = client_of(app)
    page = tls.get("/signin", headers={"X-Forwarded-Proto": "https"})
    secure = tls.post(
        "/signin",
        data={"token": tokens["alpha"], "csrf": csrf_of(page.text)},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "secure" in secure.headers["set-cookie"].lower()


def test_an_upload_through_the_form_is_the_apis_intake(site, good_zip, r):
    app, tokens = site
    client = client_of(app)
    csrf = sign_in(client, tokens["alpha"])
    assert "2 of 2 submissions left today" in client.get("/team").text
    done = upload(client, csrf, good_zip)
    assert done.status_code == 303
    sid = done.headers["location"].rsplit("/", 1)[1]
    page = client.get(done.headers["location"])
    assert page.status_code == 200 and sid in page.text and "queued" in page.text
    assert len(r.smembers(keys.submission_jobs(sid, 1))) == 4
    team = client.get("/team").text
    assert sid in team and "1 of 2 submissions left today" in team
    # The same refusals as the API, with its messages and statuses, and nothing stored.
    before = r.zcard(keys.team_submissions("alpha"))
    forged = upload(client, None, good_zip)
    assert forged.status_code == 403 and "did not come from this site" in forged.text
    broken = upload(client, csrf, b"not a zip at all")
    api = client.post(
        "/v1/submissions",
        files={"file": ("sub.zip", b"not a zip at all", "application/zip")},
        headers={"Authorization": f"Bearer {tokens['alpha']}"},
    )
    assert broken.status_code == api.status_code == 422
    assert html.escape(api.json()["error"]["message"], quote=True) in broken.text
    assert r.zcard(keys.team_submissions("alpha")) == before
    assert upload(client, csrf, good_zip).status_code == 303
    full = upload(client, csrf, good_zip)
    assert full.status_code == 429 and "resets at" in full.text and full.headers["retry-after"]
    assert "0 of 2 submissions left today" in full.text
    signed_out = client_of(app).post(
        "/team/submissions", data={"csrf": csrf}, files={"file": ("a.zip", good_zip, "application/zip")}
    )
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/signin"


def test_another_teams_submission_is_the_same_not_found_as_an_unknown_one(site, good_zip):
    app, tokens = site
    alpha, beta = client_of(app), client_of(app)
    sid = upload(alpha, sign_in(alpha, tokens["alpha"]), good_zip).headers["location"].rsplit("/", 1)[1]
    beta_csrf = sign_in(beta, tokens["beta"])
    unknown_id = "s00000000aaaaaaaaaa"
    for suffix in ("", "/detail"):
        foreign = beta.get(f"/team/submissions/{sid}{suffix}")
        unknown = beta.get(f"/team/submissions/{unknown_id}{suffix}")
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.text.replace(sid, "X") == unknown.text.replace(unknown_id, "X")
    stop = beta.post(f"/team/submissions/{sid}/stop", data={"csrf": beta_csrf})
    assert stop.status_code == 404
    assert alpha.get(f"/team/submissions/{sid}").status_code == 200
    assert sid not in beta.get("/team").text


def test_stop_needs_the_forms_csrf_and_then_stops(site, good_zip):
    app, tokens = site
    client = client_of(app)
    csrf = sign_in(client, tokens["alpha"])
    where = upload(client, csrf, good_zip).headers["location"]
    assert client.post(f"{where}/stop", data={}).status_code == 403
    assert client.post(f"{where}/stop", data={"csrf": "nope"}).status_code == 403
    assert "Stop scoring" in client.get(where).text
    assert "Stop scoring" in client.get(f"{where}/detail").text  # the live refresh carries the actions
    done = client.post(f"{where}/stop", data={"csrf": csrf})
    assert done.status_code == 303
    page = client.get(where).text
    assert "stopped" in page and "Stop scoring" not in page
    assert "Stop scoring" not in client.get(f"{where}/detail").text
    again = client.post(f"{where}/stop", data={"csrf": csrf})
    assert again.status_code == 409 and "already stopped" in again.text


def test_rotating_revoking_or_disabling_the_token_ends_its_sessions(site, r):
    app, tokens = site
    for end in (
        lambda: teams.rotate_token(r, "alpha"),
        lambda: teams.revoke_token(r, "alpha"),
        lambda: teams.set_disabled(r, "alpha", True),
    ):
        token = teams.rotate_token(r, "alpha")
        teams.set_disabled(r, "alpha", False)
        client = client_of(app)
        sign_in(client, token)
        end()
        assert client.get("/team").headers["location"] == "/signin"
    teams.set_disabled(r, "alpha", False)


def test_sign_out_ends_the_session_and_needs_its_csrf(site, r):
    app, tokens = site
    client = client_of(app)
    csrf = sign_in(client, tokens["alpha"])
    assert client.post("/signout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/team").status_code == 200
    out = client.post("/signout", data={"csrf": csrf})
    assert out.status_code == 303 and 'bbo_session=""' in out.headers["set-cookie"]
    assert r.zcard(keys.team_web_sessions("alpha")) == 0
    assert client.get("/team").status_code == 303


def test_a_team_keeps_a_bounded_number_of_sessions(r):
    teams.add_team(r, "gamma")
    token = teams.rotate_token(r, "gamma")
    opened = [sessions.open_session(r, token) for _ in range(sessions.MAX_SESSIONS_PER_TEAM + 3)]
    assert r.zcard(keys.team_web_sessions("gamma")) == sessions.MAX_SESSIONS_PER_TEAM
    assert sessions.session(r, opened[0][0]) is None  # the oldest ended first
    assert sessions.session(r, opened[-1][0]).team == "gamma"
    assert sessions.session(r, "x" * 500) is None and sessions.session(r, None) is None


def test_team_text_is_shown_as_text(site, good_zip, r):
    app, tokens = site
    client = client_of(app)
    csrf = sign_in(client, tokens["alpha"])
    hostile = '<img src=x onerror="alert(1)"><script>document.title="owned"</script>'
    where = upload(client, csrf, good_zip, name=hostile + ".zip").headers["location"]
    sid = where.rsplit("/", 1)[1]
    transition(r, sid, SubmissionState.RUNNING)
    lifecycle.fail(r, sid, 1, FailureCause.OPTIMIZER_CRASHED, f"ValueError: {hostile}")
    for page in (client.get(where).text, client.get("/team").text, client.get(f"{where}/detail").text):
        assert "<script>document" not in page and "<img src=x" not in page
    page = client.get(where).text
    assert html.escape("<script>", quote=False) in page and "optimizer_crashed" in page


def test_a_browser_gets_an_error_page_and_the_api_keeps_its_json(tmp_path):
    down = client_of(create_app(_spec(), "auto", redis_url=f"unix://{tmp_path}/nothing.sock"))
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = down.get("/", headers=browser)
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
    assert "not reachable" in page.text and page.headers["retry-after"] == "5"
    api = down.get("/v1/leaderboard", headers=browser)
    assert api.status_code == 503 and api.json()["error"]["code"] == "unavailable"
    assert down.get("/", headers={"Accept": "application/json"}).json()["error"]["code"] == "unavailable"
    missing = down.get("/no/such/page", headers=browser)
    assert missing.status_code == 404 and "<h1>Error 404</h1>" in missing.text
