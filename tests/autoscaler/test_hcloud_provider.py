"""The `hcloud` provider against a faithful fake of the Hetzner Cloud API served over real HTTP.

Contract: create/list/drain/delete round trip with names and labels, pagination, the cap, the project's
quota mid-batch, rate limits and outages as one-line errors that never carry the token, a restarted
provider finding its servers, the warm drain through RQ's shutdown command (received by a real worker,
which exits), and the daemon creating servers for queued jobs and deleting servers that never join.
The cloud-init is parsed as YAML: the Redis URL lives only in the root-only 0600 environment file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from artifacts import archive
from autoscaler.daemon import DRAIN_EXIT_GRACE_S, Daemon
from autoscaler.policy import PolicyConfig
from autoscaler.providers import CapacityExceeded, ProviderError, make
from autoscaler.providers.cloud_init import ENV_FILE, user_data
from autoscaler.providers.hcloud import HcloudProvider, store_hash
from competition.submit import create_submission
from queue_schema import keys
from runtime import recovery
from runtime.spec import load
from tests.conftest import SUBMISSIONS
from tests.fake_hcloud import FakeHcloud, make_app
from tests.live_server import serving
from tests.waiting import wait_for

TOKEN = "hc-test-token-9f8e7d6c5b4a"
WORKER_URL = "rediss://:s3cret-pw@redis.example.org:6380/0"
WHEEL = "https://files.example.org/bbo_arena-0.1.0-py3-none-any.whl#sha256=00ff"


@pytest.fixture()
def fake():
    return FakeHcloud(token=TOKEN)


@pytest.fixture()
def api(fake):
    with serving(make_app(fake)) as url:
        yield f"{url}/v1"


@pytest.fixture()
def fleet() -> str:
    return f"t{uuid.uuid4().hex[:6]}"


@pytest.fixture()
def make_provider(r, api, fleet):
    made: list[HcloudProvider] = []

    def build(**options) -> HcloudProvider:
        env = {"HCLOUD_TOKEN": TOKEN, "BBO_REDIS_URL": WORKER_URL, **options.pop("env", {})}
        options = {"fleet": fleet, "cap": 3, "env": env, "wheel_url": WHEEL, "api_url": api, **options}
        provider = HcloudProvider(r, **options)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        provider.close()


def ours(fake: FakeHcloud, fleet: str) -> dict[str, dict]:
    return {s["name"]: s for s in fake.servers.values() if s["labels"].get("bbo-fleet") == fleet}


def assert_no_token_leak(fake: FakeHcloud, *texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
    for request in fake.requests:
        assert TOKEN not in json.dumps([request.path, request.query, request.body])


# -- the contract -------------------------------------------------------------------------------------


def test_create_list_drain_delete_round_trip(make_provider, fake, fleet, r):
    provider = make_provider()
    before = time.time()
    names = provider.create(2)
    assert names == [f"{fleet}-1", f"{fleet}-2"]

    servers = ours(fake, fleet)
    assert set(servers) == set(names)
    for name in names:
        server = servers[name]
        assert server["labels"] == {
            "bbo-fleet": fleet,
            "bbo-machine": name,
            "bbo-store": store_hash(WORKER_URL),
        }
        assert f"--name {name}" in fake.user_data[server["id"]]
    post = next(req for req in fake.requests if req.method == "POST")
    assert post.body["server_type"] == "cpx31" and post.body["image"] == "debian-12"
    assert "networks" not in post.body and "ssh_keys" not in post.body and "location" not in post.body
    assert post.authorization == f"Bearer {TOKEN}"

    machines = provider.list()
    assert [m.name for m in machines] == names
    assert all(m.state == "running" and before - 5 <= m.created_at <= time.time() + 5 for m in machines)

    provider.drain(names[0])
    assert fake.by_name(names[0])["labels"]["bbo-state"] == "draining"
    assert fake.by_name(names[0])["labels"]["bbo-machine"] == names[0], "PUT keeps the other labels"
    assert {m.name: m.state for m in provider.list()} == {names[0]: "draining", names[1]: "running"}

    provider.delete(names[0])
    assert set(ours(fake, fleet)) == {names[1]}
    provider.delete(names[0])  # gone: not an error
    # Deleted behind the provider's back after it listed it: the API's 404 is fine too.
    provider.list()
    fake.servers.pop(fake.by_name(names[1])["id"])
    provider.delete(names[1])
    assert provider.list() == []
    assert_no_token_leak(fake)


def test_list_follows_pagination_and_keeps_to_its_fleet_and_store(make_provider, fake, fleet):
    store = store_hash(WORKER_URL)
    for i in range(1, 63):
        fake.add_server(
            f"{fleet}-{i}", {"bbo-fleet": fleet, "bbo-machine": f"{fleet}-{i}", "bbo-store": store}
        )
    fake.add_server("other-1", {"bbo-fleet": "other", "bbo-machine": "other-1", "bbo-store": store})
    fake.add_server(f"{fleet}-x", {"bbo-fleet": fleet, "bbo-machine": f"{fleet}-x", "bbo-store": "0" * 12})
    fake.add_server("unlabelled", {})

    machines = make_provider(cap=100).list()
    assert {m.name for m in machines} == {f"{fleet}-{i}" for i in range(1, 63)}
    pages = [req.query for req in fake.requests if req.path == "/v1/servers" and req.method == "GET"]
    assert [q["page"] for q in pages] == ["1", "2"] and all(q["per_page"] == "50" for q in pages)
    assert pages[0]["label_selector"] == f"bbo-fleet={fleet},bbo-store={store}"


def test_the_cap_stops_creation_and_reports_what_was_made(make_provider, fake, fleet):
    provider = make_provider(cap=2)
    with pytest.raises(CapacityExceeded) as refused:
        provider.create(3)
    assert refused.value.created == [f"{fleet}-1", f"{fleet}-2"]
    assert "cap of 2" in str(refused.value)
    with pytest.raises(CapacityExceeded) as again:
        provider.create(1)
    assert again.value.created == []
    assert len(ours(fake, fleet)) == 2


def test_the_projects_quota_mid_batch_keeps_the_created_servers(make_provider, fake, fleet):
    fake.add_server("someone-else", {})
    fake.quota = 3
    provider = make_provider(cap=5)
    with pytest.raises(CapacityExceeded) as refused:
        provider.create(4)
    assert refused.value.created == [f"{fleet}-1", f"{fleet}-2"]
    message = str(refused.value)
    assert "resource_limit_exceeded" in message and "server limit exceeded" in message
    assert "\n" not in message
    assert {m.name for m in provider.list()} == set(refused.value.created)


def test_rate_limit_and_outages_are_one_line_errors_without_the_token(make_provider, fake):
    provider = make_provider()
    fake.rate_limit = 1  # the create's own listing passes, its POST is refused
    with pytest.raises(ProviderError) as limited:
        provider.create(1)
    message = str(limited.value)
    assert "rate limit exceeded" in message and "limit of 1 requests per hour reached" in message
    assert "retry after" in message and "UTC" in message
    assert not isinstance(limited.value, CapacityExceeded)

    fake.rate_limit = None
    fake.fail_next = [503, 500]
    with pytest.raises(ProviderError) as down:
        provider.list()
    assert str(down.value) == "hcloud API GET /servers: unavailable: the service is temporarily unavailable"
    with pytest.raises(ProviderError, match="server_error"):
        provider.create(1)
    assert provider.list() == []  # nothing half-made
    assert_no_token_leak(fake, message, str(down.value))


def test_a_wrong_or_missing_token_is_a_clear_error(make_provider, fake, r, api):
    wrong = "hc-wrong-token-0000"
    provider = make_provider(env={"HCLOUD_TOKEN": wrong})
    with pytest.raises(ProviderError) as refused:
        provider.list()
    assert "refused the token in HCLOUD_TOKEN" in str(refused.value) and "unauthorized" in str(refused.value)
    assert wrong not in str(refused.value) and wrong not in repr(provider)

    env = {"BBO_REDIS_URL": WORKER_URL}
    with pytest.raises(ProviderError, match="HCLOUD_TOKEN"):
        HcloudProvider(r, fleet="f", env=env, wheel_url=WHEEL, api_url=api)


def test_an_unreachable_api_is_a_provider_error(r):
    env = {"HCLOUD_TOKEN": TOKEN, "BBO_REDIS_URL": WORKER_URL}
    provider = HcloudProvider(r, fleet="f", env=env, wheel_url=WHEEL, api_url="http://127.0.0.1:9/v1")
    with pytest.raises(ProviderError, match="hcloud API GET /servers failed") as failed:
        provider.list()
    assert TOKEN not in str(failed.value)


def test_a_restarted_provider_finds_the_same_servers_and_names_on(make_provider, fake, fleet, r):
    first = make_provider()
    first.create(1)
    first.drain(f"{fleet}-1")
    second = make_provider()  # a new object: no memory but Redis and the labels
    assert [(m.name, m.state) for m in second.list()] == [(f"{fleet}-1", "draining")]
    assert second.create(1) == [f"{fleet}-2"]
    # A lost counter (flushed store) never hands out a name a live server holds.
    r.delete(keys.autoscaler_seq("hcloud", fleet))
    assert make_provider().create(1) == [f"{fleet}-3"]
    assert set(ours(fake, fleet)) == {f"{fleet}-1", f"{fleet}-2", f"{fleet}-3"}


def test_optional_settings_reach_the_create_request(make_provider, fake):
    options = {"server_type": "cax21", "image": "debian-12", "location": "hel1", "ssh_key": "admin"}
    make_provider(**options, network="42", firewall="7").create(1)
    (post,) = [req for req in fake.requests if req.method == "POST"]
    assert post.body["server_type"] == "cax21" and post.body["location"] == "hel1"
    assert post.body["ssh_keys"] == ["admin"] and post.body["networks"] == [42]
    assert post.body["firewalls"] == [{"firewall": 7}] and post.body["start_after_create"] is True


def test_settings_are_checked_before_any_server_is_made(make_provider, r, api):
    with pytest.raises(ProviderError, match="wheel_url"):
        make_provider(wheel_url=None)
    # The servers pip install it and run it as root: plain http lets anyone on the path choose the code.
    with pytest.raises(ProviderError, match="must be https"):
        make_provider(wheel_url="http://example.org/bbo_arena-0.1.0-py3-none-any.whl")
    with pytest.raises(ProviderError, match="cannot reach"):
        make_provider(env={"BBO_REDIS_URL": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ProviderError, match="unix"):
        make_provider(env={"BBO_REDIS_URL": "unix:///tmp/redis.sock"})
    with pytest.raises(ProviderError, match="hostname"):
        make_provider(fleet="Bad_Fleet")
    # The servers may reach the store by another address than the daemon.
    private = "redis://:pw@10.0.0.2:6379/0"
    provider = make_provider(env={"BBO_WORKER_REDIS_URL": private})
    assert provider.redis_url == private


def test_make_builds_it_and_refuses_a_token_option(r, api, monkeypatch):
    env = {"HCLOUD_TOKEN": TOKEN, "BBO_REDIS_URL": WORKER_URL}
    provider = make("hcloud", r=r, fleet="mk", cap=2, env=env, wheel_url=WHEEL, api_url=api, location="fsn1")
    assert provider.name == "hcloud" and provider.cap == 2 and provider.location == "fsn1"
    with pytest.raises(ProviderError, match="numbers"):
        make("hcloud", r=r, fleet="mk", cap="two", env=env, wheel_url=WHEEL, api_url=api)
    with pytest.raises(ProviderError, match="HCLOUD_TOKEN") as refused:
        make("hcloud", r=r, fleet="mk", cap=2, env=env, wheel_url=WHEEL, token="on-the-command-line")
    assert "on-the-command-line" not in str(refused.value)
    with pytest.raises(ProviderError, match="colour"):
        make("hcloud", r=r, fleet="mk", cap=2, env=env, wheel_url=WHEEL, colour="red")


# -- cloud-init -------------------------------------------------------------------------------------


def test_cloud_init_parses_and_keeps_the_redis_url_in_the_root_only_file():
    text = user_data(machine="fleet-7", redis_url=WORKER_URL, wheel_url=WHEEL)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert {"docker.io", "python3-venv"} <= set(doc["packages"])
    files = {f["path"]: f for f in doc["write_files"]}
    secret = files[ENV_FILE]
    assert secret["permissions"] == "0600" and secret["owner"] == "root:root"
    assert secret["content"].strip() == f"BBO_REDIS_URL='{WORKER_URL}'"
    unit = files["/etc/systemd/system/bbo-worker.service"]["content"]
    assert f"EnvironmentFile={ENV_FILE}" in unit
    assert "ExecStart=/opt/bbo/venv/bin/bbo admin worker --name fleet-7\n" in unit
    assert "Restart=on-failure" in unit
    commands = [" ".join(command) for command in doc["runcmd"]]
    assert any(f"pip install --no-cache-dir --quiet {WHEEL}" in c for c in commands)
    assert any(c.endswith("bbo admin sandbox build") for c in commands)
    assert commands[-1] == "systemctl enable --now bbo-worker.service"
    # The URL (and its password) appears nowhere but in the 0600 file.
    without_secret = {**doc, "write_files": [f for f in doc["write_files"] if f["path"] != ENV_FILE]}
    assert "s3cret-pw" not in json.dumps(without_secret) and WORKER_URL not in json.dumps(without_secret)
    assert text.count("s3cret-pw") == 1


def test_a_private_redis_ca_is_copied_to_the_servers(make_provider, fake, tmp_path):
    pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUfake\n-----END CERTIFICATE-----\n"
    (tmp_path / "ca.pem").write_text(pem)
    url = "rediss://:s3cret-pw@redis.example.org:6380/0?ssl_ca_certs=/etc/bbo/redis-ca.pem"
    provider = make_provider(env={"BBO_REDIS_URL": url}, redis_ca_file=str(tmp_path / "ca.pem"))
    provider.create(1)
    (text,) = fake.user_data.values()
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    assert files["/etc/bbo/redis-ca.pem"]["content"] == pem
    assert files[ENV_FILE]["content"].strip() == f"BBO_REDIS_URL='{url}'"
    with pytest.raises(ProviderError, match="PEM"):
        user_data(machine="f-1", redis_url=url, wheel_url=WHEEL, redis_ca_pem="not a certificate")
    with pytest.raises(ProviderError, match="redis_ca_file"):
        make_provider(redis_ca_file=str(tmp_path / "missing.pem"))
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ProviderError, match="PEM"):
        make_provider(redis_ca_file=str(tmp_path / "key.pem"))


@pytest.mark.parametrize(
    "url",
    ["rediss://:it's@redis.example.org:6380/0", "redis://:a b@redis.example.org/0", "redis://:x\\y@h/0"],
)
def test_cloud_init_refuses_urls_the_env_file_cannot_carry(url):
    with pytest.raises(ProviderError, match="encode"):
        user_data(machine="f-1", redis_url=url, wheel_url=WHEEL)


# -- drain: the RQ shutdown command reaches a real worker ----------------------------------------------


def start_worker(name: str, redis_server: str) -> subprocess.Popen:
    """What the server's bbo-worker unit runs, here on this host against the test store."""
    env = {**os.environ, "BBO_REDIS_URL": redis_server, "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
    argv = [sys.executable, "-m", "cli", "admin", "worker", "--name", name]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.contextmanager
def real_worker(name: str, r, redis_server: str):
    worker = start_worker(name, redis_server)
    try:
        joined = lambda: name in {hb.worker for hb in recovery.workers(r)}  # noqa: E731
        wait_for(joined, 120, f"worker {name} to join", alive=worker)
        # RQ subscribes to its command channel after the first beat: a command sent before is lost.
        listening = lambda: r.pubsub_numsub(f"rq:pubsub:{name}")[0][1] >= 1  # noqa: E731
        wait_for(listening, 60, f"worker {name} to listen for commands", alive=worker)
        yield worker
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        worker.stderr.close()


@pytest.mark.system
def test_drain_stops_a_real_worker_warmly_and_labels_the_server(make_provider, fake, fleet, r, redis_server):
    provider = make_provider()
    (name,) = provider.create(1)
    with real_worker(name, r, redis_server) as worker:
        listener = r.pubsub()
        listener.subscribe(f"rq:pubsub:{name}")
        wait_for(lambda: listener.get_message(timeout=0.1), 10, "the subscription")

        provider.drain(name)

        message = wait_for(lambda: listener.get_message(timeout=0.5), 10, "the shutdown command")
        assert json.loads(message["data"]) == {"command": "shutdown"}
        provider.list()  # a worker given the command moments ago is not sent another (a forced stop)
        assert listener.get_message(timeout=1.0) is None
        listener.close()
        assert worker.wait(90) == 0, worker.stderr.read().decode()[-2000:]
        assert fake.by_name(name)["labels"]["bbo-state"] == "draining"
        assert [m.state for m in provider.list()] == ["draining"]


@pytest.mark.system
def test_a_lost_shutdown_command_is_sent_again_later(make_provider, fake, fleet, r, redis_server):
    provider = make_provider()
    (name,) = provider.create(1)
    with real_worker(name, r, redis_server) as worker:
        # Labelled draining (a drain) but the command never reached the worker: it beats on as idle.
        fake.by_name(name)["labels"]["bbo-state"] = "draining"
        provider.list()
        assert worker.wait(90) == 0, worker.stderr.read().decode()[-2000:]


# -- the daemon with this provider ---------------------------------------------------------------------


def daemon_config(**changes) -> PolicyConfig:
    base = {"min_workers": 0, "max_workers": 2, "scale_up_cooldown_s": 0.0, "boot_timeout_s": 300.0}
    return PolicyConfig(**{**base, **changes})


def test_the_daemon_creates_servers_for_queued_jobs(make_provider, fake, fleet, r):
    r.delete(keys.lock(recovery.REAPER_LOCK))
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    create_submission(r, team="hc", data=data, spec=spec, phase="feedback", backend="process")
    provider = make_provider(cap=2)
    daemon = Daemon(r, provider, daemon_config(), fleet=fleet)

    report = daemon.step()
    assert report.error is None and report.decision.add == 2
    assert report.created == [f"{fleet}-1", f"{fleet}-2"]
    assert set(ours(fake, fleet)) == set(report.created)

    again = daemon.step()  # booting servers count: nothing more, nothing swept
    assert again.decision.add == 0 and not again.deleted
    assert {w.state for w in again.observation.workers} == {"booting"}


def test_the_daemon_deletes_servers_that_never_join(make_provider, fake, fleet, r):
    r.delete(keys.lock(recovery.REAPER_LOCK))
    provider = make_provider(cap=2)
    names = provider.create(2)
    now = [time.time()]
    daemon = Daemon(r, provider, daemon_config(boot_timeout_s=30.0), fleet=fleet, clock=lambda: now[0])

    first = daemon.step()
    assert not first.deleted and len(first.observation.workers) == 2

    now[0] += 31 + 5  # past the boot timeout, and no heartbeat ever came
    report = daemon.step()
    assert sorted(report.deleted) == sorted(names)
    assert ours(fake, fleet) == {} and provider.list() == []
    assert report.decision.add == 0  # nothing queued: nothing made again


@pytest.mark.system
def test_the_daemon_drains_an_idle_server_and_deletes_it_once_its_worker_left(
    make_provider, fake, fleet, r, redis_server
):
    r.delete(keys.lock(recovery.REAPER_LOCK))
    provider = make_provider(cap=2)
    (name,) = provider.create(1)
    now = [time.time()]
    config = daemon_config(idle_before_drain_s=60.0, scale_down_cooldown_s=0.0)
    daemon = Daemon(r, provider, config, fleet=fleet, clock=lambda: now[0])
    with real_worker(name, r, redis_server) as worker:
        first = daemon.step()
        assert [(w.name, w.state) for w in first.observation.workers] == [(name, "idle")]
        assert not first.decision.drain

        now[0] += 61
        report = daemon.step()
        assert report.drained == [name] and report.error is None
        assert worker.wait(90) == 0, worker.stderr.read().decode()[-2000:]
        assert fake.by_name(name)["labels"]["bbo-state"] == "draining"

        # Its heartbeat is gone; the server is left to exit by itself for the grace period, then deleted.
        now[0] += 1
        kept = daemon.step()
        assert not kept.deleted and [w.state for w in kept.observation.workers] == ["draining"]
        now[0] += DRAIN_EXIT_GRACE_S + 1
        swept = daemon.step()
        assert swept.deleted == [name]
        assert ours(fake, fleet) == {}
