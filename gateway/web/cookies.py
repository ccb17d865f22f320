"""The session cookie of the web pages: its name and attributes, and the session a request carries.

HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Path=/, and Secure when
the page was reached over TLS (directly, or behind a proxy that says so in X-Forwarded-Proto). The cookie
is a session id only; what it grants is competition/sessions.py's to decide on every request.
"""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from competition import sessions
from competition.sessions import WebSession

SESSION_COOKIE = "bbo_session"
# Before sign-in there is no session to bind a CSRF secret to: the sign-in form's secret is a cookie of
# its own, echoed by the form (double submit), so another site cannot sign a browser in as its team.
SIGNIN_COOKIE = "bbo_signin"


def over_tls(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=over_tls(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=over_tls(request))


def current_session(request: Request) -> WebSession | None:
    """The signed-in team's session of this request, None when signed out (or the session ended). Runs
    a store lookup: call it from a worker thread (sync route) or through run_in_threadpool."""
    return sessions.session(request.app.state.redis, request.cookies.get(SESSION_COOKIE))
