"""The `bwrap` backend: every study's optimizer in a fresh bubblewrap sandbox, for machines with no engine.

Per study (launch): the artifact's staged copy of the submission (regular files only, world-readable,
made once by `prepare`) bound read-only at /submission, and its installed bundled wheels read-only at
/install; the host code (sandbox_image/host.py and queue_schema/protocol.py) copied and bound
read-only at /host; the system directories (/usr and the /bin, /lib... links) and the Python runtime the
worker runs (its base install and its venv, at their own paths, nothing else of their parents) bound
read-only; a minimal generated /etc (passwd, group, hosts) plus ld.so.cache and localtime; size-limited
private tmpfs mounts at /tmp (HOME and TMPDIR) and /dev/shm; a fresh /proc and /dev; the root remounted
read-only. New network (loopback only), pid, ipc, uts and cgroup namespaces, `--die-with-parent`,
`--new-session`, every capability dropped, and a fixed environment (nothing of the worker's). Nothing of
/root, /home, the state folder, the Redis socket, the source tree or another study's scratch is mounted.
Before anything of the submission loads, the in-sandbox bootstrap installs a seccomp filter (see
`seccomp_filter`): no new namespaces (measured without it: `unshare(CLONE_NEWUSER)` succeeds inside and
gives a full CapEff in the new namespace), no kernel keyrings (per uid, so a channel between studies;
measured without it: keyctl succeeds), no bpf, perf_event_open, userfaultfd or io_uring. Threads,
subprocesses and multiprocessing pools work. Start-up, launch to `hello` for the random-search example,
10 runs here: p50 0.50 s, p95 0.59 s (process backend: 0.45 s, 0.50 s); with the uid slot and the start
marker, measured again on another machine: cgroup mode p50 0.26 s, p95 0.39 s; rlimit mode 0.20 s,
0.23 s (a uid slot: 1.05 ms to take and give back).

The unprivileged user. rlimits do not bind root, and `bwrap --unshare-all --uid N` run as root does
not help: bwrap maps the sandbox uid to the *caller's* uid, so the process is uid N inside but kernel uid 0
outside. Measured here: /proc/self/uid_map reads `65534 0 1` and with `prlimit --nproc=20` the sandbox
forks 100 children without a failure. So bwrap runs as root *without* a user namespace, keeps only
CAP_SETUID, CAP_SETGID and CAP_SETPCAP, and execs `setpriv --reuid U --regid U --clear-groups --inh-caps
-all --bounding-set -all`, which makes the process really uid/gid U (kernel uid, no supplementary groups,
CapEff = CapPrm = CapBnd = 0, NoNewPrivs 1) before it execs Python. The rlimits are set in the worker's
preexec (as root, where they do not bind) and inherited through bwrap and setpriv; they bind from the uid
switch on. This needs the worker to run as root (bwrap then needs no setuid bit and no user namespaces).

One uid per sandbox. U is a uid of the sandbox's own (workers/sandbox/uids.py: UID_BASE + a slot held by a
lock for the sandbox's life, released in cleanup, and with the worker's death), in both limit modes, and
the install sandbox of an artifact gets one too. What the kernel counts per uid is therefore counted per
sandbox: RLIMIT_NPROC (= limits.pids), inotify instances, pipe pages, message queues. Measured on the
code before (issue 14, finding 8), every sandbox as uid 65534, rlimit mode, pids 32: with one team's fork
bomb at its 32 tasks, another team's first sandbox ran but could start no thread (3 of 3 suggests fell
back to random), and its pre-started second sandbox could not exec its interpreter ("setpriv: failed to
execute ...: Resource temporarily unavailable", exit 126), charged as `optimizer_crashed`. Now both
studies complete with no fallback (tests/workers/test_sandbox_shared_limits.py).
A worker that can give neither per-sandbox uids nor cgroups (the slot folder unusable, cgroups not
writable) refuses the backend (SandboxUnavailable naming both reasons) unless the operator sets
BBO_ALLOW_SHARED_SANDBOX_LIMITS=1, which runs every sandbox as uid 65534 with one shared process budget.
With cgroups but no per-sandbox uid, sandboxes run as uid 65534 with a pids group each and RLIMIT_NPROC
as a machine-wide backstop (NPROC_BACKSTOP).

A sandbox that fails to start is ours. The worker passes the sandbox the write end of a pipe (a private
descriptor, `LaunchSpec.pass_fds`); after the seccomp filter is installed and the host code is imported,
and before anything of the submission loads or is on the path, the bootstrap writes STARTED_MARKER to it
and closes it. No process of the sandbox's uid holds it afterwards (bwrap's own processes, which do, are
root's), so team code can neither forge nor suppress it. A process that ended without the marker
(bwrap, setpriv or Python could not start, fork or exec hit EAGAIN, the seccomp filter did not install)
is `infrastructure` (`exit_cause`): retried, never charged; an exit code or a message on stderr is never
taken for it.

Limits, two modes.
- `cgroup` (preferred, chosen when the worker can create cgroup v1 groups next to its own, as root on this
  machine): a memory group (memory.limit_in_bytes = memory.memsw.limit_in_bytes = limits.memory_mb; no
  swap here), a pids group (pids.max = limits.pids) and, when present, a cpu group (cfs quota =
  limits.cpus). The worker's preexec moves the child into them before it execs bwrap, so everything in the
  sandbox is inside. A memory hog is OOM-killed by the kernel; `exit_cause` reads memory.oom_control's
  oom_kill counter (and pids.events) and reports `resource_limit`. Measured: a hog of 32 MB chunks under a
  256 MB group dies at about 224 MB, bwrap exits 137 and oom_kill reads 1. A fork bomb stops at pids.max
  per study, however many sandboxes run on the machine (measured with pids 32: 31 processes inside, the
  32nd task of the group being bwrap itself; in rlimit mode 33: 32 of the sandbox's uid plus bwrap's root
  reaper).
  `kill` SIGKILLs whatever is left in the group and cleanup removes the groups. RLIMIT_NPROC (per
  sandbox uid) = limits.pids as well.
- `rlimit` (fallback where cgroups are not writable, e.g. a pure cgroup v2 host): RLIMIT_DATA =
  limits.memory_mb and RLIMIT_NPROC = limits.pids. RLIMIT_DATA rather than RLIMIT_AS: address space is not
  memory, and it fights the numerics. Measured with one OpenBLAS thread, importing numpy, bayesmark,
  scipy.optimize and scikit-learn's gaussian_process peaks at 98 MB resident but 340 MB of address space:
  RLIMIT_AS at 256 MB fails that import (scipy's `_highspy` "failed to map segment"), RLIMIT_DATA at 256 MB
  passes it; unpinned BLAS threads and libraries such as torch reserve far more address space. An
  allocation over the limit raises MemoryError; the in-sandbox bootstrap turns a MemoryError that escapes
  the optimizer into exit code MEMORY_EXIT, which `exit_cause` reports as `resource_limit`. Weaker than
  the cgroup: RLIMIT_DATA is per process; RLIMIT_NPROC counts the processes of the sandbox's own uid.
Both modes: RLIMIT_FSIZE = limits.file_size_mb (Python ignores SIGXFSZ, so a write past it fails with
EFBIG), RLIMIT_CORE = 0, RLIMIT_NOFILE = NOFILE, and RLIMIT_CPU as a backstop against CPU burnt between
calls (soft: cpus x (suggest budget + call timeout) + 10 s, which ends the process with SIGXCPU; hard 5 s
later).

Killing. The harness SIGKILLs bwrap's process group. The sandboxed processes are in another session
(`--new-session`) and pid namespace; `--die-with-parent` gives bwrap's pid-1 reaper a parent-death SIGKILL,
and when a pid namespace's init dies the kernel kills everything in it, so a signal-ignoring optimizer and
its detached children die with bwrap. In cgroup mode `kill` also SIGKILLs the group's members. Caveat of
PR_SET_PDEATHSIG: the sandbox also dies when the *thread* that started it exits, so start a study's
sandbox from the thread that drives it (as workers/job.py does).

Bundled wheels (prepare, once per artifact, cached by content: workers/sandbox/install.py has the rules):
pip runs with the sandbox interpreter in a sandbox like a study's (no network, seccomp, its own uid, the
limits of install.py), the staged submission read-only, pip writing into a size-limited tmpfs at /install,
the finished install copied out to the artifact's install folder (bound read-write for that step only).
At launch that folder is bound read-only at /install and its site-packages put first on the path (and in
PYTHONPATH for the optimizer's own subprocesses) by the bootstrap, after the start marker: never through
the environment of the sandbox's interpreter, which would let a bundled sitecustomize.py run before the
seccomp filter. The optimizer environment is the sandbox venv built by `bbo admin sandbox venv` (the
image's packages, `default_python()`), or the worker's interpreter when there is none, or the one given
(`BwrapBackend(python=...)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from queue_schema import protocol
from queue_schema.settings import state_dir
from queue_schema.states import FailureCause
from runtime.processes import process_alive
from runtime.spec import Limits
from sandbox_image import host as sandbox_host
from sandbox_image.build import sandbox_python
from workers.optimizer_process import LaunchSpec
from workers.sandbox import install, uids
from workers.sandbox import warm as warm_fill
from workers.sandbox.base import (
    THREAD_ENV,
    InstallFailed,
    SandboxUnavailable,
    cpu_backstop_s,
    sandbox_uid_slot,
)

SANDBOX_UID = 65534  # only when sandboxes share a uid (no uid slots here: cgroups or the opt-in below)
SANDBOX_GID = 65534
SHARED_LIMITS_ENV = "BBO_ALLOW_SHARED_SANDBOX_LIMITS"
SUBMISSION_MOUNT = install.SUBMISSION_MOUNT
HOST_MOUNT = "/host"
NOFILE = 1024
NPROC_BACKSTOP = 4096  # cgroup mode with a shared uid: all its tasks on the machine; pids group per study
STARTED_MARKER = b"bbo-sandbox-started\n"
MEMORY_EXIT = protocol.EXIT_OUT_OF_MEMORY  # the host's exit code for a MemoryError
CGROUP_PREFIX = "bbo-bwrap-"
# Only these; /usr and whatever of these exists (real directories, or the links of a merged /usr).
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")  # bound (resolved) when present
STUDY_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    **THREAD_ENV,
}

# -- seccomp ---------------------------------------------------------------------------------------------

# Syscalls the optimizer gets EPERM for. Namespaces: an unprivileged process may otherwise make a user
# namespace (measured here: unshare(CLONE_NEWUSER) succeeds in the sandbox, with a full CapEff inside it)
# and reach kernel code that needs CAP_SYS_ADMIN there. Keyrings are per user, so uid 65534's keyring would
# be a channel from one study to the next. The rest is kernel attack surface an optimizer has no use for.
# clone3 gets ENOSYS, which makes the C library fall back to clone, whose flags the filter can read.
_SYSCALLS = {
    "x86_64": {
        "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "clone": 56, "clone3": 435,
    },
    "aarch64": {
        "unshare": 97, "setns": 268, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "clone": 220, "clone3": 435,
    },
}  # fmt: skip
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000  # x32 ABI syscalls on x86_64: refused wholesale
# clone's namespace flags (not CLONE_NEWTIME, whose bit is part of clone's exit-signal byte).
_CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
_EPERM, _ENOSYS = 1, 38


def seccomp_filter(machine: str | None = None) -> bytes:
    """The classic-BPF program (struct sock_filter[]) the bootstrap installs before the submission loads."""
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        raise SandboxUnavailable(f"no seccomp filter for this architecture ({machine})")
    numbers = _SYSCALLS[machine]
    ld_abs, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000

    def errno(code: int) -> int:
        return 0x00050000 | code

    program: list[tuple[int, int, int, int]] = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, _AUDIT_ARCH[machine]),
        (ret, 0, 0, kill),  # a foreign ABI (int 0x80 from a 64-bit process)
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        program += [(jge, 0, 1, _X32_BIT), (ret, 0, 0, errno(_ENOSYS))]
    for name, number in numbers.items():
        if name in ("clone", "clone3"):
            continue
        program += [(jeq, 0, 1, number), (ret, 0, 0, errno(_EPERM))]
    program += [
        (jeq, 0, 1, numbers["clone3"]),
        (ret, 0, 0, errno(_ENOSYS)),
        (jeq, 1, 0, numbers["clone"]),
        (ret, 0, 0, allow),
        (ld_abs, 0, 0, 16),  # seccomp_data.args[0], low 32 bits (little-endian): clone's flags
        (jset, 0, 1, _CLONE_NAMESPACES),
        (ret, 0, 0, errno(_EPERM)),
        (ret, 0, 0, allow),
    ]
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)


# Runs first in the sandbox's Python, before anything of the submission: installs the filter (the process
# already has no_new_privs, from bwrap and setpriv) or exits with SECCOMP_EXIT.
SECCOMP_EXIT = 87
_SECCOMP_PRELUDE = """\
import ctypes, os, sys
def _install_seccomp(program):
    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    libc = ctypes.CDLL(None, use_errno=True)
    prog = _Prog(len(program) // 8, program)
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        sys.stderr.write("[sandbox] cannot install the seccomp filter: "
                         + os.strerror(ctypes.get_errno()) + "\\n")
        sys.stderr.flush()
        os._exit(%d)
_install_seccomp(bytes.fromhex(%r))
del _install_seccomp
"""


def _prelude() -> str:
    return _SECCOMP_PRELUDE % (SECCOMP_EXIT, seccomp_filter().hex())


def bootstrap(started_fd: int | None = None, site: str | None = None, warm: bool = False) -> str:
    """Runs inside the sandbox as `python -s -P -c PRELUDE+BOOTSTRAP [--warm] /submission`, after the
    prelude: puts the host code first on the path and imports it; runs the host, which calls `_started`
    just before it loads the submission (a warm host: after its load line). `_started` writes the start
    marker to `started_fd` and closes it, and only then puts the bundled packages (`site`; for a warm
    host, if the folder was filled) on the path. The host itself exits with MEMORY_EXIT when the
    optimizer runs out of memory."""
    body = []
    if started_fd is not None:
        body += [f"os.write({started_fd}, {STARTED_MARKER!r})", f"os.close({started_fd})"]
    if site is not None:
        add = [f"sys.path.insert(1, {site!r})", f"os.environ['PYTHONPATH'] = {site!r}"]
        body += [f"if os.path.isdir({site!r}):", *(f"    {line}" for line in add)] if warm else add
    lines = [f"sys.path.insert(0, {HOST_MOUNT!r})", "import host", "def _started():"]
    lines += [f"    {line}" for line in body or ["pass"]]
    lines.append("host.main(_started)")
    return "\n".join(lines) + "\n"


BOOTSTRAP = bootstrap()  # without a start marker or bundled packages


# -- the Python runtime ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """The interpreter the sandbox runs, and the host folders it needs, bound read-only at their paths."""

    executable: str
    version: str
    binds: tuple[str, ...]
    site: str  # its site-packages (purelib): what bundled packages may depend on


_RUNTIME_PROBE = (
    "import json, os, sys; print(json.dumps({'executable': sys.executable, 'version': sys.version.split()[0],"
    " 'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,"
    " os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))],"
    " 'site': __import__('sysconfig').get_paths()['purelib']}))"
)


@functools.cache
def runtime(python: str | None = None) -> Runtime:
    """What to bind for `python` (default: the worker's own interpreter): its prefixes, venv and base."""
    executable = python or sys.executable
    if not executable or not os.path.isabs(executable):
        raise SandboxUnavailable(f"the sandbox interpreter needs an absolute path, got {executable!r}")
    try:
        done = subprocess.run(
            [executable, "-I", "-c", _RUNTIME_PROBE], capture_output=True, text=True, timeout=60, check=True
        )
        info = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxUnavailable(f"cannot run the sandbox interpreter {executable}: {exc}") from None
    covered = ["/usr", *SYSTEM_DIRS]
    binds: list[str] = []
    for raw in info["prefixes"]:
        path = os.path.normpath(raw)
        if not path or path == "/" or not os.path.isdir(path):
            continue
        if any(_within(path, done) for done in covered + binds):
            continue
        binds = [b for b in binds if not _within(b, path)] + [path]
    return Runtime(executable, info["version"], tuple(binds), info["site"])


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# -- availability --------------------------------------------------------------------------------------


def _bwrap() -> str | None:
    return shutil.which("bwrap")


def _setpriv() -> str | None:
    return shutil.which("setpriv")


@functools.cache
def version() -> str:
    try:
        out = subprocess.run([_bwrap() or "bwrap", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip().split()[-1] if out.stdout.strip() else "unknown"


def default_python() -> str | None:
    """The sandbox venv built by `bbo admin sandbox venv` (the image's optimizer environment), if any."""
    return sandbox_python()


def unavailable_reason(python: str | None = None) -> str | None:
    """Why the bwrap backend cannot run here, or None when a trivial sandbox actually ran."""
    python = python or default_python()
    if _bwrap() is None:
        return "bubblewrap is not installed (apt-get install bubblewrap; scripts/setup does it)"
    if _setpriv() is None:
        return "setpriv is not installed (util-linux)"
    if os.geteuid() != 0:
        return (
            "the bwrap backend needs a root worker: it switches the sandbox to uid 65534 with setpriv, "
            "and rlimits do not bind a uid that is root outside the sandbox"
        )
    return _trial(python)


_TRIED_OK: set[str | None] = set()  # a trial that worked is not repeated; a failed one is, next time


def available(python: str | None = None) -> bool:
    """bwrap and setpriv are present, the worker is root, and a trivial sandbox actually runs."""
    return unavailable_reason(python) is None


def _trial(python: str | None) -> str | None:
    try:
        rt = runtime(python)
        with tempfile.TemporaryDirectory(prefix="bbo-bwrap-trial-") as tmp:
            folder = Path(tmp)
            _write_etc(folder / "etc")
            argv = _sandbox_argv(
                rt,
                folder / "etc",
                binds=[],
                tmpfs_bytes=16 << 20,
                command=[rt.executable, "-s", "-P", "-c", _prelude() + "print(os.getuid(), os.getgid())"],
            )
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=dict(STUDY_ENV))
    except SandboxUnavailable as exc:
        return str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"a trial bwrap sandbox could not start: {exc}"
    if done.returncode != 0 or done.stdout.split() != [str(SANDBOX_UID), str(SANDBOX_GID)]:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1][:300]
        return f"a trial bwrap sandbox failed: {detail}"
    return None


# -- cgroups (v1) ------------------------------------------------------------------------------------


def _cgroup_v1_base(controller: str) -> Path | None:
    """The worker's own cgroup folder for a v1 controller, when mounted; None otherwise."""
    own = None
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as handle:
        for line in handle:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3 and controller in parts[1].split(","):
                own = parts[2]
    if own is None:
        return None
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] != "cgroup":
                continue
            if controller not in tail[2].split(","):
                continue
            root, mountpoint = fields[3], fields[4]
            if not _within(own, root):
                continue
            rel = os.path.relpath(own, root)
            base = Path(mountpoint) if rel == "." else Path(mountpoint) / rel
            if base.is_dir():
                return base
    return None


CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
OPTIONAL_CONTROLLERS = frozenset({"cpu", "cpuacct"})


class _Cgroups:
    """One study's memory, pids (and cpu, cpuacct) groups."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @classmethod
    def create(cls, limits: Limits | None, name: str) -> _Cgroups:
        """Make the groups with the study's limits; SandboxUnavailable when that is not possible."""
        made: dict[str, Path] = {}
        group = cls(made)
        try:
            for controller in CONTROLLERS:
                optional = controller in OPTIONAL_CONTROLLERS  # a cpu quota and counter are welcome
                base = _cgroup_v1_base(controller)
                if base is None:
                    if optional:
                        continue
                    raise SandboxUnavailable(f"no writable cgroup v1 {controller} controller")
                path = base / name
                if path in made.values():  # co-mounted controllers ("cpu,cpuacct") share a folder
                    made[controller] = path
                    continue
                try:
                    path.mkdir()
                except OSError as exc:
                    if optional:
                        continue
                    raise SandboxUnavailable(f"cannot create cgroup {path}: {exc}") from None
                made[controller] = path
            if limits is not None:
                memory = limits.memory_mb * 1024 * 1024
                group._write("memory", "memory.limit_in_bytes", memory)
                with contextlib.suppress(FileNotFoundError):  # absent without swap accounting
                    group._write("memory", "memory.memsw.limit_in_bytes", memory)
                group._write("pids", "pids.max", limits.pids)
                if "cpu" in made:
                    with contextlib.suppress(OSError, SandboxUnavailable):
                        group._write("cpu", "cpu.cfs_period_us", 100_000)
                        group._write("cpu", "cpu.cfs_quota_us", max(1000, int(limits.cpus * 100_000)))
        except BaseException:
            group.remove(timeout=0)
            raise
        return group

    def _write(self, controller: str, knob: str, value: int) -> None:
        try:
            (self.dirs[controller] / knob).write_text(str(value))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise SandboxUnavailable(f"cannot set {knob} on {self.dirs[controller]}: {exc}") from None

    def procs_files(self) -> list[bytes]:
        return [os.fsencode(path / "cgroup.procs") for path in dict.fromkeys(self.dirs.values())]

    def cpu_seconds(self) -> float | None:
        """CPU time of everything in the group (cpuacct's counter), None without that controller."""
        usage = self._read("cpuacct", "cpuacct.usage").strip()
        return int(usage) / 1e9 if usage.isdigit() else None

    def _read(self, controller: str, knob: str) -> str:
        try:
            return (self.dirs[controller] / knob).read_text()
        except (KeyError, OSError):
            return ""

    def oom_killed(self) -> bool:
        fields = dict(
            line.split(None, 1) for line in self._read("memory", "memory.oom_control").splitlines() if line
        )
        if "oom_kill" in fields:
            return int(fields["oom_kill"]) > 0
        return fields.get("under_oom", "0").strip() == "1"  # kernels before 4.13 have no counter

    def pids_hit(self) -> bool:
        for line in self._read("pids", "pids.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "max" and value.strip().isdigit():
                return int(value) > 0
        return False

    def members(self) -> list[int]:
        found: set[int] = set()
        for controller in self.dirs:
            found.update(int(p) for p in self._read(controller, "cgroup.procs").split() if p.isdigit())
        return sorted(found)

    def kill_all(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            members = self.members()
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for controller, path in list(self.dirs.items()):
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        break
                    self.kill_all(rounds=1)
                    time.sleep(0.05)
            if not path.exists():
                del self.dirs[controller]


def sweep_cgroups() -> int:
    """Remove study groups left by workers of this machine that died (their pid is in the name)."""
    removed = 0
    for controller in CONTROLLERS:
        base = _cgroup_v1_base(controller)
        if base is None:
            continue
        for path in base.glob(f"{CGROUP_PREFIX}*"):
            owner = path.name[len(CGROUP_PREFIX) :].split("-")[0]
            if not owner.isdigit() or process_alive(int(owner)):
                continue
            stale = _Cgroups({controller: path})
            stale.kill_all()
            stale.remove(timeout=1.0)
            removed += not path.exists()
    return removed


@functools.cache
def cgroups_usable() -> bool:
    """Whether this worker can make the memory and pids groups (tried once, then removed)."""
    try:
        _Cgroups.create(None, f"{CGROUP_PREFIX}{os.getpid()}-probe-{uuid.uuid4().hex[:8]}").remove()
    except (SandboxUnavailable, OSError):
        return False
    return True


# -- the backend ---------------------------------------------------------------------------------------


def shared_limits_allowed() -> bool:
    return os.environ.get(SHARED_LIMITS_ENV, "").strip().lower() in ("1", "true", "yes")


class BwrapBackend:
    name = "bwrap"

    def __init__(self, python: str | None = None, cgroups: bool | None = None) -> None:
        """`python`: the interpreter the sandbox runs (default: the sandbox venv, else the worker's);
        `cgroups`: True requires cgroup limits, False uses rlimits only, None (default) uses cgroups where
        the worker can. Sandboxes get a uid each where the worker can give them one (uids.py); a worker
        that can give neither that nor cgroups refuses, unless SHARED_LIMITS_ENV opts in."""
        python = python or default_python()
        reason = unavailable_reason(python)
        if reason is not None:
            raise SandboxUnavailable(f"bwrap backend unavailable: {reason}")
        self.runtime = runtime(python)
        usable = cgroups_usable()
        if cgroups and not usable:
            raise SandboxUnavailable("bwrap backend: cgroup limits were required but cannot be created here")
        self.mode = "cgroup" if (usable if cgroups is None else cgroups) else "rlimit"
        no_uids = uids.unusable_reason()
        self.per_sandbox_uids = no_uids is None
        if not self.per_sandbox_uids and self.mode == "rlimit" and not shared_limits_allowed():
            why_no_cgroups = "cgroup limits were not wanted" if usable else "no writable cgroup v1 groups"
            raise SandboxUnavailable(
                f"bwrap backend refused: sandboxes on this worker would share one process limit ({no_uids}; "
                f"{why_no_cgroups}), so one team's fork bomb would stop another team's sandbox. Run the "
                f"worker as root with {uids.DEFAULT_SLOT_DIR} writable, or give it cgroup v1 memory and pids "
                f"groups, or set {SHARED_LIMITS_ENV}=1 to accept shared limits"
            )
        if usable:
            sweep_cgroups()
        self.prepared: dict[str, install.Prepared] = {}

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "bwrap": version(),
            "limits": self.mode,
            "uids": "per-sandbox" if self.per_sandbox_uids else "shared",
            "python": self.runtime.version,
        }

    # -- uids -------------------------------------------------------------------------------------
    def _slot(self) -> uids.Slot | None:
        """A uid of the sandbox's own, or None where sandboxes share SANDBOX_UID (cgroups, or opted in)."""
        return sandbox_uid_slot(self.name, self.per_sandbox_uids)

    # -- per artifact -----------------------------------------------------------------------------
    def environment(self) -> str:
        """The cache key of this optimizer environment: the interpreter and its packages' folder."""
        stamp = ""
        with contextlib.suppress(OSError):
            stamp = str(os.stat(self.runtime.site).st_mtime_ns)
        digest = hashlib.sha256(f"{self.runtime.executable}\0{self.runtime.version}\0{stamp}".encode())
        return f"bwrap-{digest.hexdigest()[:16]}"

    def prepare(self, submission_dir: Path, limits: Limits) -> install.Prepared | None:
        """Stage the submission and install its bundled wheels, once per content (cached). A zip given
        directly (the host unpacks it in the sandbox) has nothing installed."""
        submission_dir = Path(submission_dir)
        if submission_dir.is_file():
            return None

        def installer(staged: Path, target: Path, sha: str) -> None:
            self._install(staged, target, limits)

        prepared = install.prepare_cached(submission_dir, self.environment(), installer)
        self.prepared[str(submission_dir.resolve())] = prepared
        return prepared

    def _install(self, staged: Path, target: Path, limits: Limits) -> None:
        script = install.install_script(staged, self.runtime.executable)
        slot = self._slot()
        uid, gid = (slot.uid, slot.gid) if slot else (SANDBOX_UID, SANDBOX_GID)
        work = Path(tempfile.mkdtemp(prefix="bwrap-install-", dir=_scratch()))
        group: _Cgroups | None = None
        memory_mb = max(limits.memory_mb, install.INSTALL_MIN_MEMORY_MB)
        pids = max(limits.pids, install.INSTALL_MIN_PIDS)
        try:
            os.chown(target, uid, gid)
            os.chmod(target, 0o700)
            _write_etc(work / "etc", uid, gid)
            if self.mode == "cgroup":
                # The tmpfs pages pip writes are charged to the group too.
                charged = memory_mb + install.INSTALL_MAX_MB + install.INSTALL_TMP_MB
                group = _Cgroups.create(
                    dataclasses.replace(limits, memory_mb=charged, pids=pids),
                    f"{CGROUP_PREFIX}{os.getpid()}-install-{uuid.uuid4().hex[:12]}",
                )
            driver = f"import subprocess\nraise SystemExit(subprocess.call(['/bin/sh', '-c', {script!r}]))\n"
            argv = _sandbox_argv(
                self.runtime,
                work / "etc",
                binds=[(staged, SUBMISSION_MOUNT)],
                rw_binds=[(target, install.INSTALL_OUT)],
                tmpfs_bytes=install.INSTALL_TMP_MB * 1024 * 1024,
                extra_tmpfs=[(install.INSTALL_MOUNT, install.INSTALL_MAX_MB * 1024 * 1024)],
                uid=uid,
                gid=gid,
                command=[self.runtime.executable, "-s", "-P", "-c", _prelude() + driver],
            )
            env = dict(STUDY_ENV)
            env["PYTHONPATH"] = install.install_pythonpath(self.runtime.version, self.runtime.site)
            preexec = _preexec(
                file_size=install.INSTALL_FILE_SIZE_MB * 1024 * 1024,
                cpu=math.ceil(install.INSTALL_TIMEOUT_S),
                nproc=pids if slot is not None or group is None else NPROC_BACKSTOP,
                data=memory_mb * 1024 * 1024 if group is None else None,
                procs_files=group.procs_files() if group else [],
            )
            code, output = _run_bounded(argv, env, str(work), preexec, install.INSTALL_TIMEOUT_S, group)
            if code is None:
                raise install.timed_out()
            if (group is not None and group.oom_killed()) or (
                group is None and "MemoryError" in output and code != 0
            ):
                raise install.out_of_memory(memory_mb)
            if code != 0:
                raise InstallFailed(install.install_error(output, code))
        finally:
            if group is not None:
                group.kill_all()
                group.remove()
            shutil.rmtree(work, ignore_errors=True)
            if slot is not None:
                slot.release()

    # -- per study --------------------------------------------------------------------------------
    def launch(self, submission_dir: Path, limits: Limits) -> LaunchSpec:
        submission_dir = Path(submission_dir)
        prepared: install.Prepared | None = None
        if not submission_dir.is_file():
            prepared = self.prepared.get(str(submission_dir.resolve()))
            if prepared is None:
                prepared = self.prepare(submission_dir, limits)
            assert prepared is not None
            install.touch(prepared)
        return self._launch(limits, submission_dir, prepared)

    def launch_warm(self, limits: Limits) -> LaunchSpec:
        """A sandbox started before its submission is known (its host waits with the image's modules
        imported), bound to two empty per-launch folders at /submission and /install that its `fill`
        links a prepared artifact into (workers/sandbox/warm.py)."""
        return self._launch(limits, None, None)

    def _launch(
        self, limits: Limits, submission_dir: Path | None, prepared: install.Prepared | None
    ) -> LaunchSpec:
        warm = submission_dir is None
        slot = self._slot()
        uid, gid = (slot.uid, slot.gid) if slot else (SANDBOX_UID, SANDBOX_GID)
        work: Path | None = None
        group: _Cgroups | None = None
        started_read, started_write = os.pipe()  # both close-on-exec; the child gets the write end only
        os.set_blocking(started_read, False)
        try:
            work = Path(tempfile.mkdtemp(prefix="bwrap-", dir=_scratch()))
            binds: list[tuple[Path, str]] = []
            site = None
            if warm:  # empty until `fill`
                target = SUBMISSION_MOUNT
                for name, mount in (("submission", SUBMISSION_MOUNT), ("install", install.INSTALL_MOUNT)):
                    (work / name).mkdir()
                    os.chmod(work / name, 0o755)
                    binds.append((work / name, mount))
                site = install.install_site(self.runtime.version)
            elif prepared is None:  # a starter-kit zip given directly; the host unpacks it in /tmp
                assert submission_dir is not None
                target = f"{SUBMISSION_MOUNT}.zip"
                shutil.copyfile(submission_dir, work / "submission.zip")
                os.chmod(work / "submission.zip", 0o644)
                binds.append((work / "submission.zip", target))
            else:
                target = SUBMISSION_MOUNT
                binds.append((prepared.submission, target))
            if prepared is not None and prepared.install is not None:
                binds.append((prepared.install, install.INSTALL_MOUNT))
                site = install.install_site(self.runtime.version)
            _copy_host(work / "host")
            binds.insert(0, (work / "host", HOST_MOUNT))
            _write_etc(work / "etc", uid, gid)
            if self.mode == "cgroup":
                group = _Cgroups.create(limits, f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        except BaseException:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            for fd in (started_read, started_write):
                os.close(fd)
            if slot is not None:
                slot.release()
            raise

        code = _prelude() + bootstrap(started_write, site, warm=warm)
        argv = _sandbox_argv(
            self.runtime,
            work / "etc",
            binds=binds,
            tmpfs_bytes=limits.tmpfs_mb * 1024 * 1024,
            uid=uid,
            gid=gid,
            command=[self.runtime.executable, "-s", "-P", "-c", code, *(["--warm"] if warm else []), target],
        )
        cpu = cpu_backstop_s(limits)
        preexec = _preexec(
            file_size=limits.file_size_mb * 1024 * 1024,
            cpu=cpu,
            nproc=limits.pids if slot is not None or group is None else NPROC_BACKSTOP,
            data=limits.memory_mb * 1024 * 1024 if group is None else None,
            procs_files=group.procs_files() if group else [],
        )
        pipe = {"read": started_read, "write": started_write}
        seen = [False]

        def started() -> bool:
            """Whether the bootstrap wrote the marker (what is in the pipe stays there until read)."""
            if not seen[0] and pipe["read"] >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    seen[0] = STARTED_MARKER in os.read(pipe["read"], 4096)
            return seen[0]

        def kill() -> None:
            if group is not None:
                group.kill_all()

        def cleanup() -> None:
            if group is not None:
                group.kill_all()
                group.remove()
            shutil.rmtree(work, ignore_errors=True)
            for end in ("read", "write"):
                if pipe[end] >= 0:
                    with contextlib.suppress(OSError):
                        os.close(pipe[end])
                    pipe[end] = -1
            if slot is not None:
                slot.release()

        def exit_cause(returncode: int | None) -> str | None:
            if not started():
                # It ended before anything of the submission ran: ours, whatever its exit code says.
                return FailureCause.INFRASTRUCTURE.value
            if returncode == MEMORY_EXIT:
                return FailureCause.RESOURCE_LIMIT.value
            if returncode in (128 + signal.SIGXCPU, -signal.SIGXCPU):
                return FailureCause.RESOURCE_LIMIT.value
            if group is not None and (
                group.oom_killed() or (returncode not in (0, None) and group.pids_hit())
            ):
                return FailureCause.RESOURCE_LIMIT.value
            return None

        def fill(submission: Path) -> bool:
            if submission.is_file():
                return False  # a zip given directly: unpacked by the host, a cold sandbox's job
            key = str(submission.resolve())
            ready = self.prepared.get(key) or self.prepare(submission, limits)
            assert ready is not None
            return warm_fill.fill_prepared(ready, self.runtime.version, work / "submission", work / "install")

        return LaunchSpec(
            argv=argv,
            env=dict(STUDY_ENV),
            cwd=str(work),
            cleanup=cleanup,
            kill=kill,
            preexec=preexec,
            exit_cause=exit_cause,
            pass_fds=(started_write,),
            started=started,
            # The group's counter; in rlimit mode the harness sums the sandbox's process tree instead.
            cpu_seconds=group.cpu_seconds if group is not None and "cpuacct" in group.dirs else None,
            fill=fill if warm else None,
        )


def _run_bounded(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    preexec: Callable[[], None],
    timeout: float,
    group: _Cgroups | None,
    keep_bytes: int = 64 * 1024,
) -> tuple[int | None, str]:
    """Run a sandbox to its end: (exit code, or None when it ran out of time and was killed; the last
    `keep_bytes` of its output)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
        preexec_fn=preexec,
    )
    tail = bytearray()

    def drain() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            tail.extend(chunk)
            del tail[:-keep_bytes]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if group is not None:
            group.kill_all()
        proc.wait()
    reader.join(5)
    with contextlib.suppress(OSError):
        proc.stdout.close()  # type: ignore[union-attr]
    return code, tail.decode("utf-8", errors="replace")


def _preexec(
    file_size: int, cpu: int, nproc: int, data: int | None, procs_files: list[bytes]
) -> Callable[[], None]:
    """Runs in the forked child, as root, before it execs bwrap: join the groups, set the rlimits
    (RLIMIT_DATA only where there is no memory group)."""
    pid_text = b"0"

    def preexec() -> None:
        for path in procs_files:  # writing 0 moves the writing process
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid_text)
            finally:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if data is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (data, data))

    return preexec


def _sandbox_argv(
    rt: Runtime,
    etc: Path,
    binds: list[tuple[Path, str]],
    tmpfs_bytes: int,
    command: list[str],
    uid: int = SANDBOX_UID,
    gid: int = SANDBOX_GID,
    rw_binds: list[tuple[Path, str]] = (),  # type: ignore[assignment]
    extra_tmpfs: list[tuple[str, int]] = (),  # type: ignore[assignment]
) -> list[str]:
    bwrap, setpriv = _bwrap(), _setpriv()
    assert bwrap is not None and setpriv is not None
    args = [
        bwrap,
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "sandbox",
        "--die-with-parent", "--new-session",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(tmpfs_bytes), "--tmpfs", "/tmp"]
    args += ["--perms", "1777", "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm"]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ("passwd", "group", "hosts"):
        args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    for path in ETC_FILES:
        real = os.path.realpath(path)
        if os.path.isfile(real):
            args += ["--ro-bind", real, path]
    made = {"/", "/usr", "/tmp", "/etc", "/proc", "/dev", *SYSTEM_DIRS}
    mounts = [
        *(("--ro-bind", p, p) for p in rt.binds),
        *(("--ro-bind", str(s), t) for s, t in binds),
        *(("--bind", str(s), t) for s, t in rw_binds),
    ]
    for option, source, target in mounts:
        for parent in _ancestors(target):
            if parent not in made:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += [option, str(source), target]
        made.add(target)
    for target, size in extra_tmpfs:  # owned by the sandbox's uid: `--perms` makes it 1777
        args += ["--perms", "1777", "--size", str(size), "--tmpfs", target]
    args += ["--remount-ro", "/", "--chdir", "/tmp"]
    args += ["--cap-drop", "ALL"]
    for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):  # for setpriv only; it drops them all
        args += ["--cap-add", cap]
    args += [
        "--",
        setpriv,
        f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        "--",
        *command,
    ]  # fmt: skip
    return args


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _copy_host(target: Path) -> None:
    """The optimizer host and the protocol module, laid out as the host imports them."""
    (target / "queue_schema").mkdir(parents=True)
    shutil.copyfile(sandbox_host.__file__, target / "host.py")
    shutil.copyfile(protocol.__file__, target / "queue_schema" / "protocol.py")
    (target / "queue_schema" / "__init__.py").write_text("")
    for path in (target, target / "queue_schema"):
        os.chmod(path, 0o755)
    for path in (
        target / "host.py",
        target / "queue_schema" / "protocol.py",
        target / "queue_schema" / "__init__.py",
    ):
        os.chmod(path, 0o644)


def _write_etc(target: Path, uid: int = SANDBOX_UID, gid: int = SANDBOX_GID) -> None:
    """Just enough /etc for the C library and Python: no host accounts, no secrets; the sandbox's own uid
    is `sandbox` (getpass.getuser() and friends need a name)."""
    target.mkdir(parents=True)
    os.chmod(target, 0o755)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{'nobody' if uid == SANDBOX_UID else 'sandbox'}:x:{uid}:{gid}::/tmp:/usr/sbin/nologin\n",
        "group": f"root:x:0:\n{'nogroup' if gid == SANDBOX_GID else 'sandbox'}:x:{gid}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    }
    for name, text in files.items():
        (target / name).write_text(text)
        os.chmod(target / name, 0o644)


def _scratch() -> Path:
    path = state_dir() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
