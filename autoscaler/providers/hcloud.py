"""The `hcloud` provider: scoring workers on Hetzner Cloud servers, through its REST API over httpx.

Each machine is a server named `<fleet>-<n>` whose cloud-init (autoscaler/providers/cloud_init.py) runs
`bbo admin worker --name <fleet>-<n>`, so the daemon joins servers and heartbeats by name. The servers'
labels are the source of truth: bbo-fleet and bbo-store (a short hash of the Redis store's address, so two
deployments sharing a project and a fleet name never take each other's servers), bbo-machine (the worker's
name), and bbo-state=draining once drained, so a restarted daemon knows which servers are on their way out.

Drain is a warm stop through Redis: RQ's shutdown command on the worker's pubsub channel makes the worker
finish its job and exit 0, systemd leaves it stopped, the heartbeat goes, and the daemon deletes the server
after its grace period. Nothing here sleeps or retries: the daemon steps again, and a refusal (rate limit,
quota, API down) is one ProviderError line the policy holds on.

The API token comes from HCLOUD_TOKEN in the environment, never an option (it would show in `ps` and
shell history); it travels only in the Authorization header and is scrubbed from every error message.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from rq.command import send_shutdown_command

from autoscaler.errors import ApiError  # noqa: F401 - re-exported for callers
from autoscaler.providers.base import CapacityExceeded, Machine, ProviderError
from autoscaler.providers.cloud_init import MACHINE_NAME, check_redis_url, check_wheel_url, user_data
from queue_schema import keys
from runtime import recovery

TOKEN_ENV = "HCLOUD_TOKEN"
# The Redis URL the servers use, when it differs from the daemon's own (a private address, say).
WORKER_REDIS_URL_ENV = "BBO_WORKER_REDIS_URL"
API_URL = "https://api.hetzner.cloud/v1"
FLEET_LABEL = "bbo-fleet"
MACHINE_LABEL = "bbo-machine"
STORE_LABEL = "bbo-store"
STATE_LABEL = "bbo-state"
PER_PAGE = 50  # the API's maximum
_MAX_PAGES = 200
# A lost counter (flushed store) may hand out a name another server still holds: try the next ones.
_NAME_ATTEMPTS = 5
# A draining worker still beating as not draining this long after its shutdown command lost it.
DRAIN_RESEND_S = 120.0


def store_hash(redis_url: str) -> str:
    """12 hex characters naming the store by its address only: no credentials (a password change keeps
    the fleet, and a label never helps guess a password)."""
    parts = urlsplit(redis_url)
    address = f"{parts.hostname or ''}:{parts.port or ''}{parts.path or ''}"
    return hashlib.sha256(address.encode()).hexdigest()[:12]


class HcloudProvider:
    name = "hcloud"

    def __init__(
        self,
        r: redis.Redis,
        *,
        fleet: str = "hcloud",
        cap: int | str | None = None,
        env: dict[str, str] | None = None,
        token: str | None = None,
        server_type: str = "cpx31",
        image: str = "debian-12",
        location: str | None = None,
        wheel_url: str | None = None,
        ssh_key: str | None = None,
        network: int | str | None = None,
        firewall: int | str | None = None,
        redis_ca_file: str | None = None,
        api_url: str = API_URL,
        timeout_s: float | str = 30.0,
    ) -> None:
        """`r` is the daemon's str client. `env` is where HCLOUD_TOKEN and the servers' Redis URL
        (BBO_WORKER_REDIS_URL, else BBO_REDIS_URL) are read (default: our environment). `image` must ship
        Python 3.11 (debian-12 does). `ssh_key`: the name or id of a project SSH key for root access;
        `network` / `firewall`: ids of a private network to attach and a firewall to apply at creation;
        `redis_ca_file`: a PEM file here with the CA of the store's TLS certificate, copied to the servers
        (then end the URL with ?ssl_ca_certs=/etc/bbo/redis-ca.pem)."""
        env = dict(env if env is not None else os.environ)
        self.r = r
        if not MACHINE_NAME.match(f"{fleet}-1"):
            raise ProviderError(f"fleet name {fleet!r} must be a hostname: lowercase letters, digits, '-'")
        self.fleet = fleet
        try:
            self.cap = int(cap) if cap not in (None, "") else 4
            timeout = float(timeout_s)
            self.network = int(network) if network not in (None, "") else None
            self.firewall = int(firewall) if firewall not in (None, "") else None
        except ValueError:
            raise ProviderError(
                "hcloud provider: cap, timeout_s, network and firewall must be numbers"
            ) from None
        self._token = token or env.get(TOKEN_ENV, "")
        if not self._token:
            raise ProviderError(f"hcloud provider: set {TOKEN_ENV} to a read & write API token of a project")
        worker_url_env = WORKER_REDIS_URL_ENV if env.get(WORKER_REDIS_URL_ENV) else "BBO_REDIS_URL"
        self.redis_url = check_redis_url(env.get(worker_url_env, ""), where=worker_url_env)
        self.wheel_url = check_wheel_url(wheel_url)
        self.redis_ca_pem = None
        if redis_ca_file:
            try:
                self.redis_ca_pem = Path(redis_ca_file).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ProviderError(f"hcloud provider: cannot read redis_ca_file: {exc}") from None
        # Every setting the servers get is checked now, before a server is paid for.
        user_data(
            machine=f"{fleet}-1",
            redis_url=self.redis_url,
            wheel_url=self.wheel_url,
            redis_ca_pem=self.redis_ca_pem,
        )
        self.server_type = server_type
        self.image = image
        self.location = location or None
        self.ssh_key = ssh_key or None
        self.store = store_hash(self.redis_url)
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.api_url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {self._token}", "User-Agent": "bbo-arena-autoscaler"},
        )
        # name -> the server as last listed: drain and delete, which follow a list in a daemon step,
        # need no lookup of their own.
        self._known: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:  # never the token
        return f"HcloudProvider(fleet={self.fleet!r}, api_url={self.api_url!r})"

    def close(self) -> None:
        self._http.close()

    # -- the protocol ---------------------------------------------------------------------------------

    def create(self, n: int) -> builtins.list[str]:
        taken = {machine.name for machine in self.list()}
        room = max(0, self.cap - len(taken))
        created: builtins.list[str] = []
        for _ in range(min(n, room)):
            try:
                created.append(self._create_one(taken))
            except ApiError as exc:
                if exc.code == "resource_limit_exceeded":
                    raise CapacityExceeded(
                        f"hcloud refused more servers ({exc.code}: {exc.api_message}): "
                        f"created {len(created)} of {n}",
                        created,
                    ) from None
                raise
        if n > room:
            raise CapacityExceeded(
                f"hcloud cap of {self.cap} server(s) reached: created {len(created)} of {n}", created
            )
        return created

    def list(self) -> builtins.list[Machine]:
        selector = f"{FLEET_LABEL}={self.fleet},{STORE_LABEL}={self.store}"
        servers = self._servers(selector)
        self._known = {}
        machines = []
        draining: builtins.list[str] = []
        for server in servers:
            if server.get("status") == "deleting":
                continue
            labels = dict(server.get("labels") or {})
            name = labels.get(MACHINE_LABEL) or server.get("name", "")
            self._known[name] = server
            if labels.get(STATE_LABEL) == "draining":
                draining.append(name)
            machines.append(
                Machine(
                    name=name,
                    created_at=_timestamp(server.get("created")),
                    state="draining" if labels.get(STATE_LABEL) == "draining" else "running",
                    labels={
                        **labels,
                        "hcloud-id": str(server.get("id")),
                        "status": str(server.get("status", "")),
                    },
                )
            )
        self._resend_lost_shutdowns(draining)
        return sorted(machines, key=lambda machine: machine.created_at)

    def drain(self, name: str) -> None:
        server = self._find(name)
        if server is None:
            return
        # The label first: a daemon restarted from here on still knows the server is on its way out.
        labels = {**(server.get("labels") or {}), STATE_LABEL: "draining"}
        try:
            answer = self._request("PUT", f"/servers/{server['id']}", json={"labels": labels})
        except ApiError as exc:
            if exc.status != 404:
                raise
            return
        self._known[name] = answer.get("server") or {**server, "labels": labels}
        try:
            self._shutdown(name)
        except redis.RedisError as exc:
            raise ProviderError(f"could not send the shutdown command to worker {name}: {exc}") from None

    def delete(self, name: str) -> None:
        server = self._find(name)
        if server is None:
            return
        try:
            self._request("DELETE", f"/servers/{server['id']}")
        except ApiError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise
        self._known.pop(name, None)
        self.r.hdel(self._sent_key, name)

    # -- warm shutdowns -------------------------------------------------------------------------------

    @property
    def _sent_key(self) -> str:
        return keys.autoscaler_machines("hcloud", self.fleet)  # name -> when its shutdown was sent

    def _shutdown(self, name: str) -> None:
        self.r.hset(self._sent_key, name, repr(time.time()))
        send_shutdown_command(self.r, name)

    def _resend_lost_shutdowns(self, draining: builtins.list[str]) -> None:
        """The shutdown command is a pubsub message: one sent while the worker was not listening (a
        Redis reconnect) is lost, and its server would run, and bill, for ever. Resend it to a worker
        that still beats as not draining long after, never sooner: a second command received forces
        the worker down, killing its running job."""
        if not draining:
            return
        try:
            beats = {beat.worker: beat for beat in recovery.workers(self.r)}
            sent = self.r.hgetall(self._sent_key)
            for name in draining:
                beat = beats.get(name)
                if beat is None or beat.state == "draining":
                    continue
                if time.time() - float(sent.get(name) or 0) >= DRAIN_RESEND_S:
                    self._shutdown(name)
        except (redis.RedisError, ValueError):
            pass  # the next listing tries again

    # -- the API --------------------------------------------------------------------------------------

    def _create_one(self, taken: set[str]) -> str:
        for _ in range(_NAME_ATTEMPTS):
            name = f"{self.fleet}-{self.r.incr(keys.autoscaler_seq('hcloud', self.fleet))}"
            if name in taken:
                continue
            taken.add(name)
            body: dict[str, Any] = {
                "name": name,
                "server_type": self.server_type,
                "image": self.image,
                "labels": {FLEET_LABEL: self.fleet, MACHINE_LABEL: name, STORE_LABEL: self.store},
                "user_data": user_data(
                    machine=name,
                    redis_url=self.redis_url,
                    wheel_url=self.wheel_url,
                    redis_ca_pem=self.redis_ca_pem,
                ),
                "start_after_create": True,
            }
            if self.location:
                body["location"] = self.location
            if self.ssh_key:
                body["ssh_keys"] = [self.ssh_key]
            if self.network is not None:
                body["networks"] = [self.network]
            if self.firewall is not None:
                body["firewalls"] = [{"firewall": self.firewall}]
            try:
                answer = self._request("POST", "/servers", json=body)
            except ApiError as exc:
                if exc.code == "uniqueness_error":  # a server of that name exists outside this fleet
                    continue
                raise
            # The answer also holds a root password when no SSH key is given: deliberately dropped.
            self._known[name] = answer.get("server") or {}
            return name
        raise ProviderError(f"hcloud: {_NAME_ATTEMPTS} server names in a row were taken (a lost counter?)")

    def _servers(self, selector: str) -> builtins.list[dict[str, Any]]:
        servers: builtins.list[dict[str, Any]] = []
        page: int | None = 1
        for _ in range(_MAX_PAGES):
            if page is None:
                return servers
            answer = self._request(
                "GET", "/servers", params={"label_selector": selector, "page": page, "per_page": PER_PAGE}
            )
            servers.extend(answer.get("servers") or [])
            page = ((answer.get("meta") or {}).get("pagination") or {}).get("next_page")
        raise ProviderError(f"hcloud: more than {_MAX_PAGES} pages of servers; stopped listing")

    def _find(self, name: str) -> dict[str, Any] | None:
        if name in self._known and self._known[name].get("id") is not None:
            return self._known[name]
        selector = f"{FLEET_LABEL}={self.fleet},{STORE_LABEL}={self.store},{MACHINE_LABEL}={name}"
        servers = self._servers(selector)
        return servers[0] if servers else None

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            detail = self._scrub(str(exc)) or type(exc).__name__
            raise ProviderError(f"hcloud API {method} {path} failed: {detail}") from None
        if response.is_success:
            try:
                return response.json() if response.content else {}
            except ValueError:
                raise ProviderError(f"hcloud API {method} {path}: the answer is not JSON") from None
        raise self._error(method, path, response)

    def _error(self, method: str, path: str, response: httpx.Response) -> ApiError:
        code, message = f"http_{response.status_code}", response.reason_phrase or "error"
        try:
            error = response.json().get("error") or {}
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
        except (ValueError, AttributeError):
            pass
        message = self._scrub(" ".join(message.split()))
        if response.status_code == 401 or code == "unauthorized":
            text = f"hcloud API refused the token in {TOKEN_ENV} ({code}: {message})"
        elif response.status_code == 429 or code == "rate_limit_exceeded":
            text = f"hcloud API rate limit exceeded ({message}); {_retry_hint(response.headers)}"
        else:
            text = f"hcloud API {method} {path}: {code}: {message}"
        return ApiError(text, status=response.status_code, code=code, api_message=message)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


def _retry_hint(headers: httpx.Headers) -> str:
    limit = headers.get("RateLimit-Limit")
    per_hour = f" of {limit} requests/hour" if limit else ""
    try:
        reset = float(headers["RateLimit-Reset"])  # a UNIX time: when the budget is full again
    except (KeyError, ValueError):
        return f"retry later (no RateLimit-Reset header{per_hour})"
    wait = max(0, round(reset - time.time()))
    when = datetime.fromtimestamp(reset, tz=UTC).strftime("%H:%M:%S UTC")
    return f"retry after {when} (in {wait} s), when the budget{per_hour} is full again"


def _timestamp(created: Any) -> float:
    """The server's ISO 8601 "created" time as a UNIX time (now if missing: a booting server)."""
    if not created:
        return time.time()
    try:
        return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
