"""A study result's stored form: compact, typed, and an exact round trip of `StudyResult`.

The first form (v1, still read) was the result's pydantic JSON: every evaluated point a dict repeating
its parameter names, every loss a decimal text, and the worker's provenance repeated in every study:
about 200 bytes an evaluation of neurips2020 (70 to 320 by model). The compact form (v2, now v3), about
60 (27 to 94), a third of that (tests/contract/test_study_codec.py measures it), is a small JSON object
(text, as the store's client decodes responses and the value passes through the write-once Lua script):

    {"v": 3, <the scalar fields>, "losses": <matrix>, "generalization": <matrix>,
     "suggestions": <points>, "seeds": [...], "provenance": {...} | "provenance_id": "<digest>"}

- a typed column of n values is {"t": "f8" | "f4" | "i1" | "i2" | "i4" | "i8" | "bool" | "cat", "d": ...}:
  the values packed little-endian (float64, float32, int8 ... int64; bools one bit each, the first value
  in the lowest bit; strings as "c", the distinct strings in first-seen order, and their codes as
  unsigned ints of "w" bytes), in base85 (`base64.b85encode`: no quote or backslash, so plain JSON). When
  it is smaller, "z" replaces "d": the same bytes shuffled (every value's first byte, then every second
  byte, ...) and raw-deflated, which shrinks repeated and nearby values. f4 is taken only when every
  value survives float32 bit for bit, an int column takes the narrowest width that holds it. Any other
  column (mixed types, None, ints past int64, lists) is {"t": "json", "d": [values]}.
- a matrix of losses (rounds of floats or None) is its shape, {"rounds": R, "batch": B} when every round
  has B values or {"n": [round lengths]}, and its values as one column, the None slots given by "none"
  (flat indexes) and packed as 0.0. Floats are kept bit for bit: -0.0, subnormals, inf and NaN.
- the points: their shape (points per round), "names" (the parameter names, in the points' order) and
  "cols", one column per name. Points whose names are not the same sequence in every point keep the plain
  form {"json": [[...]]}, so every point's order is kept.
- the provenance, what is the same for every study of a score version: `PROVENANCE_FIELDS` (the
  backend, the image, the sandbox's description, the scoring packages), and the seeds' text (their
  schemes: a "seeds" template whose null entries are the study's own seeds, which the record keeps in
  "seeds" as a list, in order). Inline as "provenance", or, as the store writes it
  (queue_schema/records/studies.py), named by "provenance_id", the digest of its JSON (`provenance_json`),
  under which the score version's provenance hash keeps that JSON once. What differs from job to job stays in
  the record: the worker that ran it ("worker", host:pid of the work horse, one scalar like the others).

Forms: v3 (this one) keeps "worker" in the record; v2 (the first compact form) kept it in the provenance,
which made one provenance entry per job rather than per score version; v1 is the result's own JSON.
`decode` reads all three; a record of a newer form than this process knows is refused (ValueError), as a
payload of a newer schema is.

The same column encoding keeps a scored version's per-study normalized scores (`encode_scores`), which
stay in Redis after its studies are archived (keys.study_scores): one float64 (float32 when exact)
column of every problem's scores, with the problems' names and their study counts. The standard library
only (and pydantic, as every payload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import zlib
from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic_core import to_jsonable_python

from queue_schema.payloads import StudyResult

FORMAT = 3
_FORMATS = (2, 3)  # the compact forms `decode` reads (v1, the result's JSON, has no "v")
_PREFIX = '{"v":'
PROVENANCE_FIELDS = ("backend", "image_digest", "sandbox", "packages")
# v2 kept the worker (per job) in the provenance too; v3 keeps it in the record, a scalar.
_V2_PROVENANCE_FIELDS = ("worker", *PROVENANCE_FIELDS)
_MATRICES = ("losses", "generalization")
_SPECIAL = frozenset((*_MATRICES, "suggestions", "seeds", *PROVENANCE_FIELDS))
_SCALARS = tuple(name for name in StudyResult.model_fields if name not in _SPECIAL)
SCORES_FORMAT = 2  # keys.study_scores' compact form; 1 was {"baseline_version", "problems": {name: [...]}}
SCORES_PREFIX = _PREFIX  # a compact study scores value starts with it; the JSON of form 1 does not
# Column type -> struct code; ints from the narrowest.
_CODES = {"f8": "d", "f4": "f", "i1": "b", "i2": "h", "i4": "i", "i8": "q"}
_INTS = ("i1", "i2", "i4", "i8")
_CODE_WIDTHS = {1: "B", 2: "H", 4: "I"}
# `encode` writes the provenance id last: a record that names one ends with it.
_REF_AT_END = re.compile(r'"provenance_id":"([0-9a-f]+)"}\Z')


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return to_jsonable_python(value)


# -- packed bytes ------------------------------------------------------------------------------------


def _bytes_field(data: bytes, width: int) -> dict[str, str]:
    """{"d": base85} or, when smaller, {"z": base85 of the byte-shuffled, raw-deflated bytes}."""
    shuffled = b"".join(data[i::width] for i in range(width)) if width > 1 else data
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    squeezed = packer.compress(shuffled) + packer.flush()
    if len(squeezed) < len(data):
        return {"z": base64.b85encode(squeezed).decode("ascii")}
    return {"d": base64.b85encode(data).decode("ascii")}


def _field_bytes(stored: Mapping[str, Any], size: int, width: int) -> bytes:
    """The bytes `_bytes_field` stored, which must be `size` long."""
    if "z" in stored:
        inflater = zlib.decompressobj(-15)
        shuffled = inflater.decompress(base64.b85decode(stored["z"]), size + 1)
        if len(shuffled) != size or not inflater.eof:
            raise ValueError(f"a stored column inflates to {len(shuffled)}+ bytes, not {size}")
        data = bytearray(size)
        count = size // width
        for i in range(width):
            data[i::width] = shuffled[i * count : (i + 1) * count]
        return bytes(data)
    data = base64.b85decode(stored["d"])
    if len(data) != size:
        raise ValueError(f"a stored column holds {len(data)} bytes, not {size}")
    return data


def _packed(kind: str, code: str, values: list[Any], **extra: Any) -> dict[str, Any]:
    width = struct.calcsize(f"<{code}")
    return {"t": kind, **extra, **_bytes_field(struct.pack(f"<{len(values)}{code}", *values), width)}


def _unpacked(stored: Mapping[str, Any], code: str, count: int) -> list[Any]:
    width = struct.calcsize(f"<{code}")
    return list(struct.unpack(f"<{count}{code}", _field_bytes(stored, count * width, width)))


# -- columns -----------------------------------------------------------------------------------------


def _float32_exact(values: list[float]) -> bool:
    try:
        narrowed = struct.pack(f"<{len(values)}f", *values)
    except OverflowError:
        return False
    wide = struct.pack(f"<{len(values)}d", *struct.unpack(f"<{len(values)}f", narrowed))
    return wide == struct.pack(f"<{len(values)}d", *values)


def _encode_column(values: list[Any]) -> dict[str, Any]:
    kinds = {type(value) for value in values}
    if kinds == {float}:
        kind = "f4" if _float32_exact(values) else "f8"
        return _packed(kind, _CODES[kind], values)
    if kinds == {int}:
        low, high = min(values), max(values)
        for kind in _INTS:
            limit = 1 << (8 * struct.calcsize(_CODES[kind]) - 1)
            if -limit <= low and high < limit:
                return _packed(kind, _CODES[kind], values)
    if kinds == {bool}:
        bits = sum(1 << i for i, value in enumerate(values) if value)
        return {"t": "bool", **_bytes_field(bits.to_bytes((len(values) + 7) // 8, "little"), 1)}
    if kinds == {str}:
        categories = list(dict.fromkeys(values))
        index = {category: code for code, category in enumerate(categories)}
        width = 1 if len(categories) <= 1 << 8 else 2 if len(categories) <= 1 << 16 else 4
        codes = [index[value] for value in values]
        return _packed("cat", _CODE_WIDTHS[width], codes, c=categories, w=width)
    return {"t": "json", "d": [_plain(value) for value in values]}


def _decode_column(stored: Mapping[str, Any], count: int) -> list[Any]:
    kind = stored["t"]
    if kind == "json":
        values = list(stored["d"])
    elif kind in _CODES:
        values = _unpacked(stored, _CODES[kind], count)
    elif kind == "bool":
        bits = int.from_bytes(_field_bytes(stored, (count + 7) // 8, 1), "little")
        values = [bool(bits >> i & 1) for i in range(count)]
    elif kind == "cat":
        categories = stored["c"]
        values = [categories[code] for code in _unpacked(stored, _CODE_WIDTHS[stored["w"]], count)]
    else:
        raise ValueError(f"unknown stored column type {kind!r}")
    if len(values) != count:
        raise ValueError(f"a stored column holds {len(values)} values, not {count}")
    return values


# -- shapes, matrices, points ------------------------------------------------------------------------


def _shape(rounds: list[list[Any]]) -> dict[str, Any]:
    lengths = [len(round_) for round_ in rounds]
    if lengths and len(set(lengths)) == 1:
        return {"rounds": len(lengths), "batch": lengths[0]}
    return {"n": lengths}


def _lengths(stored: Mapping[str, Any]) -> list[int]:
    lengths = stored["n"] if "n" in stored else [stored["batch"]] * stored["rounds"]
    if any(type(n) is not int or n < 0 for n in lengths):
        raise ValueError(f"a stored shape has odd round lengths: {lengths!r}")
    return lengths


def _split(flat: list[Any], lengths: list[int]) -> list[list[Any]]:
    if sum(lengths) != len(flat):
        raise ValueError(f"a stored matrix holds {len(flat)} values, not rounds of {lengths}")
    out, start = [], 0
    for n in lengths:
        out.append(flat[start : start + n])
        start += n
    return out


def _encode_matrix(rounds: list[list[Any]]) -> dict[str, Any]:
    flat = [value for round_ in rounds for value in round_]
    nones = [i for i, value in enumerate(flat) if value is None]
    if nones and all(value is None or type(value) is float for value in flat):
        column = _encode_column([0.0 if value is None else value for value in flat])
        return {**_shape(rounds), **column, "none": nones}
    return {**_shape(rounds), **_encode_column(flat)}


def _decode_matrix(stored: Mapping[str, Any]) -> list[list[Any]]:
    lengths = _lengths(stored)
    flat = _decode_column(stored, sum(lengths))
    for i in stored.get("none", ()):
        flat[i] = None
    return _split(flat, lengths)


def _encode_points(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    points = [point for round_ in rounds for point in round_]
    names = list(points[0]) if points and isinstance(points[0], dict) else []
    if not all(isinstance(point, dict) and list(point) == names for point in points):
        return {"json": _plain(rounds)}
    columns = [_encode_column([point[name] for point in points]) for name in names]
    return {**_shape(rounds), "names": names, "cols": columns}


def _decode_points(stored: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    if "json" in stored:
        return stored["json"]
    lengths, names = _lengths(stored), stored["names"]
    count = sum(lengths)
    if len(stored["cols"]) != len(names):
        raise ValueError(f"a stored study has {len(stored['cols'])} columns for {len(names)} names")
    columns = [_decode_column(column, count) for column in stored["cols"]]
    points = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    return _split(points if names else [{} for _ in range(count)], lengths)


# -- provenance --------------------------------------------------------------------------------------


def _seed_template(seeds: dict[str, Any]) -> dict[str, Any]:
    """The seeds' shared part: text entries as they are, the others null (the study's own)."""
    return {name: value if isinstance(value, str) else None for name, value in seeds.items()}


def provenance_json(result: StudyResult) -> str:
    """The study's provenance (`PROVENANCE_FIELDS` and its seeds' template) as JSON, each dict in its own
    order (not sorted: the round trip keeps the order), so equal provenance gives equal text."""
    shared = {name: _plain(getattr(result, name)) for name in PROVENANCE_FIELDS}
    return _dumps({**shared, "seeds": _plain(_seed_template(result.seeds))})


def provenance_id(text: str) -> str:
    """A short content digest of a provenance JSON: the field it is stored under, per score version."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _own_seeds(seeds: dict[str, Any]) -> list[Any]:
    return [_plain(value) for value in seeds.values() if not isinstance(value, str)]


def _join_seeds(template: Mapping[str, Any], own: list[Any]) -> dict[str, Any]:
    values = iter(own)
    seeds = {}
    for name, shared in template.items():
        if shared is None:
            try:
                shared = next(values)
            except StopIteration:
                raise ValueError("a stored study has fewer seeds than its provenance names") from None
        seeds[name] = shared
    if next(values, values) is not values:
        raise ValueError("a stored study has more seeds than its provenance names")
    return seeds


# -- the record --------------------------------------------------------------------------------------


def encode(result: StudyResult, *, provenance_ref: str | None = None) -> str:
    """The stored form of `result`. With `provenance_ref` (the `provenance_id` of its `provenance_json`)
    the record names its provenance instead of holding it: the writer stores that JSON once elsewhere."""
    out: dict[str, Any] = {"v": FORMAT}
    out.update({name: _plain(getattr(result, name)) for name in _SCALARS})
    for name in _MATRICES:
        out[name] = _encode_matrix(getattr(result, name))
    out["suggestions"] = _encode_points(result.suggestions)
    out["seeds"] = _own_seeds(result.seeds)
    if provenance_ref is None:
        out["provenance"] = json.loads(provenance_json(result))
    else:
        out["provenance_id"] = provenance_ref
    return _dumps(out)


def _compact(stored: dict[str, Any], provenance: Mapping[str, str] | None) -> StudyResult:
    form = stored["v"]
    if form not in _FORMATS:
        raise ValueError(f"stored study form {form!r} is not one this process understands ({FORMAT})")
    if "provenance_id" in stored:
        ref = stored["provenance_id"]
        if not provenance or ref not in provenance:
            raise ValueError(f"stored study {stored.get('study')} names provenance {ref!r}, which is missing")
        shared = json.loads(provenance[ref])  # parsed for each study: studies share no dict
    else:
        shared = stored["provenance"]
    fields = {name: stored[name] for name in _SCALARS if name in stored}
    for name in _MATRICES:
        fields[name] = _decode_matrix(stored[name])
    fields["suggestions"] = _decode_points(stored["suggestions"])
    shared_fields = _V2_PROVENANCE_FIELDS if form == 2 else PROVENANCE_FIELDS
    fields.update({name: shared[name] for name in shared_fields})
    fields["seeds"] = _join_seeds(shared["seeds"], stored["seeds"])
    return StudyResult.model_validate(fields)


def provenance_ref(raw: str) -> str | None:
    """The provenance id a stored record names (None: a record with its provenance inline, or of the
    older form), without decoding it: a reader fetches just the provenance its studies name."""
    found = _REF_AT_END.search(raw) if raw.startswith(_PREFIX) else None
    return found.group(1) if found else None


def decode(raw: str, provenance: Mapping[str, str] | None = None) -> StudyResult:
    """The StudyResult of a stored record, any form (v1, v2, v3). `provenance`: the score version's
    provenance hash (id -> provenance JSON), which a record written by the store names by id."""
    if not raw.startswith(_PREFIX):
        return StudyResult.from_json(raw)  # v1: the result's own JSON
    return _compact(json.loads(raw), provenance)


def decode_many(raw_fields: Mapping[str, str], provenance: Mapping[str, str]) -> dict[int, StudyResult]:
    """Every record of a study hash (study index -> stored record, any form) by study index."""
    return {int(index): decode(raw, provenance) for index, raw in raw_fields.items()}


# -- per-study normalized scores (keys.study_scores) ------------------------------------------------


def encode_scores(baseline_version: str | None, problems: Mapping[str, list[float]]) -> str:
    """The stored form of a score version's per-study normalized scores ({problem: [score of each study,
    by study index]}, in the problems' order): every value in one column (floats bit for bit), the
    problems' names and how many studies each has."""
    names = list(problems)
    counts = [len(problems[name]) for name in names]
    values = [value for name in names for value in problems[name]]
    shape: dict[str, Any] = {"studies": counts[0]} if counts and len(set(counts)) == 1 else {"n": counts}
    out = {"v": SCORES_FORMAT, "baseline_version": baseline_version, "problems": names, **shape}
    out["scores"] = _encode_column(values)
    return _dumps(out)


def decode_scores(raw: str) -> tuple[str | None, dict[str, list[float]]]:
    """(baseline version, {problem: [scores]}) of a stored value, either form: this one or the JSON
    {"baseline_version", "problems": {problem: [scores]}} written before it."""
    stored = json.loads(raw)
    form = stored.get("v", 1)
    if form == 1:
        return stored.get("baseline_version"), {name: list(v) for name, v in stored["problems"].items()}
    if form != SCORES_FORMAT:
        raise ValueError(f"stored study scores form {form!r} is not one this process understands")
    names = stored["problems"]
    counts = stored["n"] if "n" in stored else [stored["studies"]] * len(names)
    if len(counts) != len(names):
        raise ValueError(f"stored study scores name {len(names)} problems for {len(counts)} counts")
    values = _split(_decode_column(stored["scores"], sum(counts)), counts)
    return stored.get("baseline_version"), dict(zip(names, values, strict=True))
