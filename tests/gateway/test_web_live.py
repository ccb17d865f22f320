"""The web pages' live updates (gateway/web/live.py): server-sent events from a real uvicorn server on a
real Redis, read by httpx as a browser's EventSource would; the hub's coalescing and cache on their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from competition import release, sessions, teams
from gateway.app import create_app
from gateway.web.hub import LiveHub
from queue_schema import keys
from queue_schema.connection import connect
from queue_schema.payloads import Event
from queue_schema.records import add_event, transition
from queue_schema.states import SubmissionState
from runtime.redis_server import EmbeddedRedis
from runtime.supervisor import free_port
from tests.console_helpers import demo_spec, record
from tests.live_server import ROOT, answers, serving
from tests.waiting import wait_for

FOREIGN_SID = "s0000000bbbbbbbbb1"
UNKNOWN_SID = "s0000000zzzzzzzzz9"


@pytest.fixture()
def gateway(r, redis_server) -> Iterator[tuple[str, LiveHub, Any]]:
    app = create_app("demo", "auto", redis_url=redis_server)
    hub = app.state.live_hub
    try:
        with serving(app) as url:  # the app's lifespan starts its hub
            assert hub.ready.wait(10), "the hub did not reach the event stream"
            yield url, hub, app
            hub.stop()  # ends any stream a failed test left open, so the server can stop
    finally:
        hub.stop()


@pytest.fixture()
def signed_in(r) -> dict[str, Any]:
    """Teams alpha and beta, a queued submission each, and a session cookie for alpha."""
    tokens = {name: teams.add_team(r, name) for name in ("alpha", "beta")}
    spec = demo_spec()
    now = time.time()
    mine = record(r, "s0000000aaaaaaaaa1", "alpha", now - 10, spec).id
    record(r, FOREIGN_SID, "beta", now - 5, spec)
    opened = sessions.open_session(r, tokens["alpha"])
    assert opened is not None
    return {"cookie": {"Cookie": f"bbo_session={opened[0]}"}, "sid": mine, "tokens": tokens, "spec": spec}


class Sse:
    """An open event stream: a task reads it into a queue of (event, data) and None at its end."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self.comments: list[str] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        kind, data = "message", []
        try:
            async for line in self.response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    await self.queue.put((kind, json.loads("\n".join(data))))
                    kind, data = "message", []
        except httpx.HTTPError:
            pass
        await self.queue.put(None)

    async def next(self, kind: str | None = None, timeout: float = 2.0) -> tuple[str, Any]:
        """The next event (of `kind`, skipping others) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            item = await asyncio.wait_for(self.queue.get(), max(0.01, deadline - time.monotonic()))
            assert item is not None, "the stream ended"
            if kind is None or item[0] == kind:
                return item

    async def ended(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (item := await asyncio.wait_for(self.queue.get(), deadline - time.monotonic())) is not None:
            pass
        del item


@contextlib.asynccontextmanager
async def sse(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Sse]:
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5)) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream", **(headers or {})}) as response,
    ):
        assert response.status_code == 200, (response.status_code, await response.aread())
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        stream = Sse(response)
        try:
            yield stream
        finally:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_a_study_and_state_changes_reach_the_submission_page(gateway, signed_in, r) -> None:
    url, _, _ = gateway
    sid = signed_in["sid"]

    async def scenario() -> None:
        async with sse(f"{url}/live/submissions/{sid}", signed_in["cookie"]) as stream:
            kind, view = await stream.next()
            assert kind == "submission" and view["id"] == sid and view["state"] == "queued"
            started = time.monotonic()
            transition(r, sid, SubmissionState.RUNNING)
            _, view = await stream.next("submission")
            assert view["state"] == "running" and time.monotonic() - started < 2
            add_event(r, "study", sid, problem="DT-iris-acc", study=0, state="complete", version=1)
            assert (await stream.next("refresh"))[1] == {"region": "detail"}
            # A burst of studies: at most one refresh a second.
            for index in range(1, 30):
                add_event(r, "study", sid, problem="DT-iris-acc", study=index, state="complete", version=1)
            await stream.next("refresh", timeout=3)
            with pytest.raises(TimeoutError):
                await stream.next("refresh", timeout=0.7)
            transition(r, sid, SubmissionState.SCORED, score=71.5)
            _, view = await stream.next("submission")
            assert view["state"] == "scored" and view["score"] == 71.5
            assert (await stream.next("refresh", timeout=3))[1] == {"region": "detail"}
            await stream.ended(3)  # nothing more will happen to it

    run(scenario())
    # Ended, it is not followed again: 204 stops EventSource's reconnecting.
    ended = httpx.get(f"{url}/live/submissions/{sid}", headers=signed_in["cookie"])
    assert ended.status_code == 204


def test_the_team_stream_follows_its_submissions_and_new_uploads(gateway, signed_in, r) -> None:
    url, _, _ = gateway
    sid = signed_in["sid"]

    async def scenario() -> None:
        async with sse(f"{url}/live/team", signed_in["cookie"]) as stream:
            first = await stream.next("submission")  # the queued one, as it is now
            assert first[1]["id"] == sid
            transition(r, FOREIGN_SID, SubmissionState.RUNNING)  # beta's: never shown to alpha
            transition(r, sid, SubmissionState.RUNNING)
            _, view = await stream.next("submission")
            assert view["id"] == sid and view["state"] == "running"
            new = record(r, "s0000000aaaaaaaaa2", "alpha", time.time(), signed_in["spec"]).id
            assert (await stream.next("refresh"))[1] == {"region": "submissions"}
            transition(r, new, SubmissionState.RUNNING)  # followed from its upload on
            _, view = await stream.next("submission")
            assert view["id"] == new and view["state"] == "running"

    run(scenario())


def test_the_public_board_refreshes_when_a_score_lands(gateway, signed_in, r) -> None:
    url, _, _ = gateway
    sid = signed_in["sid"]

    async def scenario() -> None:
        async with sse(f"{url}/live/leaderboard?phase=feedback") as stream:
            transition(r, sid, SubmissionState.RUNNING)  # not a board change
            add_event(r, "study", sid, problem="DT-iris-acc", study=0, state="complete", version=1)
            with pytest.raises(TimeoutError):
                await stream.next("refresh", timeout=1)
            transition(r, sid, SubmissionState.SCORED, score=80.0)
            assert (await stream.next("refresh"))[1] == {"region": "board"}

    run(scenario())
    assert httpx.get(f"{url}/live/leaderboard?phase=nope").status_code == 404


def test_an_open_final_board_refreshes_when_the_organizers_release_it(gateway, r) -> None:
    url, _, app = gateway

    async def scenario() -> None:
        async with sse(f"{url}/live/leaderboard?phase=final") as stream:
            release.release(r, app.state.spec.name, actor="tester")
            assert (await stream.next("refresh"))[1] == {"region": "board"}

    run(scenario())


def test_a_foreign_or_unknown_submission_is_one_404_and_no_session_is_401(gateway, signed_in) -> None:
    url, _, _ = gateway
    foreign = httpx.get(f"{url}/live/submissions/{FOREIGN_SID}", headers=signed_in["cookie"])
    unknown = httpx.get(f"{url}/live/submissions/{UNKNOWN_SID}", headers=signed_in["cookie"])
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.text == unknown.text and foreign.headers["content-type"] == unknown.headers["content-type"]
    for path in ("/live/team", f"/live/submissions/{signed_in['sid']}"):
        for headers in ({}, {"Cookie": "bbo_session=not-a-session"}):
            refused = httpx.get(f"{url}{path}", headers=headers)
            assert refused.status_code == 401, path
            assert "event-stream" not in refused.headers["content-type"] and refused.text.strip()


def test_revoking_the_token_ends_an_open_stream(gateway, signed_in, r) -> None:
    url, _, _ = gateway

    async def scenario() -> float:
        async with sse(f"{url}/live/team", signed_in["cookie"]) as stream:
            await stream.next("submission")
            started = time.monotonic()
            teams.revoke_token(r, "alpha")
            await stream.ended(6)
            return time.monotonic() - started

    assert run(scenario()) < 6
    assert httpx.get(f"{url}/live/team", headers=signed_in["cookie"]).status_code == 401


def test_streams_are_capped_per_process_and_per_session(gateway, signed_in) -> None:
    url, _, app = gateway

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(8):
                await stack.enter_async_context(sse(f"{url}/live/team", signed_in["cookie"]))
            async with httpx.AsyncClient() as client:
                ninth = await client.get(f"{url}/live/team", headers=signed_in["cookie"])
                assert ninth.status_code == 503 and int(ninth.headers["retry-after"]) > 0
                # The public board counts against the process's cap only.
                app.state.web_max_streams = 9
                await stack.enter_async_context(sse(f"{url}/live/leaderboard"))
                full = await client.get(f"{url}/live/leaderboard")
                assert full.status_code == 503 and "retry-after" in full.headers
        # Closed streams give their slots back.
        async with sse(f"{url}/live/team", signed_in["cookie"]) as stream:
            await stream.next("submission")

    run(scenario())


def test_the_hub_survives_the_store_dropping_its_connection(gateway, signed_in, r) -> None:
    url, hub, _ = gateway
    sid = signed_in["sid"]

    async def scenario() -> None:
        async with sse(f"{url}/live/submissions/{sid}", signed_in["cookie"]) as stream:
            await stream.next("submission")
            events_read = hub.events_read
            r.client_kill_filter(_type="normal")  # every client's connection, the hub's among them
            await asyncio.sleep(0.3)
            transition(r, sid, SubmissionState.RUNNING)
            _, view = await stream.next("submission", timeout=5)
            assert view["state"] == "running"

            assert hub.events_read > events_read

    run(scenario())
    assert hub.running


def test_the_hub_follows_a_restarted_store() -> None:
    """The store away for a while (redis-py's own retries give up): the hub keeps trying, and follows the
    stream again when the store is back, from where it was."""
    folder = Path(tempfile.mkdtemp(prefix="bbo-live-"))
    server = EmbeddedRedis(folder, folder / "r.sock")
    server.start()
    hub = LiveHub(server.url)
    try:
        hub.start()
        assert hub.ready.wait(10)

        async def scenario() -> None:
            with hub.subscribe(["sub:s1"]) as subscription:
                assert server.process is not None
                server.process.kill()
                server.process.wait(10)
                deadline = time.monotonic() + 20
                while hub.reconnects == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert hub.reconnects > 0 and hub.running
                server.start()
                client = connect(server.url)
                add_event(client, "state", "s1", **{"from": "queued", "to": "running"})
                deadline = time.monotonic() + 15
                fired: set[str] = set()
                while not fired and time.monotonic() < deadline:
                    fired = await subscription.wait(deadline - time.monotonic())
                assert fired == {"sub:s1"}

        asyncio.run(scenario())
    finally:
        hub.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.system
def test_a_served_gateway_shuts_down_promptly_with_streams_open(redis_server, r, tmp_path) -> None:
    """uvicorn waits for every open response before it exits, and an event stream never ends by itself:
    the hub ends them when the server's shutdown begins (SIGTERM), so a deploy does not hang on pages."""
    port = free_port()
    log = tmp_path / "gateway.log"
    env = {**os.environ, "BBO_REDIS_URL": redis_server, "BBO_SPEC": "demo", "BBO_BACKEND": "auto"}
    # The app as `bbo admin serve` runs it.
    command = [sys.executable, "-m", "uvicorn", "gateway.app:app_from_env", "--factory", "--port", str(port)]
    command += ["--loop", "uvloop", "--http", "gateway.http_limits:GuardedHttpToolsProtocol"]
    with log.open("wb") as out:
        gateway = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url), 30, "the gateway to answer /health", log, alive=gateway)

        async def scenario() -> float:
            async with sse(f"{url}/live/leaderboard") as stream:
                await asyncio.sleep(0.3)  # the stream is open: its first line has been sent
                started = time.monotonic()
                gateway.send_signal(signal.SIGTERM)
                await stream.ended(10)
                return time.monotonic() - started

        assert run(scenario()) < 3
        assert gateway.wait(10) in (0, -signal.SIGTERM)  # uvicorn raises the signal again once it is done
        assert b"Traceback" not in log.read_bytes(), log.read_text()[-3000:]
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)


# -- the hub on its own -------------------------------------------------------------------------------


def _entry(kind: str, sid: str | None = None, **data: Any) -> tuple[str, dict[str, str]]:
    return "0-1", {"json": Event(kind=kind, submission_id=sid, data=data).to_json()}


def test_a_burst_of_events_is_one_wake_up(r) -> None:
    hub = LiveHub(r)

    async def scenario() -> None:
        with hub.subscribe(["sub:s1", "board"]) as subscription:
            burst = [_entry("study", "s1", problem="p", study=i) for i in range(1000)]
            burst += [_entry("state", "s2", **{"from": "running", "to": "scored"})]
            thread = threading.Thread(target=hub._dispatch, args=(burst,))
            thread.start()
            thread.join()
            assert await subscription.wait(1) == {"sub:s1", "board"}
            assert await subscription.wait(0.2) == set()  # one wake-up for the whole burst
        assert hub.subscribers == 0 and not hub._topics

    asyncio.run(scenario())


def test_many_readers_of_one_submission_read_the_store_once_per_change(r, signed_in) -> None:
    hub = LiveHub(r, cache_s=5.0)
    sid = signed_in["sid"]

    def hgetalls() -> int:
        return int(r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))

    def readers() -> list[Any]:
        found: list[Any] = []
        threads = [threading.Thread(target=lambda: found.append(hub.submission(sid))) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return found

    before = hgetalls()
    found = readers()
    assert len(found) == 50 and {sub.state for sub in found} == {SubmissionState.QUEUED}
    assert hgetalls() - before == 1
    transition(r, sid, SubmissionState.RUNNING)
    hub._dispatch([_entry("state", sid, **{"from": "queued", "to": "running"})])
    before = hgetalls()
    assert {sub.state for sub in readers()} == {SubmissionState.RUNNING}  # the change is read, once
    assert hgetalls() - before == 1
    assert r.exists(keys.submission(sid))


# -- live.js in a real browser --------------------------------------------------------------------------


CHROMIUM = os.environ.get("BBO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.system
@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}")
def test_live_js_keeps_the_pages_live_in_a_browser(gateway, signed_in, r) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, hub, _ = gateway
    sid = signed_in["sid"]
    session_id = signed_in["cookie"]["Cookie"].split("=", 1)[1]
    args = [*(["--no-sandbox"] if os.geteuid() == 0 else []), "--disable-dev-shm-usage"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            context = browser.new_context(base_url=url)
            context.add_cookies([{"name": "bbo_session", "value": session_id, "url": url}])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Not the console's "failed to load" lines: the browser's own /favicon.ico is not served.
            page.on(
                "response",
                lambda a: errors.append(a.url) if a.status >= 400 and "favicon" not in a.url else None,
            )
            expect.set_options(timeout=10_000)

            page.goto(f"/team/submissions/{sid}")
            wait_for(lambda: hub.subscribers == 1, 10, "the page's event stream")
            holder = page.locator(f'[data-sub="{sid}"]')
            transition(r, sid, SubmissionState.RUNNING)
            expect(holder.locator('[data-field="state"]')).to_have_text("running")
            expect(holder).to_have_attribute("data-state", "running")
            r.hset(keys.submission(sid), "studies_done", "3")
            with page.expect_response(lambda answer: answer.url.endswith(f"/team/submissions/{sid}/detail")):
                add_event(r, "study", sid, problem="DT-iris-acc", study=0, state="complete", version=1)
            expect(holder.locator('[data-field="progress-text"]')).to_contain_text("3 / ")
            assert holder.locator('progress[data-field="progress"]').evaluate("bar => bar.value") == 3
            transition(r, sid, SubmissionState.SCORED, score=71.5)
            expect(holder.locator('[data-field="score"]')).to_have_text("71.500")

            page.goto("/team")
            wait_for(lambda: hub.subscribers == 1, 10, "the team page's event stream")
            new = record(r, "s0000000aaaaaaaaa3", "alpha", time.time(), signed_in["spec"]).id
            row = page.locator(f'tr[data-sub="{new}"]')
            expect(row).to_have_count(1)  # the list was refreshed with the new upload's row
            transition(r, new, SubmissionState.RUNNING)
            expect(row.locator('[data-field="state"]')).to_have_text("running")
            assert not errors, errors
        finally:
            browser.close()
