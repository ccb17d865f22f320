"""A fake of the Hetzner Cloud API's server endpoints, as documented, served over real HTTP in tests.

POST /servers (201 {server, action, next_actions, root_password}), GET /servers (label_selector with
k=v, k==v, k!=v, k and !k terms joined by commas; page/per_page with meta.pagination), GET/PUT/DELETE
/servers/{id} (PUT replaces the labels; DELETE answers {action}). Errors use the documented body
{"error": {"code", "message", "details"}}: unauthorized (401), invalid_input (400), not_found (404),
uniqueness_error (409), resource_limit_exceeded (403, the server quota), rate_limit_exceeded (429, with
RateLimit-Limit/-Remaining/-Reset headers, which every answer carries). Knobs for tests: `quota`,
`rate_limit` (requests allowed before 429s), `fail_next` (injected 5xx answers) and `requests` (what came).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
LABEL_VALUE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?)?$")
LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?$")
USER_DATA_MAX = 32 * 1024
DEFAULT_PER_PAGE, MAX_PER_PAGE = 25, 50
HOUR_LIMIT = 3600


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None


@dataclass
class FakeHcloud:
    token: str
    quota: int | None = None  # servers the project may hold
    rate_limit: int | None = None  # requests answered before 429s
    fail_next: list[int] = field(default_factory=list)  # statuses to answer next (500, 503...)
    servers: dict[int, dict[str, Any]] = field(default_factory=dict)
    user_data: dict[int, str] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def by_name(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.servers.values() if s["name"] == name), None)

    def add_server(self, name: str, labels: dict[str, str], *, created: float | None = None) -> dict:
        """A server made outside the API under test (another tool, a past run)."""
        server_id = next(self._ids)
        stamp = datetime.fromtimestamp(created if created is not None else time.time(), tz=UTC)
        server = {
            "id": server_id,
            "name": name,
            "status": "running",
            "created": stamp.isoformat(timespec="seconds"),
            "labels": dict(labels),
            "server_type": {"name": "cpx31"},
            "image": {"name": "debian-12"},
            "datacenter": {"name": "fsn1-dc14", "location": {"name": "fsn1"}},
            "public_net": {"ipv4": {"ip": f"192.0.2.{server_id % 250 + 1}"}, "ipv6": None},
            "protection": {"delete": False, "rebuild": False},
        }
        self.servers[server_id] = server
        return server


def error(status: int, code: str, message: str, details: dict | None = None, headers=None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "==" in term or "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def action(command: str, server_id: int) -> dict[str, Any]:
    now = datetime.now(tz=UTC).isoformat(timespec="seconds")
    return {
        "id": int(time.time() * 1000) % 10**9,
        "command": command,
        "status": "running",
        "progress": 0,
        "started": now,
        "finished": None,
        "resources": [{"id": server_id, "type": "server"}],
        "error": None,
    }


def make_app(fake: FakeHcloud) -> FastAPI:
    app = FastAPI()
    served = itertools.count(1)

    @app.middleware("http")
    async def gatekeeper(request: Request, call_next):
        body = None
        if request.method in ("POST", "PUT"):
            try:
                body = await request.json()
            except ValueError:
                body = "<not json>"
        auth = request.headers.get("authorization")
        fake.requests.append(
            Recorded(request.method, request.url.path, dict(request.query_params), body, auth)
        )
        count = next(served)
        reset = int(time.time()) + 60
        limit = fake.rate_limit if fake.rate_limit is not None else HOUR_LIMIT
        remaining = max(0, limit - count)
        headers = {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset),
        }
        if auth != f"Bearer {fake.token}":
            return error(401, "unauthorized", "unable to authenticate", headers=headers)
        if fake.rate_limit is not None and count > fake.rate_limit:
            message = f"limit of {limit} requests per hour reached"
            return error(429, "rate_limit_exceeded", message, headers=headers)
        if fake.fail_next:
            status = fake.fail_next.pop(0)
            code = "unavailable" if status == 503 else "server_error"
            return error(status, code, "the service is temporarily unavailable", headers=headers)
        response = await call_next(request)
        response.headers.update(headers)
        return response

    @app.get("/v1/servers")
    def list_servers(label_selector: str = "", name: str | None = None, page: int = 1, per_page: int = 25):
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            return error(400, "invalid_input", "invalid input in fields 'page', 'per_page'")
        found = [
            s
            for s in sorted(fake.servers.values(), key=lambda s: s["id"])
            if matches(s["labels"], label_selector) and (name is None or s["name"] == name)
        ]
        last = max(1, -(-len(found) // per_page))
        chunk = found[(page - 1) * per_page : page * per_page]
        pagination = {
            "page": page,
            "per_page": per_page,
            "previous_page": page - 1 if page > 1 else None,
            "next_page": page + 1 if page < last else None,
            "last_page": last,
            "total_entries": len(found),
        }
        return {"servers": chunk, "meta": {"pagination": pagination}}

    @app.post("/v1/servers", status_code=201)
    async def create_server(request: Request):
        body = await request.json()
        missing = [key for key in ("name", "server_type", "image") if not body.get(key)]
        if missing:
            fields = [{"name": key, "messages": ["Missing data for required field."]} for key in missing]
            return error(400, "invalid_input", "invalid input in fields", {"fields": fields})
        name, labels = body["name"], body.get("labels") or {}
        bad = [k for k, v in labels.items() if not LABEL_KEY.match(k) or not LABEL_VALUE.match(str(v))]
        if not HOSTNAME.match(name) or bad or len(body.get("user_data") or "") > USER_DATA_MAX:
            field_name = "name" if not HOSTNAME.match(name) else ("labels" if bad else "user_data")
            details = {"fields": [{"name": field_name, "messages": ["invalid"]}]}
            return error(400, "invalid_input", f"invalid input in field '{field_name}'", details)
        with fake._lock:
            if fake.by_name(name) is not None:
                details = {"fields": [{"name": "name"}]}
                return error(409, "uniqueness_error", "server name is already used", details)
            if fake.quota is not None and len(fake.servers) >= fake.quota:
                details = {"limits": [{"name": "server_limit"}]}
                return error(403, "resource_limit_exceeded", "server limit exceeded", details)
            server = fake.add_server(name, labels)
            server["status"] = "initializing"
            server["server_type"] = {"name": body["server_type"]}
            server["image"] = {"name": body["image"]}
            fake.user_data[server["id"]] = body.get("user_data") or ""
        return {
            "server": server,
            "action": action("create_server", server["id"]),
            "next_actions": [action("start_server", server["id"])],
            "root_password": None if body.get("ssh_keys") else "YItygq1v3GYjjMomLaKc",
        }

    def not_found(server_id: int) -> JSONResponse:
        return error(404, "not_found", f"server with ID '{server_id}' not found")

    @app.get("/v1/servers/{server_id}")
    def get_server(server_id: int):
        server = fake.servers.get(server_id)
        return {"server": server} if server else not_found(server_id)

    @app.put("/v1/servers/{server_id}")
    async def update_server(server_id: int, request: Request):
        server = fake.servers.get(server_id)
        if server is None:
            return not_found(server_id)
        body = await request.json()
        if "labels" in body:
            server["labels"] = dict(body["labels"])  # replaces the whole set, as documented
        if body.get("name"):
            server["name"] = body["name"]
        return {"server": server}

    @app.delete("/v1/servers/{server_id}")
    def delete_server(server_id: int):
        with fake._lock:
            server = fake.servers.pop(server_id, None)
        if server is None:
            return not_found(server_id)
        return {"action": action("delete_server", server_id)}

    return app
