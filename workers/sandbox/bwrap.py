"""The `bwrap` backend: every study's optimizer in a fresh bubblewrap sandbox, for machines with no engine.

Per study (launch): a private copy of the submission (regular files only, world-readable) bound read-only
at /submission; the host code (sandbox_image/host.py and queue_schema/protocol.py) copied and bound
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
10 runs here: p50 0.50 s, p95 0.59 s (process backend: 0.45 s, 0.50 s).

The unprivileged user. rlimits do not bind root, and `bwrap --unshare-all --uid 65534` run as root does
not help: bwrap maps the sandbox uid to the *caller's* uid, so the process is uid 65534 inside but kernel
uid 0 outside. Measured here: /proc/self/uid_map reads `65534 0 1` and with `prlimit --nproc=20` the
sandbox forks 100 children without a failure. So bwrap runs as root *without* a user namespace, keeps only
CAP_SETUID, CAP_SETGID and CAP_SETPCAP, and execs `setpriv --reuid 65534 --regid 65534 --clear-groups
--inh-caps -all --bounding-set -all`, which makes the process really uid/gid 65534 (kernel uid, no
supplementary groups, CapEff = CapPrm = CapBnd = 0, NoNewPrivs 1) before it execs Python. The rlimits are
set in the worker's preexec (as root, where they do not bind) and inherited through bwrap and setpriv;
they bind from the uid switch on. Measured: with RLIMIT_NPROC 20 the sandbox forks 19 children (20
processes of uid 65534), then fork fails with EAGAIN.
This needs the worker to run as root (bwrap then needs no setuid bit and no user namespaces).

Limits, two modes.
- `cgroup` (preferred, chosen when the worker can create cgroup v1 groups next to its own, as root on this
  machine): a memory group (memory.limit_in_bytes = memory.memsw.limit_in_bytes = limits.memory_mb; no
  swap here), a pids group (pids.max = limits.pids) and, when present, a cpu group (cfs quota =
  limits.cpus). The worker's preexec moves the child into them before it execs bwrap, so everything in the
  sandbox is inside. A memory hog is OOM-killed by the kernel; `exit_cause` reads memory.oom_control's
  oom_kill counter (and pids.events) and reports `resource_limit`. Measured: a hog of 32 MB chunks under a
  256 MB group dies at about 224 MB, bwrap exits 137 and oom_kill reads 1. A fork bomb stops at pids.max
  per study, however many sandboxes run on the machine (measured with pids 32: 31 processes inside, the
  32nd task of the group being bwrap itself; in rlimit mode 33: 32 of uid 65534 plus bwrap's root reaper).
  `kill` SIGKILLs whatever is left in the group and cleanup removes the groups. RLIMIT_NPROC stays as a
  machine-wide backstop for uid 65534 (NPROC_BACKSTOP).
- `rlimit` (fallback where cgroups are not writable, e.g. a pure cgroup v2 host): RLIMIT_DATA =
  limits.memory_mb and RLIMIT_NPROC = limits.pids. RLIMIT_DATA rather than RLIMIT_AS: address space is not
  memory, and it fights the numerics. Measured with one OpenBLAS thread, importing numpy, bayesmark,
  scipy.optimize and scikit-learn's gaussian_process peaks at 98 MB resident but 340 MB of address space:
  RLIMIT_AS at 256 MB fails that import (scipy's `_highspy` "failed to map segment"), RLIMIT_DATA at 256 MB
  passes it; unpinned BLAS threads and libraries such as torch reserve far more address space. An
  allocation over the limit raises MemoryError; the in-sandbox bootstrap turns a MemoryError that escapes
  the optimizer into exit code MEMORY_EXIT, which `exit_cause` reports as `resource_limit`. Weaker than
  the cgroup: RLIMIT_DATA is per process and RLIMIT_NPROC counts every uid-65534 process on the machine,
  so concurrent sandboxes share one process budget.
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

`prepare` does nothing yet. TODO(issue 4): bundled wheels (requirements.txt / install_order.txt) are
installed only by the docker backend; here the submission sees the worker's runtime, so the preinstalled
optimizer environment (skopt, hyperopt, ...) is there only if the worker's venv has it, or if the backend
is given another interpreter (`BwrapBackend(python=...)`, e.g. a venv built from the sandbox image's
wheelhouse).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from competition.recovery import process_alive
from competition.spec import Limits
from queue_schema import protocol
from queue_schema.settings import state_dir
from queue_schema.states import FailureCause
from workers.optimizer_process import LaunchSpec
from workers.sandbox.base import THREAD_ENV, SandboxUnavailable

SANDBOX_UID = 65534
SANDBOX_GID = 65534
SUBMISSION_MOUNT = "/submission"
HOST_MOUNT = "/host"
NOFILE = 1024
NPROC_BACKSTOP = 4096  # cgroup mode: all uid-65534 tasks on the machine; the pids group is per study
MEMORY_EXIT = protocol.EXIT_OUT_OF_MEMORY  # the host's exit code for a MemoryError
CPU_SLACK_S = 10
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
    import platform
    import struct

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


# Runs inside the sandbox as `python -s -P -c BOOTSTRAP /submission`, after the prelude: puts the host
# code first on the path. The host itself exits with MEMORY_EXIT when the optimizer runs out of memory.
BOOTSTRAP = f"""\
sys.path.insert(0, {HOST_MOUNT!r})
import host
host.main()
"""


# -- the Python runtime ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """The interpreter the sandbox runs, and the host folders it needs, bound read-only at their paths."""

    executable: str
    version: str
    binds: tuple[str, ...]


_RUNTIME_PROBE = (
    "import json, os, sys; print(json.dumps({'executable': sys.executable, 'version': sys.version.split()[0],"
    " 'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,"
    " os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))]}))"
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
    return Runtime(executable, info["version"], tuple(binds))


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
    try:
        from sandbox_image.build import sandbox_python
    except ImportError:
        return None
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


class _Cgroups:
    """One study's memory, pids (and cpu) groups."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @classmethod
    def create(cls, limits: Limits | None, name: str) -> _Cgroups:
        """Make the groups with the study's limits; SandboxUnavailable when that is not possible."""
        made: dict[str, Path] = {}
        group = cls(made)
        try:
            for controller in ("memory", "pids", "cpu"):
                base = _cgroup_v1_base(controller)
                if base is None:
                    if controller == "cpu":
                        continue  # a cpu quota is welcome, not essential
                    raise SandboxUnavailable(f"no writable cgroup v1 {controller} controller")
                path = base / name
                try:
                    path.mkdir()
                except OSError as exc:
                    if controller == "cpu":
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
        return [os.fsencode(path / "cgroup.procs") for path in self.dirs.values()]

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
    for controller in ("memory", "pids", "cpu"):
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


class BwrapBackend:
    name = "bwrap"

    def __init__(self, python: str | None = None, cgroups: bool | None = None) -> None:
        """`python`: the interpreter the sandbox runs (default: the worker's); `cgroups`: True requires
        cgroup limits, False uses rlimits only, None (default) uses cgroups where the worker can."""
        python = python or default_python()
        reason = unavailable_reason(python)
        if reason is not None:
            raise SandboxUnavailable(f"bwrap backend unavailable: {reason}")
        self.runtime = runtime(python)
        usable = cgroups_usable()
        if cgroups and not usable:
            raise SandboxUnavailable("bwrap backend: cgroup limits were required but cannot be created here")
        self.mode = "cgroup" if (usable if cgroups is None else cgroups) else "rlimit"
        if usable:
            sweep_cgroups()

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "bwrap": version(), "limits": self.mode, "python": self.runtime.version}

    def prepare(self, submission_dir: Path, limits: Limits) -> None:
        # TODO(issue 4): bundled wheels (requirements.txt, install_order.txt) are not installed by this
        # backend yet; the submission sees the sandbox interpreter's own packages.
        return None

    def launch(self, submission_dir: Path, limits: Limits) -> LaunchSpec:
        submission_dir = Path(submission_dir)
        work = Path(tempfile.mkdtemp(prefix="bwrap-", dir=_scratch()))
        group: _Cgroups | None = None
        try:
            if submission_dir.is_file():  # a starter-kit zip given directly; the host unpacks it in /tmp
                target = f"{SUBMISSION_MOUNT}.zip"
                shutil.copyfile(submission_dir, work / "submission.zip")
                os.chmod(work / "submission.zip", 0o644)
                submission_bind = (work / "submission.zip", target)
            else:
                target = SUBMISSION_MOUNT
                _copy_tree(submission_dir, work / "submission")
                submission_bind = (work / "submission", target)
            _copy_host(work / "host")
            _write_etc(work / "etc")
            if self.mode == "cgroup":
                group = _Cgroups.create(limits, f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

        argv = _sandbox_argv(
            self.runtime,
            work / "etc",
            binds=[(work / "host", HOST_MOUNT), submission_bind],
            tmpfs_bytes=limits.tmpfs_mb * 1024 * 1024,
            command=[self.runtime.executable, "-s", "-P", "-c", _prelude() + BOOTSTRAP, target],
        )
        preexec = _preexec(limits, group.procs_files() if group else [], rlimit_mode=group is None)

        def kill() -> None:
            if group is not None:
                group.kill_all()

        def cleanup() -> None:
            if group is not None:
                group.kill_all()
                group.remove()
            shutil.rmtree(work, ignore_errors=True)

        def exit_cause(returncode: int | None) -> str | None:
            if returncode == MEMORY_EXIT:
                return FailureCause.RESOURCE_LIMIT.value
            if returncode in (128 + signal.SIGXCPU, -signal.SIGXCPU):
                return FailureCause.RESOURCE_LIMIT.value
            if group is not None and (
                group.oom_killed() or (returncode not in (0, None) and group.pids_hit())
            ):
                return FailureCause.RESOURCE_LIMIT.value
            return None

        return LaunchSpec(
            argv=argv,
            env=dict(STUDY_ENV),
            cwd=str(work),
            cleanup=cleanup,
            kill=kill,
            preexec=preexec,
            exit_cause=exit_cause,
        )


def _preexec(limits: Limits, procs_files: list[bytes], rlimit_mode: bool) -> Callable[[], None]:
    """Runs in the forked child, as root, before it execs bwrap: join the groups, set the rlimits."""
    file_size = limits.file_size_mb * 1024 * 1024
    cpu = math.ceil(max(1.0, limits.cpus) * (limits.suggest_budget_s + limits.call_timeout_s)) + CPU_SLACK_S
    nproc = limits.pids if rlimit_mode else NPROC_BACKSTOP
    memory = limits.memory_mb * 1024 * 1024
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
        if rlimit_mode:
            resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    return preexec


def _sandbox_argv(
    rt: Runtime,
    etc: Path,
    binds: list[tuple[Path, str]],
    tmpfs_bytes: int,
    command: list[str],
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
    for source, target in [*((p, p) for p in rt.binds), *((str(s), t) for s, t in binds)]:
        for parent in _ancestors(target):
            if parent not in made:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", str(source), target]
        made.add(target)
    args += ["--remount-ro", "/", "--chdir", "/tmp"]
    args += ["--cap-drop", "ALL"]
    for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):  # for setpriv only; it drops them all
        args += ["--cap-add", cap]
    args += [
        "--",
        setpriv,
        f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        "--",
        *command,
    ]  # fmt: skip
    return args


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _copy_tree(source: Path, target: Path) -> None:
    """Regular files and folders only (no symlinks, devices, fifos), readable by the sandbox's uid."""
    target.mkdir()
    os.chmod(target, 0o755)
    for current, dirs, files in os.walk(source, followlinks=False):
        rel = os.path.relpath(current, source)
        here = target if rel == "." else target / rel
        for name in list(dirs):
            if os.path.islink(os.path.join(current, name)):
                dirs.remove(name)
                continue
            (here / name).mkdir()
            os.chmod(here / name, 0o755)
        for name in files:
            path = os.path.join(current, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            shutil.copyfile(path, here / name, follow_symlinks=False)
            os.chmod(here / name, 0o644)


def _copy_host(target: Path) -> None:
    """The optimizer host and the protocol module, laid out as the host imports them."""
    import queue_schema.protocol
    import sandbox_image.host

    (target / "queue_schema").mkdir(parents=True)
    shutil.copyfile(sandbox_image.host.__file__, target / "host.py")
    shutil.copyfile(queue_schema.protocol.__file__, target / "queue_schema" / "protocol.py")
    (target / "queue_schema" / "__init__.py").write_text("")
    for path in (target, target / "queue_schema"):
        os.chmod(path, 0o755)
    for path in (
        target / "host.py",
        target / "queue_schema" / "protocol.py",
        target / "queue_schema" / "__init__.py",
    ):
        os.chmod(path, 0o644)


def _write_etc(target: Path) -> None:
    """Just enough /etc for the C library and Python: no host accounts, no secrets."""
    target.mkdir(parents=True)
    os.chmod(target, 0o755)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"nobody:x:{SANDBOX_UID}:{SANDBOX_GID}:nobody:/tmp:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nnogroup:x:{SANDBOX_GID}:\n",
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
