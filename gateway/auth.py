"""Bearer tokens: `Authorization: Bearer <token>`, checked against the hashed token store."""

from __future__ import annotations

from fastapi import Request

from competition import teams
from gateway.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bbo-arena"'}


def bearer_token(request: Request) -> str | None:
    """The token of the request, None without an Authorization header; a malformed header is a 401."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "use the header `Authorization: Bearer <token>`", _CHALLENGE)
    return token


def team_of(request: Request) -> str | None:
    """The authenticated team, None when no token was sent; a bad token is a 401."""
    token = bearer_token(request)
    if token is None:
        return None
    team = teams.authenticate(request.app.state.redis, token)
    if team is None:
        raise ApiError(
            401,
            "unauthorized",
            "invalid, revoked or disabled token; ask the organizers for a new one",
            _CHALLENGE,
        )
    return team


def require_team(request: Request) -> str:
    team = team_of(request)
    if team is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing token: send `Authorization: Bearer <token>` (see `bbo login`)",
            _CHALLENGE,
        )
    return team
