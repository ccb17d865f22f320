"""Abuse of a real gateway, started as `bbo admin serve` starts it (uvicorn, httptools, uvloop): other
teams' tokens, stale tokens, oversize bodies and heads, slow clients, hostile archives and fuzzed values.
Every one is refused with a clear 4xx (or the connection is closed), never a 5xx or a hang, and a
refused upload stores nothing and costs nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator

import httpx
import pytest
import uvicorn

from artifacts import archive
from competition import teams
from gateway.app import create_app
from gateway.http_limits import MAX_HEAD_BYTES, GuardedHttpToolsProtocol
from queue_schema import keys
from runtime import archiver
from runtime.spec import load
from tests.conftest import SUBMISSIONS
from tests.live_server import free_port, push_until_answered, read_all, served_gateway
from tests.waiting import wait_for

pytestmark = pytest.mark.system

MAX_ZIP_MB = 2
MIB = 1024 * 1024
UNKNOWN_ID = "s00000000aaaaaaaaaa"


@pytest.fixture(scope="module")
def gateway(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`bbo admin serve` in its own process, on the tests' Redis, with the demo rules and a 2 MiB zip cap."""
    with served_gateway(redis_server, tmp_path_factory.mktemp("abuse"), MAX_ZIP_MB) as served:
        yield served.url


@pytest.fixture(scope="module")
def good_zip() -> bytes:
    return archive.pack(SUBMISSIONS / "random_search", load("demo").submission)


@pytest.fixture()
def tokens(r) -> dict[str, str]:
    return {name: teams.add_team(r, name) for name in ("alpha", "beta")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(url: str, token: str, data: bytes, name: str = "sub.zip") -> httpx.Response:
    files = {"file": (name, data, "application/zip")}
    return httpx.post(f"{url}/v1/submissions", files=files, headers=auth(token), timeout=30)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code:
        assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


def stored(r) -> set[str]:
    """Every key of the store but the gateway's own bookkeeping (its archiver's lock and cursor, written
    by its tick every few seconds, and the warm hint it records as it starts, whatever the requests):
    what a request could have stored."""
    return set(r.keys("*")) - {keys.lock(archiver.ARCHIVER_LOCK), keys.archive_cursor(), keys.warm_hint()}


# -- tokens ----------------------------------------------------------------------------------------


def test_another_teams_ids_answer_exactly_like_unknown_ones(gateway, tokens, good_zip):
    created = upload(gateway, tokens["alpha"], good_zip)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    calls = {
        "status": lambda s: httpx.get(f"{gateway}/v1/submissions/{s}", headers=auth(tokens["beta"])),
        "stop": lambda s: httpx.post(f"{gateway}/v1/submissions/{s}/stop", headers=auth(tokens["beta"])),
        "select": lambda s: httpx.post(f"{gateway}/v1/submissions/{s}/select", headers=auth(tokens["beta"])),
    }
    for name, call in calls.items():
        foreign, unknown = call(sid), call(UNKNOWN_ID)
        assert foreign.status_code == unknown.status_code == 404, (name, foreign.text, unknown.text)
        assert foreign.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
        # The same words, the id aside: nothing tells an existing foreign id from a made-up one.
        assert foreign.json()["error"]["message"].replace(sid, "ID") == unknown.json()["error"][
            "message"
        ].replace(UNKNOWN_ID, "ID"), name
        assert "alpha" not in foreign.text
    assert httpx.get(f"{gateway}/v1/submissions", headers=auth(tokens["beta"])).json() == []
    # beta's stop changed nothing
    mine = httpx.get(f"{gateway}/v1/submissions/{sid}", headers=auth(tokens["alpha"]))
    assert mine.status_code == 200 and mine.json()["state"] == "queued"


def _raw_request(url: str, head: bytes) -> bytes:
    """Send `head` verbatim (a recorded request) and return the whole answer."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        return read_all(sock)


def _read_response(sock: socket.socket) -> bytes:
    """One whole answer with a Content-Length, however the network splits it; the connection stays."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole answer: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_rotated_revoked_and_disabled_tokens_are_refused_and_replays_fail(gateway, tokens, r):
    old = tokens["alpha"]
    recorded = (
        f"GET /v1/submissions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {old}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    assert _raw_request(gateway, recorded).startswith(b"HTTP/1.1 200 ")
    new = teams.rotate_token(r, "alpha")
    # The captured request, replayed byte for byte after the rotation, is refused.
    replayed = _raw_request(gateway, recorded)
    assert replayed.startswith(b"HTTP/1.1 401 ") and b"www-authenticate: bearer" in replayed.lower()
    for method, path in (("GET", "/v1/submissions"), ("GET", f"/v1/submissions/{UNKNOWN_ID}")):
        response = httpx.request(method, f"{gateway}{path}", headers=auth(old))
        assert "invalid, revoked or disabled token" in assert_error(response, 401, "unauthorized")
    assert httpx.get(f"{gateway}/v1/submissions", headers=auth(new)).status_code == 200

    teams.revoke_token(r, "alpha")
    assert "ask the organizers" in assert_error(
        httpx.get(f"{gateway}/v1/submissions", headers=auth(new)), 401, "unauthorized"
    )
    assert_error(httpx.get(f"{gateway}/v1/info", headers=auth(new)), 401, "unauthorized")

    teams.set_disabled(r, "beta", True)
    assert_error(httpx.get(f"{gateway}/v1/submissions", headers=auth(tokens["beta"])), 401, "unauthorized")
    assert_error(upload(gateway, tokens["beta"], b"PK"), 401, "unauthorized")
    assert r.zcard(keys.team_submissions("beta")) == 0
    teams.set_disabled(r, "beta", False)  # the kept token works again once enabled
    assert httpx.get(f"{gateway}/v1/submissions", headers=auth(tokens["beta"])).status_code == 200


def test_a_token_anywhere_but_the_authorization_header_is_not_accepted(gateway, tokens, good_zip, r):
    token = tokens["alpha"]
    for params in ({"token": token}, {"access_token": token}, {"authorization": f"Bearer {token}"}):
        assert_error(httpx.get(f"{gateway}/v1/submissions", params=params), 401, "unauthorized")
        response = httpx.post(
            f"{gateway}/v1/submissions", params=params, files={"file": ("a.zip", good_zip)}, timeout=30
        )
        assert_error(response, 401, "unauthorized")
    assert_error(httpx.get(f"{gateway}/v1/submissions", cookies={"token": token}), 401, "unauthorized")
    assert_error(httpx.get(f"{gateway}/v1/submissions", headers={"X-Api-Key": token}), 401, "unauthorized")
    # /v1/info takes a token but works without one: a token in the query does not make it personal.
    assert "team" not in httpx.get(f"{gateway}/v1/info", params={"token": token}).json()
    assert r.zcard(keys.team_submissions("alpha")) == 0


# -- oversize ----------------------------------------------------------------------------------------


def _chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield b"%x\r\n%s\r\n" % (len(part), part)
    yield b"0\r\n\r\n"


def _multipart_head(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()


def _json_of(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def test_an_upload_over_the_limit_is_413_and_the_gateway_stops_reading(gateway, tokens, r):
    before = stored(r)
    ctype = "multipart/form-data; boundary=abuse"
    head = (
        f"POST /v1/submissions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {tokens['alpha']}\r\n"
        f"Content-Type: {ctype}\r\n"
    )
    # A declared length over the limit is refused before a byte of the body is read.
    declared = (head + f"Content-Length: {50 * MIB}\r\n\r\n").encode()
    answer = _raw_request(gateway, declared)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert _json_of(answer)["error"]["code"] == "too_large"
    assert f"{MAX_ZIP_MB} MiB".encode() in answer

    # Without a length (chunked), the body is cut off while it streams in: 64 MiB offered.
    block = os.urandom(64 * 1024)
    body = _chunked([_multipart_head("abuse"), *(block for _ in range(1024))])
    sent, answer = push_until_answered(gateway, (head + "Transfer-Encoding: chunked\r\n\r\n").encode(), body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert _json_of(answer)["error"]["code"] == "too_large"
    # What the kernel's socket buffers swallow comes on top of the limit; far below the 64 MiB offered.
    assert sent < (MAX_ZIP_MB + 16) * MIB, f"the gateway read {sent / MIB:.1f} MiB before refusing"
    print(f"chunked oversize upload: refused after {sent / MIB:.1f} MiB sent (limit {MAX_ZIP_MB} MiB)")
    assert stored(r) == before
    quota = httpx.get(f"{gateway}/v1/info", headers=auth(tokens["alpha"])).json()["quota"]
    assert quota["remaining"] == load("demo").submission.daily_quota
    assert r.zcard(keys.team_submissions("alpha")) == 0


def _head_answer(url: str, request: bytes) -> bytes:
    """The answer to a request with an oversize head: an answer, or b"" when the server closed first."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        # Closed while we were still sending: the refusal may be lost with the reset.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return read_all(sock)


def test_huge_heads_are_refused_with_431_or_a_closed_connection(gateway, tokens):
    cases = {
        "64 KiB Authorization": b"Authorization: Bearer " + b"a" * (64 * 1024) + b"\r\n",
        "3000 headers": b"".join(b"X-Padding-%d: %s\r\n" % (i, b"v" * 20) for i in range(3000)),
        "one 8 MiB header": b"X-Big: " + b"b" * (8 * MIB) + b"\r\n",
    }
    for name, headers in cases.items():
        request = (
            b"GET /v1/submissions HTTP/1.1\r\nHost: gateway\r\n" + headers + b"Connection: close\r\n\r\n"
        )
        answer = _head_answer(gateway, request)
        if answer:  # else the connection was reset before the 431 could be read: also a refusal
            assert answer.startswith(b"HTTP/1.1 431 "), (name, answer[:200])
            assert _json_of(answer)["error"]["code"] == "request_too_large", name
    long_url = b"GET /v1/submissions/" + b"x" * (100 * 1024) + b" HTTP/1.1\r\nHost: gateway\r\n\r\n"
    assert _head_answer(gateway, long_url).startswith(b"HTTP/1.1 431 ")
    # Just under the cap is an ordinary request (here: an unknown token).
    fits = b"Authorization: Bearer " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n"
    answer = _head_answer(
        gateway, b"GET /v1/info HTTP/1.1\r\nHost: g\r\n" + fits + b"Connection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert httpx.get(f"{gateway}/v1/submissions", headers=auth(tokens["alpha"])).status_code == 200


def test_huge_bodies_to_other_endpoints_are_4xx_not_5xx(gateway, tokens, good_zip, r):
    sid = upload(gateway, tokens["alpha"], good_zip).json()["id"]
    huge = json.dumps({"padding": "x" * (8 * MIB), "nested": [[[[]]]] * 1000}).encode()
    headers = {**auth(tokens["alpha"]), "Content-Type": "application/json"}
    before = stored(r)
    attempts = {
        "select": ("POST", f"/v1/submissions/{sid}/select", 409),  # not scored yet: a state refusal
        "list": ("GET", "/v1/submissions", 200),
        "unknown stop": ("POST", f"/v1/submissions/{UNKNOWN_ID}/stop", 404),
        "leaderboard": ("POST", "/v1/leaderboard", 405),
        "upload as json": ("POST", "/v1/submissions", 415),
        "health": ("PUT", "/health", 405),
    }
    for name, (method, path, expected) in attempts.items():
        response = httpx.request(method, f"{gateway}{path}", content=huge, headers=headers, timeout=30)
        assert response.status_code < 500, (name, response.status_code, response.text)
        assert response.status_code == expected, (name, response.text)
        if expected >= 400:
            assert set(response.json()) == {"error"}, name
    assert stored(r) == before
    still = httpx.get(f"{gateway}/v1/submissions/{sid}", headers=auth(tokens["alpha"]))
    assert still.json()["state"] == "queued"


# -- slow clients --------------------------------------------------------------------------------------


def _open_slow_clients(url: str, count: int) -> list[socket.socket]:
    port = int(url.rsplit(":", 1)[1])
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n")
        clients.append(sock)
    return clients


def test_fifty_slow_loris_clients_do_not_block_others(gateway, tokens):
    clients = _open_slow_clients(gateway, 50)
    try:
        latencies = []
        trickle = b"X-Slow: " + b"z" * 40
        with httpx.Client(timeout=10) as client:
            for second in range(4):
                for sock in clients:  # one byte per client per second, never the end of the head
                    sock.sendall(trickle[second : second + 1])
                started = time.monotonic()
                response = client.get(f"{gateway}/v1/submissions", headers=auth(tokens["alpha"]))
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200
                time.sleep(max(0.0, 1.0 - latencies[-1]))
        print(f"normal requests beside 50 slow-loris clients: {max(latencies) * 1000:.0f} ms at worst")
        assert max(latencies) < 3.0, latencies  # milliseconds in practice; a bound that cannot flake
    finally:
        for sock in clients:
            sock.close()


def test_an_idle_kept_alive_connection_is_closed_by_the_keep_alive_timeout(gateway):
    port = int(gateway.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        first = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in first.lower()
        answered = time.monotonic()
        rest = read_all(sock)  # blocks until the server closes the idle connection
        idle = time.monotonic() - answered
    assert rest == b""
    assert 2.0 < idle < 20.0, f"closed after {idle:.1f} s idle (uvicorn's keep-alive timeout is 5 s)"


class _QuickDeadline(GuardedHttpToolsProtocol):
    head_timeout_s = 1.0


@contextlib.contextmanager
def _serving_with_quick_deadline(redis_url: str) -> Iterator[int]:
    """The gateway's protocol with a 1 s head deadline, so that a test can watch it fire."""
    spec = load("demo")
    app = create_app(spec, "auto", redis_url=redis_url)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", http=_QuickDeadline)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "uvicorn to start")
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_head_not_complete_in_time_is_408_and_the_connection_closed(redis_server, r):
    with _serving_with_quick_deadline(redis_server) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        dribbling = socket.create_connection(("127.0.0.1", port))
        kept_alive = socket.create_connection(("127.0.0.1", port))
        with silent, dribbling, kept_alive:
            kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
            assert _read_response(kept_alive).startswith(b"HTTP/1.1 200 ")
            kept_alive.sendall(b"GET /health HTTP/1.1\r\n")  # a second request that never ends
            dribbling.sendall(b"G")
            for byte in b"ET /health HTTP/1.1\r\n":
                time.sleep(0.1)
                with contextlib.suppress(OSError):
                    dribbling.sendall(bytes([byte]))
            for name, sock in (("silent", silent), ("dribbling", dribbling), ("kept alive", kept_alive)):
                sock.settimeout(15)  # the deadline is 1 s: a timeout here is the failure
                answer = read_all(sock)
                assert answer.startswith(b"HTTP/1.1 408 "), (name, answer)
                assert _json_of(answer)["error"]["code"] == "request_timeout", name


def test_an_upload_body_that_stalls_is_408_and_nothing_is_stored(redis_server, r, tokens, monkeypatch):
    """Head sent, then the body trickles and stops: the gateway gives up after BODY_IDLE_S (1 s here)."""
    import gateway.uploads

    monkeypatch.setattr(gateway.uploads, "BODY_IDLE_S", 1.0)
    before = stored(r)
    body = b'--abuse\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK'
    head = (
        f"POST /v1/submissions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {tokens['alpha']}\r\n"
        "Content-Type: multipart/form-data; boundary=abuse\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with (
        _serving_with_quick_deadline(redis_server) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(head + body)  # a start, then nothing more
        sock.settimeout(15)
        started = time.monotonic()
        answer = read_all(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    error = _json_of(answer)["error"]
    assert error["code"] == "request_timeout" and "upload arrived too slowly" in error["message"]
    assert waited < 10
    assert stored(r) == before


@pytest.mark.slow
def test_the_served_gateway_closes_a_slow_loris_after_its_head_deadline(gateway):
    (sock,) = _open_slow_clients(gateway, 1)
    with sock:
        started = time.monotonic()
        sock.settimeout(60)
        answer = read_all(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 10 < waited < 40, waited


# -- hostile archives ------------------------------------------------------------------------------------


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _with_symlink() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("optimizer.py", "x = 1\n")
        link = zipfile.ZipInfo("data.txt")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def _hostile_archives(good: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (archive, words the refusal must contain)."""
    optimizer = b"x = 1\n"
    many = {f"f{i}": b"" for i in range(10_000)}
    return {
        "not a zip": (b"this is not an archive at all" * 10, "not a readable zip"),
        "zip bomb": (
            _zip({"optimizer.py": optimizer, "zeros.bin": bytes(50 * MIB)}),
            "suspicious compression ratio",
        ),
        "path traversal": (_zip({"optimizer.py": optimizer, "../../evil.py": b"x"}), "outside the archive"),
        "absolute path": (_zip({"optimizer.py": optimizer, "/etc/cron.d/evil": b"x"}), "absolute path"),
        "symlink": (_with_symlink(), "link or device"),
        "10k files": (_zip({"optimizer.py": optimizer, **many}, zipfile.ZIP_STORED), "the limit is 500"),
        "truncated": (good[: len(good) // 2], "not a readable zip"),
        "empty body": (b"", "not a readable zip"),
    }


def test_hostile_archives_are_refused_with_their_reason_and_nothing_is_stored(gateway, tokens, good_zip, r):
    quota_before = httpx.get(f"{gateway}/v1/info", headers=auth(tokens["alpha"])).json()["quota"]
    before = stored(r)
    for name, (hostile, reason) in _hostile_archives(good_zip).items():
        assert len(hostile) < MAX_ZIP_MB * MIB, name
        message = assert_error(upload(gateway, tokens["alpha"], hostile), 422, "invalid_submission")
        assert reason in message, (name, message)
        assert "\n" not in message, name
    assert stored(r) == before
    assert not r.keys(keys.artifact("*")) and r.zcard(keys.team_submissions("alpha")) == 0
    after = httpx.get(f"{gateway}/v1/info", headers=auth(tokens["alpha"])).json()["quota"]
    assert after == quota_before
    assert upload(gateway, tokens["alpha"], good_zip).status_code == 201  # and the team can still submit


def test_an_archive_whose_optimizer_is_a_folder_is_refused(gateway, tokens, r):
    hostile = _zip({"optimizer.py/": b"", "optimizer.py/main.py": b"x = 1\n"})
    before = stored(r)
    message = assert_error(upload(gateway, tokens["alpha"], hostile), 422, "invalid_submission")
    assert "optimizer.py" in message
    assert stored(r) == before


# -- fuzzed values --------------------------------------------------------------------------------------


ABUSIVE_IDS = [
    "../../etc/passwd",
    "%2e%2e%2f%2e%2e%2f",
    "%00",
    "\u202eevil\u00ff",
    "' OR 1=1 --",
    "*",
    "s" + "9" * 60,
    "x" * 30_000,
    "{sid}",
    "bbo:sub:*",
]


def test_abusive_values_in_ids_and_queries_get_4xx_never_5xx(gateway, tokens, r):
    headers = auth(tokens["alpha"])
    answers = []
    with httpx.Client(base_url=gateway, headers=headers, timeout=30) as client:
        for value in ABUSIVE_IDS:
            answers.append(client.get(f"/v1/submissions/{value}"))
            answers.append(client.post(f"/v1/submissions/{value}/stop"))
            answers.append(client.post(f"/v1/submissions/{value}/select"))
        for limit in ("1e309", "NaN", "-0", "99999999999999999999999", "0x10", "", "1;DROP"):
            answers.append(client.get("/v1/submissions", params={"limit": limit}))
        for phase in ("final\x00", "../feedback", "\u00e9" * 40, "x" * 41, "feedback" * 10):
            answers.append(client.get("/v1/leaderboard", params={"phase": phase}))
            answers.append(
                client.post("/v1/submissions", params={"phase": phase}, files={"file": ("a", b"")})
            )
    for response in answers:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
        assert set(response.json()) == {"error"}, response.text
    assert r.zcard(keys.team_submissions("alpha")) == 0
    assert r.keys(keys.submission("*")) == []


def test_schemathesis_negative_cases_against_the_served_gateway_get_no_5xx(gateway, tokens):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{gateway}/openapi.json")
    headers = auth(tokens["alpha"])
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=8,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        def check(case) -> None:
            case.call_and_validate(base_url=gateway, headers=headers, checks=[not_a_server_error], timeout=30)

        with contextlib.suppress(Unsatisfiable):  # an operation without inputs has no invalid request
            check()
        count += 1
    assert count >= 8
