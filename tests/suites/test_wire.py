"""The objective process's line protocol: round trips, bounds, non-finite losses, and stdlib-only code."""

from __future__ import annotations

import ast
import json
import math
import sys
from pathlib import Path

import pytest

from suites import wire

SUITES = Path(wire.__file__).resolve().parent


def test_a_request_and_its_replies_round_trip() -> None:
    request = wire.request(7, wire.EVALUATE, problem="f1-i1-d2", params={"x0": 0.5, "x1": -1}, seed=3)
    line = wire.encode(request)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.check_request(wire.decode(line)) == (7, wire.EVALUATE)
    assert wire.decode(line) == request

    ok = wire.decode(wire.encode(wire.ok(7, loss=wire.encode_float(1.5))))
    assert wire.check_reply(ok, 7)["loss"] == 1.5
    failed = wire.decode(wire.encode(wire.failed(7, wire.RAISED, "ValueError: no\n  at line 3")))
    assert wire.check_reply(failed, 7) == {
        "id": 7,
        "ok": False,
        "kind": "raised",
        "error": "ValueError: no | at line 3",
    }


def test_numpy_scalars_are_sent_as_plain_numbers() -> None:
    import numpy as np

    line = wire.encode(
        wire.request(1, wire.EVALUATE, params={"n": np.int64(3), "b": np.bool_(True), "x": np.float64(0.5)})
    )
    assert json.loads(line)["params"] == {"n": 3, "b": True, "x": 0.5}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -2.5, 1e308])
def test_losses_survive_json_finite_or_not(value: float) -> None:
    sent = wire.decode(wire.encode(wire.ok(1, loss=wire.encode_float(value))))["loss"]
    back = wire.decode_float(sent)
    assert (math.isnan(back) and math.isnan(value)) or back == value
    if not math.isfinite(value):
        assert sent in {"nan", "inf", "-inf"}


@pytest.mark.parametrize("value", [True, None, "1.0", "Infinity", [1.0]])
def test_a_loss_is_a_number_or_one_of_the_three_words(value: object) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_float(value)


def test_no_other_field_may_hold_a_non_finite_number() -> None:
    with pytest.raises(wire.WireError, match="cannot encode"):
        wire.encode(wire.ok(1, optimum=math.inf))
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.decode(b'{"id": 1, "ok": true, "optimum": NaN}\n')


def test_lines_are_bounded_both_ways() -> None:
    big = "x" * wire.MAX_LINE_BYTES
    with pytest.raises(wire.WireError, match="line limit"):
        wire.encode(wire.request(1, wire.LOAD, problem="p", source=big))
    with pytest.raises(wire.WireError, match="limit"):
        wire.decode(b"[" * (wire.MAX_LINE_BYTES + 1))
    # Just under the bound still goes.
    fits = "x" * (wire.MAX_LINE_BYTES - 100)
    assert len(wire.encode(wire.request(1, wire.LOAD, problem="p", source=fits))) <= wire.MAX_LINE_BYTES


@pytest.mark.parametrize(
    "line",
    [b"[]", b'"hello"', b"{", b"\xff\xfe", b"[" * 100_000],
)
def test_what_is_not_a_message_is_a_wire_error(line: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(line)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ({"id": "1", "op": "hello"}, "id"),
        ({"id": True, "op": "hello"}, "id"),
        ({"id": 1, "op": "shutdown"}, "unknown op"),
    ],
)
def test_a_request_needs_an_integer_id_and_a_known_op(message: dict, why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        wire.check_request(message)


@pytest.mark.parametrize(
    "message",
    [
        {"id": 2, "ok": True},
        {"id": True, "ok": True},
        {"id": 1, "ok": "yes"},
        {"id": 1, "ok": False, "kind": "crashed", "error": "x"},
        {"id": 1, "ok": False, "kind": "raised"},
    ],
)
def test_a_reply_answers_its_request_in_a_known_shape(message: dict) -> None:
    with pytest.raises(wire.WireError):
        wire.check_reply(message, 1)


def test_errors_are_one_bounded_line() -> None:
    text = wire.one_line("a\n\n  b\n" + "c" * 1000)
    assert "\n" not in text and len(text) == wire.ERROR_CHARS and text.startswith("a | b | ccc")


@pytest.mark.parametrize("name", ["wire.py", "objective_server.py", "bbob_names.py"])
def test_what_runs_in_a_suite_environment_imports_the_standard_library_only(name: str) -> None:
    # The server runs in the suite's own venv, where nothing of the project is installed (the bbob venv
    # test runs it there for real); cocoex and numpy are imported inside the backends that need them.
    tree = ast.parse((SUITES / name).read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            top.add((node.module or "").split(".")[0])
    assert top <= sys.stdlib_module_names, top - sys.stdlib_module_names
