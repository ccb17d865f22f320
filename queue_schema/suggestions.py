"""The declared search space, exactly: what a suggested point may hold.

Standard library only. bayesmark's own check (`JointSpace.validate`) casts before it compares, so it lets
through a list of in-range values for an int or real parameter (`hidden_layer_sizes: [200, 200, 200]`
builds a three-layer MLP where the space allows one), non-integral floats, strings and booleans for ints,
anything at all for a bool. Here a suggested value is a scalar of its parameter's declared type:

- real: a finite number (not a boolean) in [lo, hi] of the declared range, in the original space whatever
  the warp (log, logit, bilog); within bayesmark's own tolerance of a bound (numpy.isclose: 1e-8 + 1e-5 x
  |bound|), which optimizers working in a warped space produce (exp(log(1e-5)) is 9.999999999999999e-06),
  it is clipped to the bound. A real declared with `values` takes one of them.
- int: an integral number (`3` or `3.0`; not `2.9`, `"3"`, `true` or a list) in [lo, hi] exactly, or one
  of its `values`.
- bool: `true` or `false`, or the number 0 or 1 (the 2020 starter kit's scikit-optimize example sends
  those), normalised to false or true.
- cat, ordinal: one of its values, the exact string.

Each point has exactly the declared names, and a batch exactly the number of points asked for. Anything
else raises `OutOfSpace`: the harness fails the submission as optimizer_crashed, as bayesmark does for its
own out-of-range. Accepted values are normalised to their type (int as int, real as float, bool as bool,
cat as the declared string) before bayesmark or the store sees them.

The stored bound. A normalised value is at most `value_chars(param)` characters of JSON: 24 for a real
(the longest text of any float, `-2.2250738585072014e-308`, in Python's repr and in the store's JSON
alike), the digits of the longer bound for an int, 5 for a bool, the longest JSON-escaped value for a cat.
A point is at most `max_point_bytes(space)` (names, values, quotes, colons, commas), so a study's stored
suggestions are at most rounds x (batch x (max_point_bytes + 1) + 2) + 1 bytes, whatever the optimizer
sends, and the whole stored StudyResult at most rounds x batch x (max_point_bytes + 51) + rounds x 8 +
4 KiB (two losses of at most 24 characters per evaluation, brackets, and our own provenance):
- demo spec (8 rounds x 4), largest space MLP-sgd (8 parameters): 271 bytes a point, 8,721 bytes of
  suggestions, a stored study at most 14,464 bytes (10,642 measured for a maximal one).
- neurips2020 (16 rounds x 8), largest space MLP-adam (9 parameters): 303 bytes a point, 38,945 bytes of
  suggestions, a stored study at most 49,536 bytes (about 42,790 measured), 14.2 MiB for a submission of 30
  problems x 10 studies (before: one 4 MB suggestion passed, 61 MiB a study, about 18 GiB a submission).
tests/contract/test_protocol_properties.py::test_a_maximal_study_is_stored_within_the_bound measures both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

REAL, INT, BOOL, CAT = "real", "int", "bool", "cat"
_KINDS = {"real": REAL, "int": INT, "bool": BOOL, "cat": CAT, "ordinal": CAT}
FLOAT_CHARS = 24  # len(repr(-2.2250738585072014e-308)): no float's shortest repr is longer
# Floor of a suggest reply's cap: a well-behaved batch is far smaller; a JSON number a little longer
# than the shortest repr (an optimizer serialising "0.10000000000000001") still fits.
MIN_SUGGEST_REPLY_BYTES = 64 * 1024
NUMBER_TEXT_CHARS = 100  # the protocol's own cap on one JSON number (protocol.MAX_NUMBER_CHARS)
_SHOWN = 60


class OutOfSpace(Exception):
    """A suggestion that is not a point of the declared space (bounded, printable message)."""


class SpaceError(Exception):
    """An api_config this module cannot check: ours (the problem's definition), never the team's."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # REAL, INT, BOOL or CAT
    lo: float | int | None = None
    hi: float | int | None = None
    values: tuple[Any, ...] | None = None  # declared values (cat always; int/real when given)

    def describe(self) -> str:
        if self.kind == BOOL:
            return "true or false (or 0 or 1)"
        if self.values is not None:
            shown = ", ".join(_show(v) for v in self.values[:5])
            more = ", ..." if len(self.values) > 5 else ""
            return f"one of the {self.kind} values [{shown}{more}]"
        article = "an" if self.kind == INT else "a"
        what = "integral number" if self.kind == INT else "finite number"
        return f"{article} {self.kind}: one {what} in [{self.lo}, {self.hi}]"


Space = dict[str, Param]


def compile_space(api_config: dict[str, Any]) -> Space:
    """bayesmark's api_config as checkable parameters; SpaceError if it is not one bayesmark accepts."""
    if not isinstance(api_config, dict) or not api_config:
        raise SpaceError("an api_config is a non-empty dict")
    space: Space = {}
    for name, config in api_config.items():
        if not isinstance(name, str) or not isinstance(config, dict):
            raise SpaceError(f"parameter {name!r}: not a name with a dict of settings")
        kind = _KINDS.get(config.get("type"))  # type: ignore[arg-type]
        if kind is None:
            raise SpaceError(f"parameter {name!r}: unknown type {config.get('type')!r}")
        values, range_ = config.get("values"), config.get("range")
        if kind == BOOL:
            space[name] = Param(name, BOOL)
        elif kind == CAT:
            if not values or not all(isinstance(v, str) for v in values):
                raise SpaceError(f"parameter {name!r}: a cat parameter declares string values")
            space[name] = Param(name, CAT, values=tuple(sorted(set(values))))
        elif values is not None:
            numbers = [_declared_number(name, kind, v) for v in values]
            if not numbers:
                raise SpaceError(f"parameter {name!r}: empty values")
            ordered = tuple(sorted(set(numbers)))
            space[name] = Param(name, kind, lo=ordered[0], hi=ordered[-1], values=ordered)
        else:
            if range_ is None or len(range_) != 2:
                raise SpaceError(f"parameter {name!r}: a {kind} parameter declares a range or values")
            lo, hi = (_declared_number(name, kind, v) for v in range_)
            if not lo <= hi:
                raise SpaceError(f"parameter {name!r}: range {range_!r} is not ordered")
            space[name] = Param(name, kind, lo=lo, hi=hi)
    return space


def _declared_number(name: str, kind: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) and not hasattr(value, "item"):
        raise SpaceError(f"parameter {name!r}: {value!r} is not a number")
    number = value.item() if hasattr(value, "item") else value  # numpy scalars
    if kind == INT:
        if not float(number).is_integer():
            raise SpaceError(f"parameter {name!r}: {value!r} is not an integer")
        return int(number)
    if not math.isfinite(number):
        raise SpaceError(f"parameter {name!r}: {value!r} is not finite")
    return float(number)


# -- checking --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A bounded, printable picture of a team's value."""
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    text = json.dumps(value, ensure_ascii=True) if _jsonable(value) else f"a {type(value).__name__}"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tolerance(bound: float) -> float:
    return 1e-8 + 1e-5 * abs(bound)  # numpy.isclose's defaults, as bayesmark's clip_chk uses them


def check_value(param: Param, value: Any) -> Any:
    """`value` normalised to its parameter's type, or OutOfSpace."""
    if param.kind == BOOL:
        if isinstance(value, bool):
            return value
        # 0 and 1 too: the 2020 starter kit's scikit-optimize example declares a bool as Integer(0, 1)
        # and sends those, which bayesmark accepted; refusing them failed that unchanged example.
        if _is_number(value) and value in (0, 1):
            return bool(value)
    elif param.kind == CAT:
        if isinstance(value, str) and param.values is not None:
            for declared in param.values:
                if value == declared:
                    return declared
    elif _is_number(value):
        # Compared before any conversion: an int too large for a float is simply out of range.
        if param.kind == INT:
            integral = isinstance(value, int) or (math.isfinite(value) and value.is_integer())
            if integral:
                number = int(value)
                if param.values is not None:
                    if number in param.values:
                        return number
                elif param.lo <= number <= param.hi:  # type: ignore[operator]
                    return number
        elif isinstance(value, int) or math.isfinite(value):
            if param.values is not None:
                for declared in param.values:
                    if value == declared:
                        return float(declared)
            else:
                lo, hi = float(param.lo), float(param.hi)  # type: ignore[arg-type]
                if lo - _tolerance(lo) <= value <= hi + _tolerance(hi):
                    return min(max(float(value), lo), hi)
    raise OutOfSpace(f"{_show(param.name)}={_show(value)} is out of range ({param.describe()})")


def check_point(point: Any, space: Space) -> dict[str, Any]:
    if not isinstance(point, dict):
        raise OutOfSpace(f"a point is {_show(point)}, not an object of parameter values")
    if point.keys() != space.keys():
        missing = sorted(space.keys() - point.keys())
        extra = sorted(k for k in point if k not in space)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(_show(k) for k in missing[:5]))
        if extra:
            parts.append(f"{len(extra)} unknown (" + ", ".join(_show(k) for k in extra[:3]) + ")")
        raise OutOfSpace(f"a point has the wrong parameters: {'; '.join(parts)}")
    return {name: check_value(param, point[name]) for name, param in space.items()}


def check_batch(points: Any, space: Space, n: int) -> list[dict[str, Any]]:
    """Exactly `n` points of the space, normalised; OutOfSpace naming the first problem otherwise."""
    if not isinstance(points, list):
        raise OutOfSpace(f"suggest returned {_show(points)}, not a list of points")
    if len(points) != n:
        raise OutOfSpace(f"suggest returned the wrong number of points ({len(points)}, expected {n})")
    checked = []
    for index, point in enumerate(points):
        try:
            checked.append(check_point(point, space))
        except OutOfSpace as exc:
            raise OutOfSpace(f"suggestion {index}: {exc}") from None
    return checked


# -- bounds ----------------------------------------------------------------------------------------------


def value_chars(param: Param) -> int:
    """The longest JSON text of a normalised value of `param`."""
    if param.kind == BOOL:
        return len("false")
    if param.kind == CAT:
        return max(len(json.dumps(v)) for v in param.values or ("",))
    if param.kind == INT:
        candidates = param.values if param.values is not None else (param.lo, param.hi)
        return max(len(str(v)) for v in candidates)
    return FLOAT_CHARS


def max_point_bytes(space: Space) -> int:
    """The longest JSON object of one normalised point: {"name":value,...}."""
    items = [len(json.dumps(name)) + 1 + value_chars(param) for name, param in space.items()]
    return 2 + sum(items) + max(0, len(items) - 1)


def suggest_reply_cap(api_config: dict[str, Any], n: int) -> int:
    """The most bytes a reply to suggest(n) can need: n points of the declared names, each value as long
    as its type allows on the wire (a number up to the protocol's number cap, a cat value fully
    \\u-escaped, a bool 5), with room for spaces and framing; never under MIN_SUGGEST_REPLY_BYTES."""
    try:
        space = compile_space(api_config)
    except SpaceError:
        return MIN_SUGGEST_REPLY_BYTES
    per_point = 2
    for name, param in space.items():
        if param.kind == CAT:
            value = max(6 * len(v) + 2 for v in param.values or ("",))
        elif param.kind == BOOL:
            value = 5
        else:
            value = NUMBER_TEXT_CHARS
        per_point += 6 * len(name) + 2 + value + 4  # name \\u-escaped and quoted, ": ", ", "
    return max(MIN_SUGGEST_REPLY_BYTES, 64 + max(1, n) * (per_point + 2))
