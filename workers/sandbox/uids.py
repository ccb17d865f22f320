"""One unprivileged uid per running sandbox, so that nothing counted per uid is shared between sandboxes.

The kernel counts some limits per real uid, machine-wide: RLIMIT_NPROC (every process and thread of the
uid), inotify instances and watches, pipe buffer pages, POSIX message queues. With one sandbox uid for
every study of the machine, one team's fork bomb held the process budget of all the others (issue 14,
finding 8: the next sandbox could not even exec its interpreter, and that team was charged). So the bwrap
backend gives each sandbox (and each install) its own uid and gid, UID_BASE + slot, for as long as it
lives; so does the docker backend (measured with every container as uid 10001: one container holding the
128 inotify instances of fs.inotify.max_user_instances left another container's inotify_init1 failing
with EMFILE).

A slot is held by an exclusive flock on <SLOT_DIR>/<uid>.lock, taken by the worker when it launches the
sandbox and released by the sandbox's cleanup. The lock belongs to the worker's open file, so a worker
that dies releases its slots with it (its sandboxes die with it too: `--die-with-parent`). The folder is
machine-wide (/run, not the state folder) because uids are: two workers of one machine with different
state folders must not hand out the same uid. A slot whose uid still owns a process (a sandbox of a dead
worker not yet reaped, a zombie) is skipped, never killed: a uid is handed out only when no process runs
as it. The range sits above the subordinate-uid ranges useradd, LXD and systemd-nspawn allocate by default
(up to about 1.9e9) and below 2^31.

BBO_SANDBOX_UID_DIR moves the slot folder (it must be on a file system where flock works and shared by
every worker of the machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from pathlib import Path

from workers.errors import NoSlot  # noqa: F401 - re-exported for callers

UID_BASE = 2_000_000_000
SLOTS = 4096
SLOT_DIR_ENV = "BBO_SANDBOX_UID_DIR"
DEFAULT_SLOT_DIR = "/run/bbo-arena/sandbox-uids"


def slot_dir() -> Path:
    return Path(os.environ.get(SLOT_DIR_ENV) or DEFAULT_SLOT_DIR)


def unusable_reason(switched_by_worker: bool = True) -> str | None:
    """Why per-sandbox uids cannot be given here, or None. `switched_by_worker`: the worker itself
    switches the sandbox to its uid (bwrap, which needs root for it); a container engine needs not."""
    if switched_by_worker and os.geteuid() != 0:
        return "the worker is not root, so it cannot switch a sandbox to a uid of its own"
    folder = slot_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = folder / f".probe-{os.getpid()}"
        with open(probe, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        probe.unlink()
    except OSError as exc:
        return f"the uid slot folder {folder} is not usable ({exc.strerror or exc})"
    return None


class Slot:
    """A uid (and the gid of the same number) held for one sandbox; release() hands it back."""

    def __init__(self, uid: int, handle) -> None:
        self.uid = uid
        self.gid = uid
        self._handle = handle

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()  # closing the file drops the flock

    def __del__(self) -> None:  # a launch that is dropped without its cleanup still gives the uid back
        self.release()


def _uids_in_use() -> set[int]:
    """Real uids of every process of the machine (zombies included: they still count for RLIMIT_NPROC)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError), open(f"/proc/{entry.name}/status", "rb") as handle:
                for line in handle:
                    if line.startswith(b"Uid:"):
                        found.add(int(line.split()[1]))
                        break
    return found


def acquire() -> Slot:
    """A free slot, held until released; NoSlot when none is free or the folder is unusable."""
    folder = slot_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise NoSlot(f"cannot make the uid slot folder {folder}: {exc.strerror or exc}") from None
    busy = _uids_in_use()
    start = random.randrange(SLOTS)  # spread workers over the range; no uid is reused the moment it frees
    for step in range(SLOTS):
        uid = UID_BASE + (start + step) % SLOTS
        if uid in busy:
            continue
        try:
            handle = open(folder / f"{uid}.lock", "a")  # noqa: SIM115 - held for the sandbox's life
        except OSError as exc:
            raise NoSlot(f"cannot open a uid slot in {folder}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return Slot(uid, handle)
    raise NoSlot(f"all {SLOTS} sandbox uids of this machine are in use")


def in_range(uid: int) -> bool:
    return UID_BASE <= uid < UID_BASE + SLOTS
