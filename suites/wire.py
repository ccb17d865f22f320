"""The objective process's messages: one JSON object per line each way, one reply per request.

Standard library only, and nothing of the project: the server loads this file by path inside a suite's own
environment.

Request: `{"id": n, "op": OP, ...}`. Reply: `{"id": n, "ok": true, ...}`, or
`{"id": n, "ok": false, "kind": "raised" | "bad_request", "error": "one line"}`: "raised" when the
objective's own code raised (an evaluate that raises is scored inf, as bayesmark does for its models),
"bad_request" when the request itself was wrong (ours). A request whose id cannot be read is answered
with id null.

Ops and their fields (request -> reply):
- hello -> {"protocol": 1, "backend": str, "versions": {"python": str, "numpy": str?, "cocoex": str?}}
- load {problem, source} -> {} (python backend: an objective file's source text)
- describe {problem} -> {"api_config": {...bayesmark's format...}, "optimum": number | null}
- evaluate {problem, params, seed} -> {"loss": number | "nan" | "inf" | "-inf"}
- catalogue -> {"problems": [names] | null} (null: not a finite list)

JSON has no NaN or infinity: a loss that is not finite travels as one of the strings "nan", "inf",
"-inf" (`encode_float`, `decode_float`); no other field may hold a non-finite number. Every line, request
or reply, is at most MAX_LINE_BYTES with its newline; both ends refuse a longer one.
"""

from __future__ import annotations

import json
import math
from typing import Any

PROTOCOL = 1
MAX_LINE_BYTES = 1 << 20
ERROR_CHARS = 500

HELLO = "hello"
LOAD = "load"
DESCRIBE = "describe"
EVALUATE = "evaluate"
CATALOGUE = "catalogue"
OPS = frozenset({HELLO, LOAD, DESCRIBE, EVALUATE, CATALOGUE})

RAISED = "raised"
BAD_REQUEST = "bad_request"
KINDS = frozenset({RAISED, BAD_REQUEST})

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class WireError(ValueError):
    """A line that is not a message of this protocol (too long, not JSON, not the expected shape)."""


def one_line(text: str, limit: int = ERROR_CHARS) -> str:
    """An error message as one bounded line."""
    flat = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    # numpy scalars (a suggested np.int64, a cocoex np.float64 subclass is already a float) expose item().
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode(message: dict[str, Any]) -> bytes:
    """One line, newline included."""
    try:
        text = json.dumps(message, allow_nan=False, separators=(",", ":"), default=_plain)
    except (TypeError, ValueError) as exc:
        raise WireError(f"cannot encode the message: {one_line(str(exc))}") from None
    data = text.encode() + b"\n"
    if len(data) > MAX_LINE_BYTES:
        raise WireError(f"message of {len(data)} bytes is over the {MAX_LINE_BYTES}-byte line limit")
    return data


def _no_constant(name: str) -> Any:
    raise WireError(f"{name} is not JSON")


def decode(line: bytes) -> dict[str, Any]:
    """A message from one line (with or without its newline)."""
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"line over the {MAX_LINE_BYTES}-byte limit")
    try:
        message = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"not JSON: {one_line(str(exc), 200)}") from None
    if not isinstance(message, dict):
        raise WireError("a message is a JSON object")
    return message


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def request(id_: int, op: str, **fields: Any) -> dict[str, Any]:
    return {"id": id_, "op": op, **fields}


def ok(id_: int | None, **fields: Any) -> dict[str, Any]:
    return {"id": id_, "ok": True, **fields}


def failed(id_: int | None, kind: str, error: str) -> dict[str, Any]:
    return {"id": id_, "ok": False, "kind": kind, "error": one_line(error)}


def check_request(message: dict[str, Any]) -> tuple[int, str]:
    """(id, op) of a well-formed request."""
    if not _is_id(message.get("id")):
        raise WireError("a request's id is an integer")
    op = message.get("op")
    if op not in OPS:
        raise WireError(f"unknown op {one_line(repr(op), 60)}")
    return message["id"], op


def check_reply(message: dict[str, Any], expected_id: int) -> dict[str, Any]:
    """The reply to request `expected_id`, checked for shape (what its fields hold is the caller's)."""
    if message.get("id") != expected_id or not _is_id(message.get("id")):
        raise WireError(f"reply to request {expected_id} has id {one_line(repr(message.get('id')), 40)}")
    if message.get("ok") is True:
        return message
    if message.get("ok") is not False:
        raise WireError("a reply's ok is true or false")
    if message.get("kind") not in KINDS or not isinstance(message.get("error"), str):
        raise WireError("a failed reply has a known kind and an error text")
    return message


def encode_float(value: float) -> float | str:
    """A finite float as itself, any other as "nan", "inf" or "-inf"."""
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def decode_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    raise WireError(f"not a number: {one_line(repr(value), 60)}")
