"""The web pages: the public leaderboard and competition page, and a signed-in team's own pages.

Every rule is competition/'s (the same intake, quota, stop, selection and leaderboard as the API); this
module renders them as HTML. Pages work without JavaScript; gateway/web/static/live.js only keeps them
live (gateway/web/live.py pushes what changed). Forms carry a CSRF secret: the session's once signed in,
a double-submit cookie's on the sign-in form. Whatever a team wrote (a failure message, a file name) is
autoescaped text in these templates, never markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from artifacts.archive import InvalidSubmission, pack
from baselines.build import RANDOM_SEARCH_FILE
from competition import board, scores, service, sessions
from competition.quotas import QuotaExceeded
from competition.sessions import WebSession
from gateway import errors, uploads
from gateway.cache import SharedCache
from gateway.errors import ApiError
from gateway.web import cookies
from gateway.web.chart import convergence_svg
from queue_schema.payloads import Submission
from queue_schema.states import SubmissionState
from runtime.spec import Spec, SpecError

HERE = Path(__file__).parent
STATIC = HERE / "static"
# The starter zip teams download: the random-search reference optimizer in the starter-kit format.
STARTER = RANDOM_SEARCH_FILE.parent
TEAM_LIST = 100

# Pages load only our own script and style; nothing may frame them; forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
ACTIVE = {SubmissionState.QUEUED, SubmissionState.RUNNING}

FORGED = "This form expired or did not come from this site. Reload the page and try again."


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    headers: dict[str, str] | None = None


def _refusal(exc: Exception) -> Refusal:
    """What a page says when the competition's rules refuse a request: the API's status and message."""
    error = exc if isinstance(exc, ApiError) else errors.api_error(exc)  # type: ignore[arg-type]
    return Refusal(error.status, error.message, error.headers)


REFUSED = (ApiError, service.ServiceError, QuotaExceeded, InvalidSubmission, SpecError)


def _when(value: str | float | None) -> str:
    if value is None or value == "":
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else datetime.fromtimestamp(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def install_pages(app: FastAPI, spec: Spec, backend: str) -> None:
    """Add the pages, their fragments and /static to the gateway of `spec`."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(when=_when, score=_score, percent=_percent)
    templates.env.globals.update(competition=spec.name, description=spec.description)
    router = APIRouter(include_in_schema=False)
    max_mb = spec.submission.max_zip_mb

    def render(
        request: Request,
        name: str,
        context: dict[str, Any],
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-store", **(headers or {})})
        return response

    def not_found(request: Request, session: WebSession | None, message: str) -> HTMLResponse:
        return render(
            request, "error.html", {"session": session, "title": "Not found", "message": message}, 404
        )

    def uploadable_phases() -> list[str]:
        return [name for name, p in spec.phases.items() if p.accepts_uploads]

    # -- public ------------------------------------------------------------------------------------

    def board_view(phase: str) -> dict[str, Any]:
        """The public board of a phase (the API's, from the same cache) with random search's reference."""
        return {**app.state.boards.get(phase), "reference": references.get(phase)}

    # The baselines do not change while the gateway runs.
    references = SharedCache(lambda phase: board.random_search_reference(spec, phase), lambda: float("inf"))

    def leaderboard_context(request: Request, phase: str) -> dict[str, Any]:
        spec.phase(phase)  # SpecError: a phase this competition does not have
        return {
            "session": cookies.current_session(request),
            "view": board_view(phase),
            "phase": phase,
            "phases": list(spec.phases),
        }

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request) -> HTMLResponse:
        return render(request, "leaderboard.html", leaderboard_context(request, "feedback"))

    @router.get("/leaderboard", response_class=HTMLResponse)
    def leaderboard(request: Request, phase: str = Query("feedback", max_length=40)) -> HTMLResponse:
        try:
            return render(request, "leaderboard.html", leaderboard_context(request, phase))
        except SpecError as exc:
            return not_found(request, cookies.current_session(request), str(exc))

    @router.get("/leaderboard/rows", response_class=HTMLResponse)
    def leaderboard_rows(request: Request, phase: str = Query("feedback", max_length=40)) -> HTMLResponse:
        try:
            spec.phase(phase)
        except SpecError as exc:
            return not_found(request, None, str(exc))
        return render(request, "_board.html", {"view": board_view(phase), "phase": phase})

    @router.get("/competition", response_class=HTMLResponse)
    def competition(request: Request) -> HTMLResponse:
        base = str(request.base_url).rstrip("/")
        return render(
            request,
            "competition.html",
            {
                "session": cookies.current_session(request),
                "info": service.info(None, spec),
                "spec": spec,
                "base_url": base,
            },
        )

    starter: list[bytes] = []

    @router.get("/starter.zip")
    def starter_zip() -> Response:
        if not starter:
            starter.append(pack(STARTER, spec.submission))
        return Response(
            starter[0],
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="random_search.zip"'},
        )

    # -- signing in and out --------------------------------------------------------------------------

    @router.get("/signin", response_class=HTMLResponse)
    def signin_form(request: Request) -> Response:
        if cookies.current_session(request) is not None:
            return RedirectResponse("/team", status_code=303)
        return _signin_page(request)

    def _signin_page(request: Request, message: str | None = None, status: int = 200) -> HTMLResponse:
        secret = sessions.new_form_secret()
        response = render(
            request, "signin.html", {"session": None, "csrf": secret, "message": message}, status
        )
        cookies.set_cookie(request, response, cookies.SIGNIN_COOKIE, secret, max_age=3600)
        return response

    @router.post("/signin", response_class=HTMLResponse)
    def signin(request: Request, token: str = Form("", max_length=400), csrf: str = Form("", max_length=200)):
        if not sessions.csrf_ok(request.cookies.get(cookies.SIGNIN_COOKIE, ""), csrf):
            return _signin_page(request, FORGED, 403)
        opened = sessions.open_session(app.state.redis, token.strip())
        if opened is None:
            return _signin_page(
                request,
                "This token is not valid: it may have been rotated or revoked. Ask the organizers.",
                401,
            )
        session_id, _ = opened
        response = RedirectResponse("/team", status_code=303)
        cookies.set_cookie(request, response, cookies.SESSION_COOKIE, session_id, sessions.SESSION_TTL_S)
        cookies.clear_cookie(request, response, cookies.SIGNIN_COOKIE)
        return response

    @router.post("/signout")
    def signout(request: Request, csrf: str = Form("", max_length=200)) -> Response:
        session = cookies.current_session(request)
        if session is not None and not sessions.csrf_ok(session.csrf, csrf):
            return render(
                request, "error.html", {"session": session, "title": "Refused", "message": FORGED}, 403
            )
        sessions.close_session(app.state.redis, request.cookies.get(cookies.SESSION_COOKIE))
        response = RedirectResponse("/", status_code=303)
        cookies.clear_cookie(request, response, cookies.SESSION_COOKIE)
        return response

    # -- a team's pages ------------------------------------------------------------------------------

    def team_context(session: WebSession, **extra: Any) -> dict[str, Any]:
        r = app.state.redis
        subs = service.list_submissions(r, session.team, TEAM_LIST)
        about = service.info(r, spec, session.team)
        return {
            "session": session,
            "subs": subs,
            "quota": about["quota"],
            "phases": uploadable_phases(),
            "max_mb": max_mb,
            "message": None,
            **extra,
        }

    @router.get("/team", response_class=HTMLResponse)
    def team_page(request: Request) -> Response:
        session = cookies.current_session(request)
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        return render(request, "team.html", team_context(session))

    @router.get("/team/rows", response_class=HTMLResponse)
    def team_rows(request: Request) -> Response:
        session = cookies.current_session(request)
        if session is None:
            return render(request, "error.html", {"title": "Signed out", "message": "Sign in again."}, 401)
        subs = service.list_submissions(app.state.redis, session.team, TEAM_LIST)
        return render(request, "_submissions.html", {"subs": subs})

    @router.post("/team/submissions", response_class=HTMLResponse)
    async def upload(request: Request) -> Response:
        session = await run_in_threadpool(cookies.current_session, request)
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        r = app.state.redis
        try:
            uploads.check_headers(request, max_mb)
            # The API's order: what needs none of the body first (window, disabled team, quota).
            await run_in_threadpool(service.admit_upload, r, session.team, spec, None)
            form = await uploads.read_upload(request, max_mb)
            if not sessions.csrf_ok(session.csrf, form.fields.get("csrf")):
                raise ApiError(403, "forbidden", FORGED)
            phase = form.fields.get("phase") or "feedback"
            sub = await run_in_threadpool(
                service.submit, r, session.team, form.data, form.filename, spec, phase, backend
            )
        except REFUSED as exc:
            refusal = _refusal(exc)
            context = await run_in_threadpool(team_context, session, message=refusal.message)
            return render(request, "team.html", context, refusal.status, refusal.headers)
        return RedirectResponse(f"/team/submissions/{sub.id}", status_code=303)

    def own(request: Request, sid: str) -> tuple[WebSession | None, Submission | Response]:
        """The signed-in team's submission `sid`, or the page to answer instead: sign-in, or the same
        not-found for another team's submission as for an unknown id."""
        session = cookies.current_session(request)
        if session is None:
            return None, RedirectResponse("/signin", status_code=303)
        try:
            return session, service.status(app.state.redis, session.team, sid)
        except service.NotFound as exc:
            return session, not_found(request, session, str(exc))

    def detail_context(sub: Submission) -> dict[str, Any]:
        detail = scores.public_detail(app.state.redis, sub)
        return {
            "sub": sub,
            "detail": detail,
            "chart": convergence_svg(detail["curve"], detail["random"]),
        }

    def submission_context(session: WebSession | None, sub: Submission, message: str | None = None) -> dict:
        return {
            "session": session,
            "active": sub.state in ACTIVE,
            "selectable": sub.phase == "feedback" and sub.last_scored() is not None,
            "message": message,
            **detail_context(sub),
        }

    def show(request: Request, sid: str, template: str) -> Response:
        session, found = own(request, sid)
        if not isinstance(found, Submission):
            return found
        return render(request, template, submission_context(session, found))

    @router.get("/team/submissions/{sid}", response_class=HTMLResponse)
    def submission_page(request: Request, sid: str) -> Response:
        return show(request, sid, "submission.html")

    @router.get("/team/submissions/{sid}/detail", response_class=HTMLResponse)
    def submission_detail(request: Request, sid: str) -> Response:
        """The part of the page a live refresh replaces: the actions, the chart, the problems."""
        return show(request, sid, "_detail.html")

    def act(request: Request, sid: str, csrf: str, action: str) -> Response:
        session, found = own(request, sid)
        if not isinstance(found, Submission):
            return found
        assert session is not None
        try:
            if not sessions.csrf_ok(session.csrf, csrf):
                raise ApiError(403, "forbidden", FORGED)
            if action == "stop":
                service.stop(app.state.redis, sid, by_team=session.team)
            else:
                service.select(app.state.redis, session.team, sid, spec)
        except REFUSED as exc:
            refusal = _refusal(exc)
            sub = service.status(app.state.redis, session.team, sid)
            context = submission_context(session, sub, refusal.message)
            return render(request, "submission.html", context, refusal.status, refusal.headers)
        return RedirectResponse(f"/team/submissions/{sid}", status_code=303)

    @router.post("/team/submissions/{sid}/stop")
    def stop(request: Request, sid: str, csrf: str = Form("", max_length=200)) -> Response:
        return act(request, sid, csrf, "stop")

    @router.post("/team/submissions/{sid}/select")
    def select(request: Request, sid: str, csrf: str = Form("", max_length=200)) -> Response:
        return act(request, sid, csrf, "select")

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
