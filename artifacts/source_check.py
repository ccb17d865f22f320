"""The syntax check of a team's optimizer.py at intake, in a child process with limits.

Parsing is not bounded by the source's size: `x=` followed by 200,000 `-` raises MemoryError, and a
1.9 MiB source took 13 s and 1.3 GiB in the gateway's own process. So the gateway never parses team
source itself: a child (`python -I -S`: no site, no environment, no user folders) sets its own limits
(address space, data, CPU, no files, no core) before it reads the source from stdin, compiles it, and
answers one small JSON verdict on stdout. At most MAX_CHILDREN run at once; a child past WALL_S is killed.

Any failure of the child (a MemoryError or RecursionError in the compiler, killed for CPU or by the
timeout, a crash, no verdict) is the team's: "too complex to parse within the limits". A failure to start
the child at all is ours, and raises (OSError).

Measured on this machine: a 1 MiB source of ordinary code (stdlib modules) compiles in 0.12 s CPU and
63 MiB; 1 MiB data tables (110k floats, a 45k-key dict) in up to 0.4 s and 182 MiB; the hostile 1 MiB
shapes tried (1-tuples, 400k call arguments) reach 250 to 280 MiB. MEMORY_MB leaves ordinary and data-heavy
sources room while the machine's memory stays bounded (MAX_CHILDREN x MEMORY_MB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from artifacts.zip_checks import InvalidSubmission
from queue_schema.untrusted import safe_text

MEMORY_MB = 512
CPU_S = 5
WALL_S = 10.0
MAX_CHILDREN = 2
MAX_VERDICT_BYTES = 4096

_SLOTS = threading.BoundedSemaphore(MAX_CHILDREN)

# The child: our code only (the team's source is data on stdin, compiled, never run). Limits first.
_CHILD = """
import json, resource, sys
memory, cpu = int(sys.argv[1]), int(sys.argv[2])
for which, soft, hard in (
    (resource.RLIMIT_AS, memory, memory), (resource.RLIMIT_DATA, memory, memory),
    (resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_FSIZE, 0, 0), (resource.RLIMIT_CORE, 0, 0),
):
    resource.setrlimit(which, (soft, hard))
source = sys.stdin.buffer.read()
try:
    compile(source, "optimizer.py", "exec", dont_inherit=True)
except SyntaxError as exc:
    verdict = {"ok": False, "kind": "syntax", "line": exc.lineno, "msg": str(exc.msg)[:300]}
except (MemoryError, RecursionError):
    verdict = {"ok": False, "kind": "complex"}
except ValueError as exc:
    verdict = {"ok": False, "kind": "value", "msg": str(exc)[:300]}
else:
    verdict = {"ok": True}
sys.stdout.write(json.dumps(verdict))
"""

TOO_COMPLEX = "optimizer.py is too complex to parse within the limits"


def check_syntax(source: bytes) -> None:
    """Raise InvalidSubmission for a source that does not compile, or that the child could not parse
    within its limits; return None when it compiles. OSError when no child could be started."""
    with _SLOTS:
        verdict = _run_child(source)
    if verdict is None:
        raise InvalidSubmission(TOO_COMPLEX)
    if verdict.get("ok") is True:
        return
    kind = verdict.get("kind")
    if kind == "syntax":
        line = verdict.get("line")
        where = f" line {line}" if isinstance(line, int) else ""
        message = safe_text(verdict.get("msg", "invalid syntax"), limit=200)
        raise InvalidSubmission(f"syntax error in optimizer.py{where}: {message}")
    if kind == "value":  # Python 3.11 reports a NUL byte in the source this way
        raise InvalidSubmission(
            f"optimizer.py cannot be compiled: {safe_text(verdict.get('msg', ''), limit=200)}"
        )
    raise InvalidSubmission(TOO_COMPLEX)


def _run_child(source: bytes) -> dict | None:
    command = [sys.executable, "-I", "-S", "-B", "-c", _CHILD, str(MEMORY_MB * 1024 * 1024), str(CPU_S)]
    # Popen raising (no memory, no processes left, no interpreter) is ours: it propagates.
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={},
        close_fds=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(source, timeout=WALL_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or len(out) > MAX_VERDICT_BYTES:
        return None
    try:
        verdict = json.loads(out)
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None
