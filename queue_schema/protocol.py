"""The line-delimited JSON protocol between the trusted harness and the optimizer host in the sandbox.

Standard library only: this module is copied into the sandbox image next to the host.

Harness -> host, one JSON object per line:
    {"op": "load"}                    (to a warm host only, once its submission is in place; no reply
                                       but the hello that follows)
    {"op": "init", "api_config": {...}, "seed": 123}
    {"op": "suggest", "n": 8}
    {"op": "observe", "X": [{...}, ...], "y": [0.1, Infinity, ...]}
    {"op": "close"}
Host -> harness, one reply per request, plus one `hello` when the submission has loaded:
    {"ok": true, "op": "hello", "optimizer": "ClassName", "version": 1}
    {"ok": true, "op": "init"}        (and likewise for observe and close)
    {"ok": true, "op": "suggest", "X": [{...}, ...]}
    {"ok": false, "op": "...", "error": {"kind": "...", "type": "...", "message": "..."}}

Everything the host sends is the team's: the optimizer runs in the host's process and can write any bytes
on the channel. So the harness reads a reply with `decode_reply`, which cannot fail in any way but
`ProtocolError`: the line is bounded (bytes, nesting depth, number length) before and while json parses
it, every failure json can raise is caught, and the result is checked against the exact schema of the
expected reply (keys, types; no NaN or Infinity, no duplicate keys) and returned as a typed object. The
harness never looks into a team's dict itself.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

PROTOCOL_VERSION = 1
# The longest line either side reads at all (a request with a large api_config; the harness holds each
# reply to a much smaller cap per call, see workers/optimizer_process.py).
MAX_LINE_BYTES = 4 * 1024 * 1024
# The longest reply to hello, init, observe or close: one error message (the host cuts it to 2,000
# characters, at most 6 bytes each once JSON-escaped) and a little framing.
CONTROL_REPLY_BYTES = 64 * 1024
# A reply is at most {"X": [{name: value}]}: three levels. Requests carry api_config's lists: four.
MAX_DEPTH = 16
# A JSON number longer than this is refused before Python converts it (a float needs at most 24
# characters; Python refuses ints over 4,300 digits with a ValueError of its own).
MAX_NUMBER_CHARS = 100
MAX_ERROR_MESSAGE = 2000
MAX_ERROR_TYPE = 200

OP_HELLO = "hello"
OP_INIT = "init"
OP_SUGGEST = "suggest"
OP_OBSERVE = "observe"
OP_CLOSE = "close"
OPS = (OP_HELLO, OP_INIT, OP_SUGGEST, OP_OBSERVE, OP_CLOSE)
# Harness -> warm host: the submission is in place, load it (sandbox_image/host.py's --warm).
OP_LOAD = "load"
# The op of the host's answer to a request it could not read at all.
OP_UNKNOWN = "?"

# The host's exit code when the optimizer ran out of memory (a MemoryError under an rlimit): the harness
# reports resource_limit, not a crash.
EXIT_OUT_OF_MEMORY = 86

# Error kinds the host reports.
ERR_LOAD = "load_failed"  # the submission could not be loaded: no optimizer.py, syntax or import error...
ERR_NO_CLASS = "no_optimizer_class"  # optimizer.py never passed a class to experiment_main
ERR_RAISED = "raised"  # the optimizer's own method raised
ERR_BAD_REQUEST = "bad_request"  # the harness sent something the host does not understand


class ProtocolError(Exception):
    """The other side sent something that is not a protocol message (the message says what, briefly,
    without echoing the bytes)."""


# -- typed replies ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    optimizer: str
    version: int
    ok: bool = True
    op: str = OP_HELLO


@dataclass(frozen=True)
class Done:
    """An ok reply with nothing in it: init, observe, close."""

    op: str
    ok: bool = True


@dataclass(frozen=True)
class Suggested:
    """An ok reply to suggest. The points are dicts of names to JSON values, unchecked against the space
    (queue_schema/suggestions.py does that): only their shape is the protocol's."""

    points: list[dict[str, Any]]
    ok: bool = True
    op: str = OP_SUGGEST


@dataclass(frozen=True)
class Failed:
    """An error reply: the host could not load the submission, or the optimizer's method raised."""

    op: str
    kind: str
    type: str
    message: str
    ok: bool = False


ReplyMessage = Hello | Done | Suggested | Failed


# -- encoding --------------------------------------------------------------------------------------------


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


def ok(op: str, **fields: Any) -> dict[str, Any]:
    return {"ok": True, "op": op, **fields}


def error(op: str, kind: str, message: str, type_: str = "") -> dict[str, Any]:
    return {
        "ok": False,
        "op": op,
        "error": {"kind": kind, "type": type_[:MAX_ERROR_TYPE], "message": message[:MAX_ERROR_MESSAGE]},
    }


# -- decoding --------------------------------------------------------------------------------------------

# One left-to-right pass: a JSON string (escapes included; an unterminated one runs to the end of the
# line), or a bracket outside strings. Linear: a match never starts inside an earlier one.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|([\[\]{}])', re.DOTALL)
_STEP = {"": 0, "[": 1, "{": 1, "]": -1, "}": -1}


def _depth(text: str) -> int:
    """How deeply the brackets outside strings nest."""
    return max(accumulate(map(_STEP.__getitem__, _TOKEN.findall(text))), default=0)


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ProtocolError(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _float_parser(allow_non_finite: bool) -> Any:
    def parse(text: str) -> float:
        if len(text) > MAX_NUMBER_CHARS:
            raise ProtocolError(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        value = float(text)
        if not allow_non_finite and not math.isfinite(value):
            raise ProtocolError(f"a number too large for a float ({len(text)} characters)")
        return value

    return parse


def _constant_parser(allow_non_finite: bool) -> Any:
    def parse(name: str) -> float:
        if not allow_non_finite:
            raise ProtocolError(f"{name} where a number is expected")
        return float(name)

    return parse


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ProtocolError("an object with a repeated key")
    return result


def decode(
    line: bytes | str, *, max_bytes: int = MAX_LINE_BYTES, allow_non_finite: bool = True
) -> dict[str, Any]:
    """One line as a JSON object, or ProtocolError and nothing else: at most `max_bytes`, strict UTF-8,
    nesting at most MAX_DEPTH, numbers at most MAX_NUMBER_CHARS characters, no repeated keys;
    NaN/Infinity only with `allow_non_finite` (the harness's requests carry inf losses; replies never
    need them)."""
    try:
        if isinstance(line, bytes | bytearray):
            if len(line) > max_bytes:
                raise ProtocolError(f"a line of {len(line)} bytes (at most {max_bytes})")
            try:
                text = bytes(line).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"bytes that are not UTF-8 (at byte {exc.start})") from None
        elif isinstance(line, str):
            text = line
            if len(text) > max_bytes:
                raise ProtocolError(f"a line of {len(text)} characters (at most {max_bytes})")
        else:
            raise ProtocolError(f"a {type(line).__name__}, not a line")
        depth = _depth(text)
        if depth > MAX_DEPTH:
            raise ProtocolError(f"JSON nested {depth} deep (at most {MAX_DEPTH})")
        try:
            message = json.loads(
                text,
                parse_int=_bounded_int,
                parse_float=_float_parser(allow_non_finite),
                parse_constant=_constant_parser(allow_non_finite),
                object_pairs_hook=_unique_keys,
            )
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    except ProtocolError:
        raise
    except MemoryError:
        raise  # the reading side's own memory, not the message (the line is bounded)
    except Exception as exc:  # noqa: BLE001 - whatever else json or a hook raises is a bad message
        raise ProtocolError(f"unreadable message ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a JSON {_json_type(message)}, not an object")
    return message


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _keys(message: dict[str, Any], what: str, required: set[str]) -> None:
    if set(message) != required:
        missing = sorted(required - set(message))
        extra = sorted(set(message) - required)
        parts = []
        if missing:
            parts.append(f"without {', '.join(missing)}")
        if extra:
            parts.append(f"with {len(extra)} unexpected key(s)")
        raise ProtocolError(f"{what} {' and '.join(parts)}")


def _string(value: Any, what: str, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} is a {_json_type(value)}, not a string")
    if limit is not None and len(value) > limit:
        raise ProtocolError(f"{what} is {len(value)} characters long (at most {limit})")
    return value


def decode_reply(line: bytes, expected: str, *, max_bytes: int = CONTROL_REPLY_BYTES) -> ReplyMessage:
    """The host's reply to `expected` (an op), typed, or ProtocolError (and never anything else)."""
    message = decode(line, max_bytes=max_bytes, allow_non_finite=False)
    if "ok" not in message or not isinstance(message["ok"], bool):
        raise ProtocolError("a reply whose 'ok' is missing or not true/false")
    op = message.get("op")
    if not isinstance(op, str):
        raise ProtocolError("a reply whose 'op' is missing or not a string")
    if not message["ok"]:
        if op not in (expected, OP_UNKNOWN):
            raise ProtocolError(f"an error reply to another call than {expected}")
        _keys(message, "an error reply", {"ok", "op", "error"})
        detail = message["error"]
        if not isinstance(detail, dict):
            raise ProtocolError(f"an error reply whose 'error' is a {_json_type(detail)}, not an object")
        _keys(detail, "an error reply's 'error'", {"kind", "type", "message"})
        return Failed(
            op=op,
            kind=_string(detail["kind"], "the error's kind", 100),
            type=_string(detail["type"], "the error's type", MAX_ERROR_TYPE),
            message=_string(detail["message"], "the error's message", MAX_ERROR_MESSAGE),
        )
    if op != expected:
        raise ProtocolError(f"a reply to another call than {expected}")
    if op == OP_HELLO:
        _keys(message, "a hello", {"ok", "op", "optimizer", "version"})
        version = message["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ProtocolError("a hello whose version is not an integer")
        return Hello(optimizer=_string(message["optimizer"], "the optimizer's name", 200), version=version)
    if op == OP_SUGGEST:
        _keys(message, "a suggest reply", {"ok", "op", "X"})
        points = message["X"]
        if not isinstance(points, list):
            raise ProtocolError(f"a suggest reply whose X is a {_json_type(points)}, not a list")
        for point in points:
            if not isinstance(point, dict):
                raise ProtocolError(f"a suggest reply whose X holds a {_json_type(point)}, not an object")
        return Suggested(points=points)
    _keys(message, f"a reply to {op}", {"ok", "op"})
    return Done(op=op)
