"""Probes its sandbox and reports on stderr (the organizer log), then searches randomly.

probe.json next to this file (written by the test) names a loopback TCP port, unix sockets (by path, or
abstract names starting with "@") and host files to try. The loopback port is tried at import time and
in every suggest; a suggest that reaches it raises. One `PROBE {json}` line is printed at construction.
"""

import json
import os
import socket
import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_PATH = os.path.join(HERE, "probe.json")
CONFIG = {}
if os.path.exists(CONFIG_PATH):
    with open(CONFIG_PATH) as handle:
        CONFIG = json.load(handle)
PORT = int(CONFIG.get("port", 9))


def _connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _connect_unix(path):
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(address)
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _resolve(name):
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _read(path):
    try:
        if os.path.isdir(path):
            return f"listed {sorted(os.listdir(path))[:20]}"
        with open(path, "rb") as handle:
            return f"read {handle.read(200)!r}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _write(path):
    try:
        with open(path, "w") as handle:
            handle.write("probe")
        os.unlink(path)
        return "written"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _status():
    with open("/proc/self/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def _interfaces():
    with open("/proc/net/dev") as handle:
        return sorted(line.split(":")[0].strip() for line in handle if ":" in line)


IMPORT_LOOPBACK = _connect("127.0.0.1", PORT)


def probe():
    status = _status()
    return {
        "import_loopback": IMPORT_LOOPBACK,
        "loopback": _connect("127.0.0.1", PORT),
        "public_ip": _connect("1.1.1.1", 53),
        "dns": _resolve("pypi.org"),
        "interfaces": _interfaces(),
        "unix": {path: _connect_unix(path) for path in CONFIG.get("unix", [])},
        "reads": {path: _read(path) for path in CONFIG.get("read", [])},
        "writes": {
            path: _write(path)
            for path in (
                "/probe.txt",
                "/usr/probe.txt",
                "/etc/probe.txt",
                os.path.join(HERE, "probe.txt"),
                "/tmp/probe.txt",
                os.path.join(os.path.expanduser("~"), "probe.txt"),
                "/dev/shm/probe.txt",
            )
        },
        "root": sorted(os.listdir("/")),
        "env": dict(os.environ),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "caps": {k: status.get(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "no_new_privs": status.get("NoNewPrivs"),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "pid1": _read("/proc/1/cmdline"),
        "pid1_environ": _read("/proc/1/environ"),
        "hostname": socket.gethostname(),
    }


class Probe(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        print("PROBE " + json.dumps(probe()), file=sys.stderr, flush=True)

    def suggest(self, n_suggestions=1):
        reached = _connect("127.0.0.1", PORT)
        print(f"SUGGEST-LOOPBACK {reached}", file=sys.stderr, flush=True)
        if reached == "connected":
            raise RuntimeError("reached the host's loopback service")
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Probe)
