"""The cloud-init user data that turns a fresh cloud server into one scoring worker of a fleet.

The server installs docker and a Python venv, pip installs the project from the organizer's wheel,
builds the sandbox image, and runs `bbo admin worker --name <machine>` as the systemd unit `bbo-worker`.
The Redis URL (it may carry a password) goes only into a root-only 0600 EnvironmentFile the unit reads:
never into the unit, a command line or a log. Restart=on-failure restarts a crashed worker, while a warm
exit (the drain's RQ shutdown command, exit status 0) leaves the unit stopped, so the daemon sees the
heartbeat go and deletes the server.

Plain text, not a YAML library: the document is small and fixed, every value put in it is validated or
quoted here (JSON strings are YAML double-quoted scalars), and the tests parse it with a real YAML parser.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from autoscaler.providers.base import ProviderError

UNIT = "bbo-worker"
ENV_FILE = "/etc/bbo/worker.env"
VENV = "/opt/bbo/venv"
STATE_DIR = "/var/lib/bbo"
# Where a private CA for a rediss:// store goes: point the URL's ?ssl_ca_certs= at it.
CA_FILE = "/etc/bbo/redis-ca.pem"
# A valid hostname label (RFC 1123), as cloud servers are named after their machine.
MACHINE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Characters a systemd EnvironmentFile value in single quotes and a YAML block line can carry verbatim.
_URL_UNSAFE = re.compile(r"['\\\s\x00-\x1f\x7f]")


def check_redis_url(url: str, *, where: str = "BBO_REDIS_URL") -> str:
    """The Redis URL a remote server can use: redis:// or rediss:// to a host other than this one."""
    if not url:
        raise ProviderError(f"{where} is not set: the servers need the Redis URL of the store to serve")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise ProviderError(f"{where} is not a valid URL") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ProviderError(
            f"{where} must be a redis:// or rediss:// URL a cloud server can reach "
            f"(not {parts.scheme or 'a bare path'}://: the embedded unix-socket Redis is local only)"
        )
    if not host or host in ("localhost", "::1") or host.startswith("127."):
        raise ProviderError(f"{where} points at this host ({host or 'no host'}): a server cannot reach it")
    if _URL_UNSAFE.search(url):
        raise ProviderError(f"{where} holds a quote, backslash, space or control character: %-encode it")
    return url


def check_wheel_url(url: str | None) -> str:
    if not url:
        raise ProviderError(
            "hcloud provider: -o wheel_url=https://.../bbo_arena-<version>-py3-none-any.whl is required "
            "(the servers pip install the project from it; build it with `python -m build --wheel`)"
        )
    scheme = urlsplit(url).scheme
    if scheme == "http":
        # The servers run what they fetch as root: over plain http anyone on the path chooses that code.
        raise ProviderError(
            "wheel_url must be https://: the servers install and run it as root, and a plain http download "
            "can be replaced on the way (add #sha256=<hex> to pin its content as well)"
        )
    if scheme != "https" or _URL_UNSAFE.search(url):
        raise ProviderError(f"wheel_url must be an https URL without spaces or quotes, not {url!r}")
    return url


def user_data(*, machine: str, redis_url: str, wheel_url: str, redis_ca_pem: str | None = None) -> str:
    """The #cloud-config for the server that runs worker `machine` against `redis_url`; `redis_ca_pem`
    (certificates, PEM) is written to CA_FILE for a store whose TLS certificate a private CA signed."""
    if not MACHINE_NAME.match(machine):
        raise ProviderError(f"machine name {machine!r} is not a valid hostname (a-z, 0-9, '-')")
    check_redis_url(redis_url)
    check_wheel_url(wheel_url)
    ca_lines = (redis_ca_pem or "").strip().splitlines()
    if ca_lines and not ca_lines[0].startswith("-----BEGIN CERTIFICATE-----"):
        raise ProviderError("the Redis CA must be PEM certificates (-----BEGIN CERTIFICATE-----)")
    bbo = f"{VENV}/bin/bbo"
    unit = "\n".join(
        [
            "[Unit]",
            f"Description=bbo-arena scoring worker {machine}",
            "Wants=network-online.target",
            "After=network-online.target docker.service",
            "Requires=docker.service",
            "",
            "[Service]",
            f"EnvironmentFile={ENV_FILE}",
            f"Environment=BBO_STATE_DIR={STATE_DIR}",
            f"ExecStart={bbo} admin worker --name {machine}",
            # A crash restarts the worker; a warm exit (drained: status 0) leaves it stopped for good.
            "Restart=on-failure",
            "RestartSec=10",
            # A stop lets the running job finish (RQ's warm shutdown on SIGTERM) however long it takes.
            "TimeoutStopSec=infinity",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
    )
    commands = [
        ["mkdir", "-p", STATE_DIR],
        ["python3", "-m", "venv", VENV],
        [f"{VENV}/bin/pip", "install", "--no-cache-dir", "--quiet", wheel_url],
        # The sandbox base: python:3.11-slim when the registry answers, else debootstrap builds one offline.
        ["sh", "-c", "docker pull --quiet python:3.11-slim || true"],
        ["env", f"BBO_STATE_DIR={STATE_DIR}", bbo, "admin", "sandbox", "build"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", f"{UNIT}.service"],
    ]
    lines = [
        "#cloud-config",
        "package_update: true",
        "packages: [docker.io, python3-venv, debootstrap]",
        "write_files:",
        f"  - path: {ENV_FILE}",
        "    owner: root:root",
        "    permissions: '0600'",
        "    content: |",
        f"      BBO_REDIS_URL='{redis_url}'",
        *(
            [f"  - path: {CA_FILE}", "    owner: root:root", "    permissions: '0644'", "    content: |"]
            + [f"      {line.strip()}" for line in ca_lines]
            if ca_lines
            else []
        ),
        f"  - path: /etc/systemd/system/{UNIT}.service",
        "    owner: root:root",
        "    permissions: '0644'",
        "    content: |",
        *(f"      {line}" if line else "" for line in unit.splitlines()),
        "runcmd:",
        *(f"  - {json.dumps(command)}" for command in commands),
        "",
    ]
    return "\n".join(lines)
