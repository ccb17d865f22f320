"""Probes its sandbox and reports on stderr (the organizer log), then searches randomly.

probe.json next to this file (written by the test) names a loopback TCP port, unix sockets (by path, or
abstract names starting with "@") and host files to try. The loopback port is tried at import time and
in every suggest; a suggest that reaches it raises. One `PROBE {json}` line is printed at construction.
"""

import ctypes
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import threading

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


def _syscall_errno(name, *args):
    """Call a raw syscall; "ok" or the errno name it failed with."""
    numbers = {
        "x86_64": {"unshare": 272, "keyctl": 250, "bpf": 321, "io_uring_setup": 425},
        "aarch64": {"unshare": 97, "keyctl": 219, "bpf": 280, "io_uring_setup": 425},
    }[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(numbers[name], *args) == -1:
        import errno

        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "ok"


def _works():
    """What an optimizer may legitimately do: threads, subprocesses, a multiprocessing pool."""
    out = {}
    box = []
    thread = threading.Thread(target=lambda: box.append(1))
    thread.start()
    thread.join()
    out["thread"] = "ok" if box else "failed"
    try:
        out["subprocess"] = subprocess.run(
            [sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except OSError as exc:
        out["subprocess"] = f"{type(exc).__name__}: {exc}"
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            out["pool"] = sum(pool.map(abs, [-1, -2, -3]))
    except Exception as exc:  # noqa: BLE001
        out["pool"] = f"{type(exc).__name__}: {exc}"
    return out


def _limits():
    """/proc/self/limits as {name: [soft, hard]}."""
    with open("/proc/self/limits") as handle:
        lines = handle.read().splitlines()[1:]
    return {line[:26].strip(): line[26:].split()[:2] for line in lines}


def _kill(pid):
    try:
        os.kill(pid, 9)
        return "killed"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


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
        "unshare_user": _syscall_errno("unshare", 0x10000000),
        "unshare_net": _syscall_errno("unshare", 0x40000000),
        "keyctl": _syscall_errno("keyctl", 0, -4, 0),  # KEYCTL_GET_KEYRING_ID of the user keyring
        "bpf": _syscall_errno("bpf", 0, 0, 0),
        "io_uring": _syscall_errno("io_uring_setup", 1, 0),
        "works": _works(),
        "ppid": os.getppid(),
        "kill_parent": _kill(os.getppid()),
        "limits": _limits(),
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
