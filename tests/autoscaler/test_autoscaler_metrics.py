"""The autoscaler's status as people and Prometheus see it: a real daemon steps with a real LocalProvider
(an empty queue, or a cap of 0 so no process starts), then the gateway's /metrics carries each fleet's
bbo_autoscaler_* gauges and `bbo admin autoscaler status` prints the same figures."""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings

import pytest
from typer.testing import CliRunner

from artifacts import archive
from autoscaler.daemon import Daemon, read_status
from autoscaler.policy import PolicyConfig
from autoscaler.providers.local import LocalProvider
from cli.main import app as bbo
from competition.submit import create_submission
from gateway.app import create_app
from queue_schema import keys
from runtime import dispatch, recovery
from runtime.spec import load
from tests.conftest import SUBMISSIONS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
STATES = ("booting", "idle", "busy", "draining")


@pytest.fixture(autouse=True)
def _no_leftover_reaper_lock(r):
    r.delete(keys.lock(recovery.REAPER_LOCK))


@pytest.fixture()
def provider_for(r, redis_server, state_dir, tmp_path):
    """LocalProvider on a fleet of this test's own; it must start no process (checked afterwards)."""
    env = {**os.environ, "BBO_REDIS_URL": redis_server, "BBO_STATE_DIR": str(state_dir)}
    made: list[LocalProvider] = []

    def make(cap: int) -> LocalProvider:
        fleet = f"m{uuid.uuid4().hex[:6]}"
        provider = LocalProvider(r, fleet=fleet, cap=cap, env=env, log_dir=tmp_path / "logs")
        made.append(provider)
        return provider

    yield make
    for provider in made:
        assert provider.list() == []


def metrics(r) -> dict[str, float]:
    client = TestClient(create_app(load("demo"), "auto"))
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def status_json(fleet: str) -> dict:
    result = CliRunner().invoke(bbo, ["admin", "autoscaler", "status", "--fleet", fleet, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sample(name: str, fleet: str, **labels: str) -> str:
    """A sample's name with its labels, as /metrics writes it."""
    inner = ",".join(f'{key}="{value}"' for key, value in {"fleet": fleet, **labels}.items())
    return f"bbo_autoscaler_{name}{{{inner}}}"


def assert_gauges_match(samples: dict[str, float], fleet: str, status: dict) -> None:
    for state in STATES:
        assert samples[sample("workers", fleet, state=state)] == status["workers"][state]
    assert samples[sample("machine_hours", fleet)] == pytest.approx(status["machine_hours"])
    # The timestamp in full, not rounded to a few significant digits.
    assert samples[sample("last_step_timestamp_seconds", fleet)] == pytest.approx(status["ts"], abs=1e-3)
    assert samples[sample("held", fleet)] == int(status["held"])
    assert samples[sample("provider_error", fleet)] == int(bool(status["error"]))
    assert samples[sample("cap", fleet)] == status["cap"] > 0


def submit(r) -> None:
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    create_submission(r, team="gauges", data=data, spec=spec, phase="feedback", backend="process")


def test_metrics_and_status_show_each_fleets_last_step(r, provider_for):
    assert not any(name.startswith("bbo_autoscaler_") and "{" in name for name in metrics(r))

    # An idle fleet: an empty queue, nothing to start.
    idle = provider_for(cap=2)
    Daemon(r, idle, PolicyConfig(max_workers=2), fleet=idle.fleet).step()
    # A refused fleet: one job queued, but the provider's cap is 0, so creating a worker fails.
    submit(r)
    refused = provider_for(cap=0)
    daemon = Daemon(r, refused, PolicyConfig(max_workers=1), fleet=refused.fleet)
    first = daemon.step()
    assert first.decision.add == 1 and first.created == [] and first.error

    samples = metrics(r)
    idle_status = read_status(r, idle.fleet)
    assert idle_status["workers"] == dict.fromkeys(STATES, 0) and not idle_status["error"]
    assert_gauges_match(samples, idle.fleet, idle_status)
    assert_gauges_match(samples, refused.fleet, read_status(r, refused.fleet))
    assert samples[sample("provider_error", refused.fleet)] == 1
    assert samples[sample("provider_error", idle.fleet)] == 0
    assert samples[sample("held", refused.fleet)] == 0
    assert status_json(idle.fleet) == idle_status
    assert status_json(refused.fleet) == read_status(r, refused.fleet)

    # The next step holds (it backs off after the error) and reports no new error.
    second = daemon.step()
    assert second.decision.held and second.error is None
    samples = metrics(r)
    status = status_json(refused.fleet)
    assert status == read_status(r, refused.fleet)
    assert status["queued"] == dispatch.queue_depths(r)["queued"] > 0
    assert_gauges_match(samples, refused.fleet, status)
    assert samples[sample("held", refused.fleet)] == 1
    assert samples[sample("provider_error", refused.fleet)] == 0


def test_status_prints_a_few_lines_and_refuses_an_unknown_fleet(r, provider_for):
    provider = provider_for(cap=0)
    submit(r)
    Daemon(r, provider, PolicyConfig(max_workers=1), fleet=provider.fleet).step()

    result = CliRunner().invoke(bbo, ["admin", "autoscaler", "status", "--fleet", provider.fleet])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert provider.fleet in text and f"{dispatch.queue_depths(r)['queued']} queued, 0 running" in text
    assert "0 booting, 0 idle, 0 busy, 0 draining" in text
    assert "provider error" in text and "cap of 0" in text
    assert len(text.splitlines()) <= 8

    unknown = CliRunner().invoke(bbo, ["admin", "autoscaler", "status", "--fleet", "nosuchfleet", "--json"])
    assert unknown.exit_code == 1 and unknown.stdout == ""
    assert "nosuchfleet" in unknown.stderr and provider.fleet in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
