"""The web pages in a real browser (Debian's chromium through Playwright) against a whole stack: the
embedded Redis, the gateway served by uvicorn, and real worker processes scoring with the process backend.
Each test is something a team (or someone attacking one) does in a browser: sign in through the form,
upload a zip, watch the score arrive live, look at the public board, sign out, open another team's
submission, post a forged form, read a hostile failure message; plus axe-core on every page and the
keyboard path to the upload form.

`BBO_SCREENSHOTS=1` also saves the README's screenshots (docs/img/leaderboard.png, submission.png).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from artifacts import archive
from competition import service, teams
from gateway.app import create_app
from queue_schema import keys
from queue_schema.connection import connect
from queue_schema.payloads import Submission
from queue_schema.records import load_submission, transition
from queue_schema.states import TERMINAL_STATES, FailureCause, SubmissionState
from runtime import lifecycle
from runtime.spec import Spec, load
from tests.browser_helpers import MISSING, browsing, chromium, describe, severe_violations, sign_in
from tests.conftest import SUBMISSIONS
from tests.live_server import serving
from tests.waiting import wait_for

pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "img"
EXAMPLES = ROOT / "competition" / "examples"
# The teams that make the public board (the demo's good optimizers), and one team per test otherwise:
# a test's sessions and submissions are its own, whatever ran before it.
BOARD = {
    "random-search": ROOT / "baselines" / "optimizers" / "random_search",
    "evolution": EXAMPLES / "local_search",
    "sobol": EXAMPLES / "quasi_random",
}
TEAMS = ("alpha", "beta", "gamma", "delta", "mallory", "kim", *BOARD)

SCORE = re.compile(r"^\s*-?\d+\.\d{3}\s*$")  # a final score; a partial one reads "12.345 (running)"
# Scoring needs workers to start (a few seconds of imports) and studies to run, on a shared 2-core machine.
SCORE_TIMEOUT_S = 300
UNKNOWN_ID = "s00000000aaaaaaaaaa"
HOSTILE = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"


def browser_spec() -> Spec:
    """The demo rules on two of its problems, two studies each, one study per job: a submission is four
    jobs (progress moves visibly) and scores in well under a minute."""
    spec = load("demo")
    feedback = dataclasses.replace(
        spec.phases["feedback"], problems=("DT-iris-acc", "lasso-diabetes-mae"), studies=2, studies_per_job=1
    )
    return dataclasses.replace(
        spec,
        description="Demo: two fast bayesmark problems, 2 studies each, 8 rounds x 4.",
        phases={**spec.phases, "feedback": feedback},
    )


@dataclasses.dataclass
class Stack:
    url: str
    r: redis.Redis
    spec: Spec
    tokens: dict[str, str]
    logs: Path
    started: int = 0

    def upload(self, team: str, folder: Path) -> str:
        """Upload through the API, as `bbo submit` does; returns the submission id."""
        answer = httpx.post(
            f"{self.url}/v1/submissions",
            headers={"Authorization": f"Bearer {self.tokens[team]}"},
            files={
                "file": (f"{folder.name}.zip", archive.pack(folder, self.spec.submission), "application/zip")
            },
            timeout=60,
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def stop(self, sid: str) -> None:
        """Stop what a test left queued, so the next test's workers do not score it."""
        with contextlib.suppress(service.ServiceError):
            service.stop(self.r, sid, actor="test")

    @contextlib.contextmanager
    def workers(self, count: int = 2) -> Iterator[None]:
        """`count` real worker processes (`bbo admin worker`, process backend) until the block ends."""
        env = {**os.environ, "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
        procs: list[subprocess.Popen] = []
        try:
            for _ in range(count):
                self.started += 1
                name = f"browser-{os.getpid()}-{self.started}"
                with open(self.logs / f"{name}.log", "ab") as log:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "cli", "admin", "worker", "--name", name],
                            cwd=ROOT,
                            env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            yield
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)  # warm shutdown: idle by now, or stopped with the test
            for proc in procs:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def wait_ended(self, sids: list[str], what: str) -> list[Submission]:
        def ended() -> list[Submission] | None:
            subs = [load_submission(self.r, sid) for sid in sids]
            return subs if all(sub.state in TERMINAL_STATES for sub in subs) else None

        return wait_for(ended, SCORE_TIMEOUT_S, what, self.logs, interval=0.5)


@pytest.fixture(scope="module")
def stack(redis_server: str, state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Module-wide, so not the function-scoped `r` (it flushes the store under the running gateway).
    r = connect(redis_server)
    r.flushall()
    tokens = {name: teams.add_team(r, name) for name in TEAMS}
    spec = browser_spec()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BBO_ALLOW_UNSAFE_SANDBOX", "1")
        app = create_app(spec, "process")
        with serving(app) as url:
            yield Stack(url, r, spec, tokens, tmp_path_factory.mktemp("browser-logs"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def board(stack: Stack) -> dict[str, Submission]:
    """The board teams' submissions, uploaded and scored by real workers."""
    sids = {team: stack.upload(team, folder) for team, folder in BOARD.items()}
    with stack.workers():
        subs = stack.wait_ended(list(sids.values()), "the board teams' submissions to score")
    for sub in subs:
        assert sub.state == SubmissionState.SCORED, (sub.team, sub.state, sub.failure)
    return {sub.team: sub for sub in subs}


@pytest.fixture()
def starter_zip(stack: Stack, tmp_path: Path) -> Path:
    """A starter-kit zip on disk, for the upload form's file input."""
    path = tmp_path / "random_search.zip"
    path.write_bytes(archive.pack(SUBMISSIONS / "random_search", stack.spec.submission))
    return path


def field(page: Any, sid: str, name: str) -> Any:
    return page.locator(f'[data-sub="{sid}"] [data-field="{name}"]')


def live_stream(url_part: str) -> Any:
    """A predicate for page.expect_response: the page's live stream answered (its EventSource is open)."""
    return lambda response: url_part in response.url and response.status == 200


# -- a team's day -----------------------------------------------------------------------------------


def test_a_team_signs_in_uploads_and_watches_its_score_arrive_live(browser, stack, starter_zip):
    from playwright.sync_api import expect

    with browsing(browser, stack.url) as page:
        sign_in(page, stack.tokens["alpha"])
        page.get_by_label(re.compile("Submission zip")).set_input_files(starter_zip)
        with page.expect_response(live_stream("/live/submissions/"), timeout=60_000):
            page.get_by_role("button", name="Upload").click()
            expect(page).to_have_url(re.compile(r"/team/submissions/s\w+$"))
        sid = page.url.rsplit("/", 1)[1]
        # No worker runs yet: what follows can only reach the page through its live stream.
        expect(field(page, sid, "state")).to_have_text("queued")
        expect(field(page, sid, "score")).to_have_text("—")
        expect(field(page, sid, "progress-text")).to_have_text("0 / 4 studies")
        page.evaluate("window.__marker = 1")
        loads: list[str] = []
        page.on(
            "request", lambda request: loads.append(request.url) if request.is_navigation_request() else None
        )

        with stack.workers():
            page.wait_for_function(
                "sid => Number(document.querySelector(`[data-sub='${sid}'] progress`).value) > 0",
                arg=sid,
                timeout=SCORE_TIMEOUT_S * 1000,
            )
            expect(field(page, sid, "score")).to_have_text(SCORE, timeout=SCORE_TIMEOUT_S * 1000)
        expect(field(page, sid, "state")).to_have_text("scored")
        expect(field(page, sid, "progress-text")).to_have_text("4 / 4 studies")
        # The refreshed detail brings the chart and the scored submission's own action.
        expect(page.get_by_role("button", name="Select for the final phase")).to_be_visible()
        expect(page.get_by_role("button", name="Stop scoring")).to_have_count(0)
        expect(page.get_by_role("img", name=re.compile("Convergence"))).to_be_visible()
        assert page.evaluate("window.__marker") == 1 and loads == [], f"the page reloaded: {loads}"
        shown = field(page, sid, "score").inner_text().strip()
        stored = load_submission(stack.r, sid)
        assert stored.state == SubmissionState.SCORED and shown == f"{stored.score:.3f}"

    # The public board, signed out, lists the team with that score (once its short cache turns over).
    with browsing(browser, stack.url) as public:
        row = public.get_by_role("row").filter(has=public.get_by_role("rowheader", name="alpha", exact=True))

        def listed() -> bool:
            public.goto("/")
            return row.count() == 1 and shown in row.inner_text()

        wait_for(listed, 60, "team alpha on the public leaderboard", interval=1)
        expect(
            public.get_by_role("navigation", name="Main").get_by_role("link", name="Sign in")
        ).to_be_visible()


def test_another_teams_submission_is_the_same_not_found_page_as_an_unknown_id(browser, stack):
    from playwright.sync_api import expect

    sid = stack.upload("alpha", SUBMISSIONS / "random_search")
    try:
        with browsing(browser, stack.url) as page:
            sign_in(page, stack.tokens["beta"])
            seen = {}
            for shown_id in (sid, UNKNOWN_ID):
                answer = page.goto(f"/team/submissions/{shown_id}")
                seen[shown_id] = (
                    answer.status,
                    page.title(),
                    page.locator("main").inner_text().replace(shown_id, "ID"),
                )
            assert seen[sid][0] == 404
            assert seen[sid] == seen[UNKNOWN_ID]
            assert "alpha" not in seen[sid][2]
            page.goto("/team")
            expect(page.get_by_role("heading", name="Team beta")).to_be_visible()
            expect(page.locator(f'[data-sub="{sid}"]')).to_have_count(0)
    finally:
        stack.stop(sid)


def test_signing_out_ends_the_session(browser, stack):
    from playwright.sync_api import expect

    with browsing(browser, stack.url) as page:
        sign_in(page, stack.tokens["gamma"])
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Team gamma")).to_be_visible()
        nav.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(f"{stack.url}/")
        expect(nav.get_by_role("link", name="Sign in")).to_be_visible()
        expect(nav.get_by_role("button", name="Sign out")).to_have_count(0)
        expect(nav.get_by_role("link", name="Team gamma")).to_have_count(0)
        assert "bbo_session" not in {cookie["name"] for cookie in page.context.cookies()}
        assert stack.r.zcard(keys.team_web_sessions("gamma")) == 0
        page.goto("/team")
        expect(page).to_have_url(f"{stack.url}/signin")


ATTACKER_PAGE = """<!doctype html><html lang="en"><title>Free prize</title>
<form method="post" action="{target}"><button type="submit">Claim your prize</button></form></html>"""

FORGE_IN_PAGE = """sid => {
    const form = document.createElement("form");
    form.method = "post";
    form.action = `/team/submissions/${sid}/stop`;
    document.body.append(form);
    form.submit();
}"""


def test_a_forged_form_without_the_csrf_secret_stops_nothing(browser, stack):
    from playwright.sync_api import expect

    sid = stack.upload("delta", SUBMISSIONS / "random_search")
    target = f"{stack.url}/team/submissions/{sid}/stop"
    attacker = FastAPI()

    @attacker.get("/", response_class=HTMLResponse)
    def prize() -> str:
        return ATTACKER_PAGE.format(target=target)

    def stop_answer(response: Any) -> bool:
        return response.url == target and response.request.method == "POST"

    try:
        with serving(attacker) as elsewhere, browsing(browser, stack.url) as page:
            sign_in(page, stack.tokens["delta"])
            # Another origin on the same host: the same site, so the SameSite=Strict session cookie goes
            # with the post; only the missing CSRF secret refuses it.
            page.goto(elsewhere)
            with page.expect_response(stop_answer) as answer:
                page.get_by_role("button", name="Claim your prize").click()
            assert answer.value.status == 403
            expect(page.locator("main")).to_contain_text("did not come from this site")
            # A form built by script in the team's own page (as injected script would), without the field.
            page.goto(f"/team/submissions/{sid}")
            with page.expect_response(stop_answer) as answer:
                page.evaluate(FORGE_IN_PAGE, sid)
            assert answer.value.status == 403
            expect(page.locator("main")).to_contain_text("did not come from this site")
            assert load_submission(stack.r, sid).state == SubmissionState.QUEUED
            # The page's own form carries the secret: that one stops it.
            page.goto(f"/team/submissions/{sid}")
            page.get_by_role("button", name="Stop scoring").click()
            expect(field(page, sid, "state")).to_have_text("stopped")
            assert load_submission(stack.r, sid).state == SubmissionState.STOPPED
    finally:
        stack.stop(sid)


def test_a_failure_message_with_markup_is_shown_as_text_and_runs_nothing(browser, stack):
    from playwright.sync_api import expect

    sid = stack.upload("mallory", SUBMISSIONS / "random_search")
    message = f"ValueError: {HOSTILE}"
    dialogs: list[str] = []

    def harmless(page: Any) -> None:
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("img[src='x']").count() == 0
        assert page.locator("main script").count() == 0
        assert dialogs == []

    # Without the pages' Content-Security-Policy, which would block inline handlers anyway: the escaping
    # alone must keep the message text.
    with browsing(browser, stack.url, bypass_csp=True) as page:
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        sign_in(page, stack.tokens["mallory"])
        with page.expect_response(live_stream(f"/live/submissions/{sid}")):
            page.goto(f"/team/submissions/{sid}")
        transition(stack.r, sid, SubmissionState.RUNNING)
        lifecycle.fail(stack.r, sid, 1, FailureCause.OPTIMIZER_CRASHED, message)
        failure = field(page, sid, "failure")
        expect(failure).to_contain_text(message)  # pushed live, into a page already open
        expect(field(page, sid, "state")).to_have_text("failed")
        harmless(page)
        page.reload()
        expect(failure).to_have_text(f"optimizer_crashed: {message}")  # rendered by the server
        harmless(page)
        page.goto("/team")
        expect(field(page, sid, "state")).to_have_text("failed")
        harmless(page)


# -- accessibility ----------------------------------------------------------------------------------

PAGES = {
    "leaderboard": "/",
    "final leaderboard": "/leaderboard?phase=final",
    "competition": "/competition",
    "sign-in": "/signin",
    "team": "/team",
    "submission": "/team/submissions/{sid}",
    "not found": f"/team/submissions/{UNKNOWN_ID}",
}


@pytest.mark.parametrize("name", list(PAGES))
def test_no_serious_accessibility_violations(browser, stack, board, name):
    path = PAGES[name].format(sid=board["evolution"].id)
    with browsing(browser, stack.url) as page:
        if path.startswith("/team"):
            sign_in(page, stack.tokens["evolution"])
        page.goto(path)
        found = severe_violations(page)
        assert not found, f"axe-core on {path}:\n{describe(found)}"


def tab_to(page: Any, target: Any, most: int = 15) -> list[str]:
    """Press Tab until `target` has the focus; returns what took the focus on the way."""
    path: list[str] = []
    for _ in range(most):
        page.keyboard.press("Tab")
        path.append(page.evaluate("() => document.activeElement.outerHTML.slice(0, 80)"))
        if target.evaluate("element => element === document.activeElement"):
            return path
    raise AssertionError("Tab never reached the target; the focus went:\n" + "\n".join(path))


def test_the_skip_link_and_the_upload_form_work_from_the_keyboard(browser, stack, starter_zip):
    from playwright.sync_api import expect

    with browsing(browser, stack.url) as page:
        # Playwright turns the file dialog's interception on when a listener appears, without waiting
        # for the browser to confirm: a listener from the start makes sure the keypress below is seen.
        page.on("filechooser", lambda chooser: None)
        sign_in(page, stack.tokens["kim"])
        page.goto("/team")  # a fresh load: the focus starts at the top of the page
        page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to content")
        expect(skip).to_be_focused()
        expect(skip).to_be_in_viewport()
        page.keyboard.press("Enter")
        expect(page.locator("main")).to_be_focused()
        tab_to(page, page.locator("#file"))
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Space")
        chooser.value.set_files(starter_zip)
        tab_to(page, page.get_by_role("button", name="Upload"), most=3)
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(r"/team/submissions/s\w+$"))
        sid = page.url.rsplit("/", 1)[1]
        stack.stop(sid)
        expect(page.get_by_role("heading", name=f"Submission {sid}")).to_be_visible()


# -- the README's pictures --------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("BBO_SCREENSHOTS") != "1", reason="BBO_SCREENSHOTS=1 rewrites docs/img")
def test_screenshots_for_the_readme(browser, stack, board, tmp_path):
    from playwright.sync_api import expect

    sub = board["evolution"]
    with browsing(browser, stack.url, viewport={"width": 1100, "height": 760}) as page:
        page.goto("/")
        for team in BOARD:
            expect(page.get_by_role("rowheader", name=team, exact=True)).to_be_visible()
        page.screenshot(path=tmp_path / "leaderboard.png", full_page=True)
        sign_in(page, stack.tokens["evolution"])
        page.goto(f"/team/submissions/{sub.id}")
        expect(field(page, sub.id, "score")).to_have_text(SCORE)
        page.screenshot(path=tmp_path / "submission.png", full_page=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in ("leaderboard.png", "submission.png"):
        shutil.copyfile(tmp_path / name, IMAGES / name)
