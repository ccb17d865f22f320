"""Probes its sandbox at construction and reports on stderr (the organizer log), then searches randomly.

One `PROBE {json}` line: network reachability (a loopback port named in probe_port.txt, public
addresses, name resolution), which paths are writable, the environment, the uid and capabilities.
"""

import json
import os
import socket
import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HERE = os.path.dirname(os.path.abspath(__file__))


def _connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _resolve(name):
    try:
        return socket.gethostbyname(name)
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


def _status_field(name):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def probe():
    port_file = os.path.join(HERE, "probe_port.txt")
    port = 9
    if os.path.exists(port_file):
        with open(port_file) as handle:
            port = int(handle.read())
    return {
        "loopback": _connect("127.0.0.1", port),
        "public_ip": _connect("1.1.1.1", 53),
        "public_ip_2": _connect("8.8.8.8", 443),
        "dns": _resolve("pypi.org"),
        "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None,
        "write_root": _write("/probe.txt"),
        "write_opt": _write("/opt/probe.txt"),
        "write_submission": _write(os.path.join(HERE, "probe.txt")),
        "write_tmp": _write("/tmp/probe.txt"),
        "write_home": _write(os.path.join(os.path.expanduser("~"), "probe.txt")),
        "env": dict(os.environ),
        "uid": os.getuid(),
        "cap_eff": _status_field("CapEff"),
        "no_new_privs": _status_field("NoNewPrivs"),
    }


class Probe(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        print("PROBE " + json.dumps(probe()), file=sys.stderr, flush=True)

    def suggest(self, n_suggestions=1):
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Probe)
