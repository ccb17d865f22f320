"""Property-based tests (hypothesis) of the two checks between the sandbox and the harness: the protocol
decoder (random JSON, nesting, types, huge numbers, random bytes: a typed reply or ProtocolError, never
another exception) and the suggestion validator (random values of every JSON type against random
api_configs: exactly the in-space scalars are accepted, normalised to their type; never another exception)."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from bayesmark.space import JointSpace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_schema import protocol
from queue_schema.protocol import ProtocolError, decode, decode_reply
from queue_schema.suggestions import OutOfSpace, check_batch, check_value, compile_space, max_point_bytes

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
ops = st.sampled_from(protocol.OPS)


def _decode_reply_or_protocol_error(line: bytes, op: str):
    try:
        reply = decode_reply(line, op, max_bytes=10**7)
    except ProtocolError as exc:
        assert str(exc) and len(str(exc)) < 300
        return None
    assert isinstance(reply, protocol.Hello | protocol.Done | protocol.Suggested | protocol.Failed)
    assert reply.op in (op, protocol.OP_UNKNOWN) if isinstance(reply, protocol.Failed) else reply.op == op
    return reply


# -- the decoder -------------------------------------------------------------------------------------


@FAST
@given(value=json_values, op=ops)
def test_any_json_value_is_a_typed_reply_or_a_protocol_error(value, op):
    _decode_reply_or_protocol_error(json.dumps(value).encode(), op)


@FAST
@given(data=st.binary(max_size=300), op=ops)
def test_any_bytes_are_a_typed_reply_or_a_protocol_error(data, op):
    _decode_reply_or_protocol_error(data, op)


def _valid_reply(op: str, draw) -> dict:
    if draw(st.booleans()):
        return protocol.error(
            op, draw(st.sampled_from([protocol.ERR_RAISED, protocol.ERR_LOAD])), draw(st.text())
        )
    if op == protocol.OP_HELLO:
        return protocol.ok(op, optimizer=draw(st.text(max_size=50)), version=1)
    if op == protocol.OP_SUGGEST:
        point = st.dictionaries(st.text(max_size=8), json_scalars.filter(_finite), max_size=4)
        return protocol.ok(op, X=draw(st.lists(point, max_size=4)))
    return protocol.ok(op)


def _finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


@FAST
@given(data=st.data(), op=ops)
def test_valid_replies_decode_to_their_type(data, op):
    message = _valid_reply(op, data.draw)
    reply = decode_reply(protocol.encode(message), op, max_bytes=10**7)
    if not message["ok"]:
        assert isinstance(reply, protocol.Failed)
        assert reply.kind == message["error"]["kind"] and reply.message == message["error"]["message"]
    elif op == protocol.OP_HELLO:
        assert reply == protocol.Hello(optimizer=message["optimizer"], version=1)
    elif op == protocol.OP_SUGGEST:
        assert isinstance(reply, protocol.Suggested) and reply.points == message["X"]
    else:
        assert reply == protocol.Done(op=op)


@FAST
@given(data=st.data(), op=ops)
def test_mutated_replies_are_typed_or_refused(data, op):
    """A valid reply with a key removed, added or given a random value: never another exception, and
    what is accepted holds exactly the schema's fields and types."""
    message = _valid_reply(op, data.draw)
    target = message
    if not message["ok"] and data.draw(st.booleans()):
        target = message["error"]
    action = data.draw(st.sampled_from(["drop", "add", "replace"]))
    key = data.draw(st.sampled_from(sorted(target)))
    if action == "drop":
        del target[key]
    elif action == "add":
        target[data.draw(st.text(max_size=5))] = data.draw(json_values)
    else:
        target[key] = data.draw(json_values)
    reply = _decode_reply_or_protocol_error(json.dumps(message).encode(), op)
    if isinstance(reply, protocol.Failed):
        assert all(isinstance(v, str) for v in (reply.kind, reply.type, reply.message))
    elif isinstance(reply, protocol.Hello):
        assert isinstance(reply.optimizer, str) and type(reply.version) is int
    elif isinstance(reply, protocol.Suggested):
        assert isinstance(reply.points, list) and all(isinstance(p, dict) for p in reply.points)


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 50_000), kind=st.sampled_from(["[", '{"a":']), op=ops)
def test_nesting_is_bounded_before_json_parses(depth, kind, op):
    close = "]" if kind == "[" else "}"
    inner = kind * depth + "1" * (kind != "[") + close * depth
    line = ('{"ok":true,"op":"' + op + '","X":' + inner + "}").encode()
    reply = _decode_reply_or_protocol_error(line, op)
    if depth + 1 > protocol.MAX_DEPTH:
        assert reply is None
    with pytest.raises(ProtocolError) if depth + 1 > protocol.MAX_DEPTH else contextlib.nullcontext():
        decode(line)


@settings(max_examples=80, deadline=None)
@given(digits=st.integers(1, 6000), fraction=st.booleans(), exponent=st.booleans(), sign=st.booleans())
def test_numbers_are_bounded_before_python_converts_them(digits, fraction, exponent, sign):
    number = ("-" if sign else "") + "7" * digits + (".5" if fraction else "") + ("e999" if exponent else "")
    line = ('{"ok":true,"op":"suggest","X":[{"a":' + number + "}]}").encode()
    if len(number) > protocol.MAX_NUMBER_CHARS or ((fraction or exponent) and math.isinf(float(number))):
        with pytest.raises(ProtocolError):
            decode_reply(line, protocol.OP_SUGGEST)
    else:
        (value,) = decode_reply(line, protocol.OP_SUGGEST).points[0].values()
        assert value == (float(number) if fraction or exponent else int(number))


@FAST
@given(constant=st.sampled_from(["NaN", "Infinity", "-Infinity"]), op=ops)
def test_non_finite_numbers_are_refused_in_replies_and_allowed_in_requests(constant, op):
    with pytest.raises(ProtocolError, match="where a number is expected"):
        decode_reply(('{"ok":true,"op":"' + op + '","x":' + constant + "}").encode(), op)
    value = decode('{"y":' + constant + "}")["y"]
    assert math.isnan(value) or math.isinf(value)


def test_an_adversarial_line_is_decoded_in_linear_time():
    """Unterminated strings full of escapes cannot make the depth scan quadratic."""
    import time

    for text in ('"\\' * 32_768, '"' + '\\"' * 32_768, '"a' * 32_768, "[" * 65_536):
        started = time.perf_counter()
        with pytest.raises(ProtocolError):
            decode_reply(text.encode(), protocol.OP_SUGGEST, max_bytes=10**6)
        assert time.perf_counter() - started < 0.5


# -- the suggestion validator ----------------------------------------------------------------------------


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
small_ints = st.integers(-1000, 1000)


@st.composite
def param_configs(draw):
    kind = draw(st.sampled_from(["real", "int", "bool", "cat", "ordinal", "real_values", "int_values"]))
    if kind == "real":
        lo, hi = sorted(draw(st.tuples(finite, finite)))
        return {"type": "real", "space": "linear", "range": (lo, hi)}
    if kind == "int":
        lo, hi = sorted(draw(st.tuples(small_ints, small_ints)))
        return {"type": "int", "space": "linear", "range": (lo, hi)}
    if kind == "bool":
        return {"type": "bool"}
    if kind in ("cat", "ordinal"):
        return {
            "type": kind,
            "values": draw(st.lists(st.text(max_size=6), min_size=2, max_size=5, unique=True)),
        }
    numbers = finite if kind == "real_values" else small_ints
    return {"type": kind[:-7], "space": "linear", "values": draw(st.lists(numbers, min_size=2, max_size=5))}


def _bayesmark_accepts(config: dict) -> bool:
    try:
        JointSpace({"p": config})
    except (ValueError, AssertionError):
        return False
    return True


valid_param_configs = param_configs().filter(_bayesmark_accepts)


api_configs = st.dictionaries(st.text(min_size=1, max_size=8), valid_param_configs, min_size=1, max_size=5)


@st.composite
def values_for(draw, config):
    """Any JSON value, or one near the parameter's space (in range, at and across its bounds, as the wrong
    type, as a list), so that both sides of the rule are explored."""
    near = [json_values]
    if "range" in config:
        lo, hi = config["range"]
        near += [
            st.floats(min_value=lo, max_value=hi),
            st.sampled_from([lo, hi, float(lo), float(hi), lo - 1, hi + 1, str(lo), [lo], [lo, hi], True]),
            st.floats(min_value=lo - 1e-3, max_value=hi + 1e-3),
        ]
        if config["type"] == "int":
            near += [st.integers(lo - 2, hi + 2), st.integers(lo, hi).map(float), st.just(lo + 0.5)]
    if "values" in config:
        declared = config["values"]
        near += [st.sampled_from(declared), st.sampled_from(declared).map(lambda v: [v])]
        if config["type"] != "cat" and config["type"] != "ordinal":
            near += [st.sampled_from(declared).map(float), st.sampled_from(declared).map(str)]
    if config["type"] == "bool":
        near += [st.sampled_from([0, 1, 0.0, 1.0, -1, 2, 0.5, "0", [1]])]
    near += [st.booleans(), st.none(), st.integers(-(10**30), 10**30)]
    return draw(st.one_of(near))


def _tolerance(bound: float) -> float:
    return 1e-8 + 1e-5 * abs(bound)


def reference(config: dict, value):
    """The rule, written out plainly: (accepted, normalised value)."""
    kind = config["type"]
    is_number = type(value) in (int, float)
    if kind == "bool":
        if type(value) in (int, float) and value in (0, 1):  # the 2020 kit's skopt example sends 0 and 1
            return (True, bool(value))
        return (type(value) is bool, value)
    if kind in ("cat", "ordinal"):
        return (type(value) is str and value in config["values"], value)
    if not is_number or (type(value) is float and not math.isfinite(value)):
        return (False, None)
    if kind == "int":
        if type(value) is float and not value.is_integer():
            return (False, None)
        number = int(value)
        if "values" in config:
            return (number in config["values"], number)
        lo, hi = config["range"]
        return (lo <= number <= hi, number)
    if "values" in config:
        return (any(value == v for v in config["values"]), float(value))
    lo, hi = (float(b) for b in config["range"])
    inside = lo - _tolerance(lo) <= value <= hi + _tolerance(hi)
    return (inside, min(max(float(value), lo), hi) if inside else None)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=valid_param_configs)
def test_a_value_is_accepted_exactly_when_it_is_an_in_space_scalar(data, config):
    value = data.draw(values_for(config))
    (param,) = compile_space({"p": config}).values()
    accepted, normalised = reference(config, value)
    try:
        result = check_value(param, value)
    except OutOfSpace as exc:
        assert not accepted, (config, value, str(exc))
        assert len(str(exc)) < 400
        return
    assert accepted, (config, value, result)
    assert result == normalised and type(result) is {"real": float, "int": int, "bool": bool}.get(
        config["type"], str
    )
    # bayesmark agrees: what we let through, its own (laxer) check lets through too.
    JointSpace({"p": config}).validate([{"p": result}])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=api_configs, n=st.integers(1, 4))
def test_a_batch_is_checked_whole_and_never_raises_anything_else(data, config, n):
    space = compile_space(config)
    names = sorted(config)
    point = st.fixed_dictionaries({name: values_for(config[name]) for name in names})
    wrong = st.dictionaries(st.sampled_from([*names, "extra"]), json_values, max_size=6)
    points = data.draw(
        st.one_of(st.lists(point | wrong, min_size=n, max_size=n), st.lists(point), json_values)
    )
    try:
        checked = check_batch(points, space, n)
    except OutOfSpace as exc:
        assert len(str(exc)) < 500
        return
    assert isinstance(points, list) and len(checked) == n
    for raw, normal in zip(points, checked, strict=True):
        assert sorted(normal) == names and sorted(raw) == names
        for name in names:
            assert reference(config[name], raw[name]) == (True, normal[name])
        assert len(json.dumps(normal, separators=(",", ":"))) <= max_point_bytes(space)


# -- the stored study's bound ----------------------------------------------------------------------------

LOSS_CHARS = 24  # a loss is a float (or null): at most 24 characters of JSON
PROVENANCE_BYTES = 4096  # study index, state, timings, worker, backend, packages, seeds, sandbox


def _longest_value(param, rng) -> object:
    """The in-space value of `param` with the longest JSON text (found among candidates, checked)."""
    if param.kind == "bool":
        return False
    if param.values is not None:
        return max(param.values, key=lambda v: len(json.dumps(v)))
    if param.kind == "int":
        return max((param.lo, param.hi), key=lambda v: len(str(v)))
    candidates = [param.lo, param.hi] + [rng.uniform(param.lo, param.hi) for _ in range(2000)]
    candidates += [-math.ulp(0.0) if param.lo < 0 else math.ulp(0.0)] if param.lo <= 0 <= param.hi else []
    return max((check_value(param, c) for c in candidates), key=lambda v: len(json.dumps(v)))


@pytest.mark.parametrize("spec_name", ["demo", "neurips2020"])
def test_a_maximal_study_is_stored_within_the_bound(spec_name):
    """Every evaluation of the spec's largest space at its longest values, every loss at its longest: the
    stored StudyResult is within rounds x batch x (max_point_bytes + 2 losses) + provenance, and (the
    issue's target) within 64 KiB on the demo spec."""
    import random

    from queue_schema.payloads import StudyResult
    from queue_schema.states import StudyState
    from runtime.provenance import scoring_packages, study_seeds
    from runtime.spec import load
    from suites.bayesmark_suite import BayesmarkObjective

    spec = load(spec_name)
    problems = sorted({p for phase in spec.phases.values() for p in phase.problems})
    configs = {p: BayesmarkObjective(p, 0, spec.batch).get_api_config() for p in problems}
    problem = max(problems, key=lambda p: max_point_bytes(compile_space(configs[p])))
    space = compile_space(configs[problem])
    rng = random.Random(0)
    point = check_batch([{name: _longest_value(param, rng) for name, param in space.items()}], space, 1)[0]
    assert len(json.dumps(point, separators=(",", ":"))) <= max_point_bytes(space)
    loss = -2.2250738585072014e-308
    result = StudyResult(
        study=spec.phases["final"].studies - 1 if "final" in spec.phases else 0,
        state=StudyState.CUT_OFF,
        losses=[[loss] * spec.batch for _ in range(spec.rounds)],
        generalization=[[loss] * spec.batch for _ in range(spec.rounds)],
        suggestions=[[dict(point) for _ in range(spec.batch)] for _ in range(spec.rounds)],
        suggest_time_s=12345.6789,
        eval_time_s=12345.6789,
        cut_off_reason=f"suggest ran past the study's time budget of {spec.limits.suggest_budget_s:.0f} s",
        suggest_fallbacks=spec.rounds,
        observe_errors=spec.rounds,
        worker="a-rather-long-worker-host-name.example.org:4194304",
        backend="docker",
        image_digest="sha256:" + "f" * 64,
        sandbox={
            "backend": "docker",
            "image": "bbo-sandbox:" + "f" * 12,
            "image_digest": "sha256:" + "f" * 64,
        },
        packages=scoring_packages(),
        seeds=study_seeds(problem, 99),
    )
    stored = len(result.to_json().encode())
    evaluations = spec.rounds * spec.batch
    suggestions = len(json.dumps(result.suggestions, separators=(",", ":")))
    assert suggestions <= spec.rounds * (spec.batch * (max_point_bytes(space) + 1) + 2) + 1
    bound = (
        evaluations * (max_point_bytes(space) + 1 + 2 * (LOSS_CHARS + 1)) + spec.rounds * 8 + PROVENANCE_BYTES
    )
    assert stored <= bound
    if spec_name == "demo":
        assert stored <= 64 * 1024
    print(
        f"{spec_name}: {problem}, {len(space)} parameters, {max_point_bytes(space)} B a point, "
        f"{stored} B of {bound}"
    )
