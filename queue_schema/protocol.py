"""The line-delimited JSON protocol between the trusted harness and the optimizer host in the sandbox.

Standard library only: this module is copied into the sandbox image next to the host.

Harness -> host, one JSON object per line:
    {"op": "init", "api_config": {...}}
    {"op": "suggest", "n": 8}
    {"op": "observe", "X": [{...}, ...], "y": [0.1, Infinity, ...]}
    {"op": "close"}
Host -> harness, one reply per request, plus one unsolicited `hello` when the submission has loaded:
    {"ok": true, "op": "hello", "optimizer": "ClassName"}
    {"ok": true, "op": "suggest", "X": [...]}
    {"ok": false, "op": "...", "error": {"kind": "...", "type": "...", "message": "..."}}
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
# A reply longer than this is a protocol violation (a batch of suggestions is a few KiB).
MAX_LINE_BYTES = 4 * 1024 * 1024

OP_HELLO = "hello"
OP_INIT = "init"
OP_SUGGEST = "suggest"
OP_OBSERVE = "observe"
OP_CLOSE = "close"

# The host's exit code when the optimizer ran out of memory (a MemoryError under an rlimit): the harness
# reports resource_limit, not a crash.
EXIT_OUT_OF_MEMORY = 86

# Error kinds the host reports.
ERR_LOAD = "load_failed"  # the submission could not be loaded: no optimizer.py, syntax or import error...
ERR_NO_CLASS = "no_optimizer_class"  # optimizer.py never passed a class to experiment_main
ERR_RAISED = "raised"  # the optimizer's own method raised
ERR_BAD_REQUEST = "bad_request"  # the harness sent something the host does not understand


class ProtocolError(Exception):
    """The other side sent something that is not a protocol message."""


def _to_builtin(value: Any) -> Any:
    # numpy scalars and arrays without importing numpy: optimizers routinely return them.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} in a protocol message")


def encode(message: dict[str, Any]) -> bytes:
    # Infinity is legal here: bayesmark hands the optimizer inf for a failed evaluation.
    return (json.dumps(message, default=_to_builtin, allow_nan=True, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict[str, Any]:
    if isinstance(line, bytes):
        if len(line) > MAX_LINE_BYTES:
            raise ProtocolError(f"message longer than {MAX_LINE_BYTES} bytes")
        line = line.decode("utf-8", errors="replace")
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {line[:200]!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"not a JSON object: {line[:200]!r}")
    return message


def ok(op: str, **fields: Any) -> dict[str, Any]:
    return {"ok": True, "op": op, **fields}


def error(op: str, kind: str, message: str, type_: str = "") -> dict[str, Any]:
    return {"ok": False, "op": op, "error": {"kind": kind, "type": type_, "message": message[:2000]}}
