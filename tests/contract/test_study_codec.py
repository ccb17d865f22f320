"""The compact study record (queue_schema/study_codec.py) and its store (queue_schema/records/studies.py):
an exact round trip, older records still read, provenance stored once per score version, and the size it
saves."""

from __future__ import annotations

import itertools
import json
import math
import struct
import warnings
from enum import Enum
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_schema import keys, study_codec
from queue_schema.payloads import StudyResult
from queue_schema.records import (
    decode_study_hash,
    finished_study_indices,
    read_studies,
    version_data_keys,
    write_study,
)
from queue_schema.states import StudyState


def exact(value: Any) -> Any:
    """A value's comparable form that tells apart what == does not: -0.0 from 0.0, NaN payloads, 1 from
    1.0 and True, dict order."""
    if isinstance(value, Enum):
        return ("enum", type(value).__name__, value.value)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", struct.pack("<d", value).hex())
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("none",)
    if isinstance(value, list | tuple):
        return ("list", [exact(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(k, exact(v)) for k, v in value.items()])
    raise TypeError(type(value))


def same(a: StudyResult, b: StudyResult) -> bool:
    """Every field equal, exactly; the fields that differ are printed (pytest shows them on failure)."""
    fields_a, fields_b = exact(a.model_dump())[1], exact(b.model_dump())[1]
    for (name, value_a), (_, value_b) in zip(fields_a, fields_b, strict=True):
        if value_a != value_b:
            print(f"{name}: {value_a} != {value_b}")
    return fields_a == fields_b


# -- random study results ------------------------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
# JSON text keeps a scalar float exactly but for NaN's payload: the scalar fields leave NaN out.
scalar_float = st.floats(allow_nan=False, allow_infinity=True)
loss = st.one_of(st.none(), any_float, st.sampled_from([-0.0, 0.0, 5e-324, 1.7976931348623157e308]))
matrix = st.lists(st.lists(loss, max_size=9), max_size=5)
big_int = st.integers(min_value=-(2**70), max_value=2**70)
small_int = st.integers(min_value=-300, max_value=300)
json_leaf = st.one_of(st.none(), st.booleans(), big_int, scalar_float, st.text(max_size=8))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
COLUMNS = {
    "real": any_float,
    "real32": st.floats(width=32),
    "int": small_int,
    "int64": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "bigint": big_int,
    "bool": st.booleans(),
    "cat": st.sampled_from(["adam", "sgd", "ünïcode ✓", "", '"quoted\\', "\x00", "😀"]) | st.text(max_size=6),
    "mixed": json_leaf,
}
# Points whose names come in different orders keep the plain JSON form, where a NaN is a NaN but not its
# payload (the checked points of the harness never hold one: a real value is finite).
PLAIN = COLUMNS | {"real": scalar_float, "real32": st.floats(width=32, allow_nan=False)}


@st.composite
def points(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    names = draw(st.lists(st.text(max_size=10), unique=True, max_size=6))
    kinds = {name: draw(st.sampled_from(sorted(COLUMNS))) for name in names}
    lengths = draw(st.lists(st.integers(0, 9), max_size=5))
    shuffled = draw(st.booleans()) and len(names) > 1

    def point() -> dict[str, Any]:
        order = draw(st.permutations(names)) if shuffled else names
        return {name: draw(COLUMNS[kinds[name]] if not shuffled else PLAIN[kinds[name]]) for name in order}

    return [[point() for _ in range(n)] for n in lengths]


study_results = st.builds(
    StudyResult,
    study=st.integers(0, 10**6),
    state=st.sampled_from(list(StudyState)),
    losses=matrix,
    generalization=matrix,
    suggestions=points(),
    suggest_time_s=scalar_float,
    eval_time_s=scalar_float,
    cut_off_reason=st.none() | st.text(max_size=20),
    suggest_fallbacks=st.integers(0, 10**9),
    observe_errors=st.integers(0, 10**9),
    worker=st.text(max_size=20),
    backend=st.sampled_from(["", "process", "docker", "bwrap"]),
    image_digest=st.none() | st.text(max_size=20),
    sandbox=st.dictionaries(st.text(max_size=8), json_value, max_size=4),
    packages=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
    seeds=st.dictionaries(st.text(max_size=8), json_value, max_size=5),
    finished_at=scalar_float,
    normalized=st.none() | scalar_float,
)


@given(study_results)
def test_a_study_survives_its_stored_form_exactly(result):
    stored = study_codec.encode(result)
    json.loads(stored)  # plain JSON text (NaN/Infinity aside, as Python's json writes them)
    assert same(study_codec.decode(stored), result)
    # As the store writes it: the provenance elsewhere, named by its id.
    provenance = study_codec.provenance_json(result)
    ref = study_codec.provenance_id(provenance)
    named = study_codec.encode(result, provenance_ref=ref)
    assert study_codec.provenance_ref(named) == ref and study_codec.provenance_ref(stored) is None
    assert same(study_codec.decode(named, {ref: provenance}), result)
    assert same(study_codec.decode_many({"7": named}, {ref: provenance})[7], result)
    # The v2 form (the worker in the provenance), inline and named, still reads as it did.
    old_inline, _ = as_v2(stored, None)
    assert same(study_codec.decode(old_inline), result)
    old_named, old_provenance = as_v2(named, provenance)
    old_ref = study_codec.provenance_ref(old_named)
    assert same(study_codec.decode(old_named, {old_ref: old_provenance}), result)


def as_v2(record: str, provenance: str | None) -> tuple[str, str | None]:
    """A v3 record (and the provenance JSON it names) as the v2 writer wrote them: "v": 2, the worker out
    of the record and first in the provenance, which is named by the id of that JSON."""
    stored = json.loads(record)
    assert stored["v"] == 3
    worker = stored.pop("worker")
    stored["v"] = 2
    if provenance is None:
        stored["provenance"] = {"worker": worker, **stored["provenance"]}
        return json.dumps(stored, separators=(",", ":")), None
    old_provenance = json.dumps({"worker": worker, **json.loads(provenance)}, separators=(",", ":"))
    stored["provenance_id"] = study_codec.provenance_id(old_provenance)
    stored = {name: value for name, value in stored.items() if name != "provenance_id"} | {
        "provenance_id": stored["provenance_id"]
    }
    return json.dumps(stored, separators=(",", ":")), old_provenance


_sids = itertools.count()


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(result=study_results)
def test_a_study_survives_the_store_exactly(r, result):
    sid = f"s{next(_sids):08d}roundtrip"
    assert write_study(r, sid, 1, "DT-iris-acc", result, None, announce=False) == 1
    (found,) = read_studies(r, sid, 1, "DT-iris-acc").values()
    assert same(found, result)


def test_the_edges_of_the_form_are_kept():
    cases = [
        StudyResult(study=0, state=StudyState.COMPLETE, losses=[]),
        StudyResult(study=1, state=StudyState.COMPLETE, losses=[[], []], suggestions=[[], [{}, {}], []]),
        StudyResult(
            study=2,
            state=StudyState.CUT_OFF,
            losses=[[None, math.inf, -0.0], [5e-324]],
            generalization=[[None], [None, None]],
            suggestions=[[{"a": 1, "b": 2.5}], [{"b": 0.5, "a": 2}]],  # another order: the plain form
            seeds={"optimizer": 3, "scheme": "x", "nothing": None, "first": 4},
        ),
        StudyResult(
            study=3,
            state=StudyState.COMPLETE,
            losses=[[0.1] * 8] * 16,
            suggestions=[[{"n": 2**63, "k": True, "c": "é", "m": 1, "f": 1.5}]] * 2
            + [[{"n": 1, "k": False, "c": "é", "m": 1.0, "f": 0.1}]],
        ),
    ]
    for result in cases:
        assert same(study_codec.decode(study_codec.encode(result)), result), result


def test_a_record_of_a_newer_form_or_naming_missing_provenance_is_refused():
    result = StudyResult(study=0, state=StudyState.COMPLETE, losses=[[1.0]], worker="w")
    newer = json.loads(study_codec.encode(result))
    newer["v"] = study_codec.FORMAT + 1
    with pytest.raises(ValueError, match="not one this process understands"):
        study_codec.decode(json.dumps(newer, separators=(",", ":")))
    with pytest.raises(ValueError, match="which is missing"):
        study_codec.decode(study_codec.encode(result, provenance_ref="0123"), {})


# -- the store -------------------------------------------------------------------------------------


def _job_result(study: int, worker: str, problem: str = "DT-iris-acc") -> StudyResult:
    from runtime.provenance import scoring_packages, study_seeds

    return StudyResult(
        study=study,
        state=StudyState.COMPLETE,
        losses=[[0.5 + study, None], [0.25, -0.0]],
        generalization=[[0.4, 0.3], [0.2, 0.1]],
        suggestions=[
            [{"max_depth": 3, "criterion": "gini"}] * 2,
            [{"max_depth": 4, "criterion": "entropy"}] * 2,
        ],
        worker=worker,
        backend="docker",
        image_digest="sha256:" + "ab" * 32,
        sandbox={"backend": "docker", "image_digest": "sha256:" + "ab" * 32, "network": "none"},
        packages=scoring_packages(),
        seeds=study_seeds(problem, study),
    )


def test_provenance_is_stored_once_per_score_version_and_reattached(r):
    sid, problem = "s00000000aaaaaaaaaa", "DT-iris-acc"
    written = [_job_result(study, "host-a:101") for study in range(10)]
    for result in written:
        assert write_study(r, sid, 1, problem, result, 0.5) == 1
    provenance = r.hgetall(keys.version_provenance(sid, 1))
    assert len(provenance) == 1  # ten studies of one job: one provenance
    (text,) = provenance.values()
    assert "bayesmark" in text and "host-a:101" not in text  # the worker is the job's, not the version's
    records = r.hgetall(keys.study_results(sid, 1, problem))
    assert not any("bayesmark" in raw for raw in records.values())
    assert all('"worker":"host-a:101"' in raw for raw in records.values())
    found = read_studies(r, sid, 1, problem)
    expected = [result.model_copy(update={"normalized": 0.5}) for result in written]
    assert sorted(found) == list(range(10)) and all(same(found[s.study], s) for s in expected)
    assert found[0].seeds != found[1].seeds and found[0].sandbox is not found[1].sandbox

    # Other jobs, on other workers, and of other problems: still the one provenance of the version.
    assert write_study(r, sid, 1, problem, _job_result(10, "host-b:202"), 0.5) == 1
    assert write_study(r, sid, 1, "SVM-wine-nll", _job_result(0, "host-c:303", "SVM-wine-nll"), 0.5) == 1
    assert len(r.hgetall(keys.version_provenance(sid, 1))) == 1
    assert read_studies(r, sid, 1, problem)[10].worker == "host-b:202"
    assert read_studies(r, sid, 1, "SVM-wine-nll")[0].worker == "host-c:303"
    assert finished_study_indices(r, sid, 1, problem) == set(range(11))

    # The archive's reader decodes values read back its own way, with the whole provenance hash.
    again = decode_study_hash(
        r.hgetall(keys.study_results(sid, 1, problem)), r.hgetall(keys.version_provenance(sid, 1))
    )
    assert all(same(again[i], found[i]) for i in range(10))


def test_an_older_record_still_reads_as_it_did(r):
    """A StudyResult's own JSON (the form before the compact one), written raw beside a compact record of
    the same problem, reads as it always did."""
    sid, problem = "s00000000bbbbbbbbbb", "DT-iris-acc"
    old = _job_result(0, "host-old:1")
    old_json = old.model_dump_json(exclude={"normalized"})
    r.hset(keys.study_results(sid, 1, problem), "0", old_json)  # as an older worker wrote it
    r.hset(keys.study_results(sid, 1, problem), "1", json.dumps(json.loads(old_json) | {"study": 1}))
    new = _job_result(2, "host-new:2")
    assert write_study(r, sid, 1, problem, new, None) == 1
    found = read_studies(r, sid, 1, problem)
    assert same(found[0], StudyResult.from_json(old_json)) and same(found[0], old)
    assert found[1].study == 1 and found[1].losses == old.losses
    assert same(found[2], new)
    assert finished_study_indices(r, sid, 1, problem) == {0, 1, 2}


def test_a_v2_record_beside_v3_ones_reads_as_it_did(r):
    """A score version written partly by the v2 writer (its provenance hash with one entry per worker)
    and partly by this one reads every study back exactly, from Redis and through the archive's decoding."""
    sid, problem = "s00000000ffffffffff", "DT-iris-acc"
    old = [_job_result(study, f"host-old:{study}") for study in range(3)]
    for result in old:  # as the v2 writer stored them
        text = study_codec.provenance_json(result)
        record, provenance = as_v2(
            study_codec.encode(result, provenance_ref=study_codec.provenance_id(text)), text
        )
        ref = study_codec.provenance_ref(record)
        r.hset(keys.study_results(sid, 1, problem), str(result.study), record)
        r.hsetnx(keys.version_provenance(sid, 1), ref, provenance)
    assert len(r.hgetall(keys.version_provenance(sid, 1))) == 3
    new = [_job_result(study, f"host-new:{study}") for study in range(3, 6)]
    for result in new:
        assert write_study(r, sid, 1, problem, result, None) == 1
    assert len(r.hgetall(keys.version_provenance(sid, 1))) == 4  # the three old ones, one new
    found = read_studies(r, sid, 1, problem)
    assert sorted(found) == list(range(6)) and all(same(found[s.study], s) for s in old + new)
    again = decode_study_hash(
        r.hgetall(keys.study_results(sid, 1, problem)), r.hgetall(keys.version_provenance(sid, 1))
    )
    assert all(same(again[i], found[i]) for i in range(6))


@given(
    st.dictionaries(
        st.text(max_size=30),
        st.lists(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True), max_size=12),
        max_size=6,
    ),
    st.none() | st.text(max_size=12),
)
def test_study_scores_survive_their_stored_form_exactly(problems, baseline_version):
    stored = study_codec.encode_scores(baseline_version, problems)
    assert stored.startswith(study_codec.SCORES_PREFIX)
    found_version, found = study_codec.decode_scores(stored)
    assert found_version == baseline_version
    assert list(found) == list(problems) and exact(found) == exact(problems)
    legacy = json.dumps({"baseline_version": baseline_version, "problems": problems})
    assert not legacy.startswith(study_codec.SCORES_PREFIX)
    # The older JSON form reads as its reader read it (json.loads; JSON keeps no NaN payload).
    assert exact(study_codec.decode_scores(legacy)[1]) == exact(json.loads(legacy)["problems"])


def test_the_keys_of_a_score_versions_study_data(r):
    sid = "s00000000cccccccccc"
    for problem in ("DT-iris-acc", "SVM-wine-nll"):
        write_study(r, sid, 1, problem, _job_result(0, "w:1", problem), None)
    write_study(r, sid, 11, "DT-iris-acc", _job_result(0, "w:1"), None)  # v11 is not v1
    write_study(r, "s00000000dddddddddd", 1, "DT-iris-acc", _job_result(0, "w:1"), None)
    assert version_data_keys(r, sid, 1) == [
        keys.study_results(sid, 1, "DT-iris-acc"),
        keys.study_results(sid, 1, "SVM-wine-nll"),
        keys.version_provenance(sid, 1),
        keys.version_study_problems(sid, 1),
    ]
    # A version written before the problem index (older records only): found by a scan.
    old = "s00000000eeeeeeeeee"
    for problem in ("DT-iris-acc", "RF-wine-acc"):
        r.hset(keys.study_results(old, 2, problem), "0", _job_result(0, "w:1").to_json())
    r.hset(keys.study_results(old, 21, "DT-iris-acc"), "0", _job_result(0, "w:1").to_json())
    assert version_data_keys(r, old, 2) == [
        keys.study_results(old, 2, "DT-iris-acc"),
        keys.study_results(old, 2, "RF-wine-acc"),
    ]
    assert version_data_keys(r, old, 3) == []


# -- the size ----------------------------------------------------------------------------------------

# One problem of every model family, each with its real search space (bayesmark's api_config).
SIZE_PROBLEMS = (
    "DT-wine-nll",
    "MLP-adam-digits-nll",
    "MLP-sgd-breast-acc",
    "RF-iris-acc",
    "SVM-wine-nll",
    "ada-breast-acc",
    "kNN-digits-acc",
    "lasso-diabetes-mse",
    "linear-boston-mse",
)


def test_a_neurips2020_study_is_stored_at_least_three_times_smaller(r):
    """Ten studies of each problem, 16 rounds x 8 random points of its space, uniformly random losses (as
    incompressible as losses get), in jobs of 4 studies each on its own worker, as neurips2020 runs them.
    The compact form's bytes count its share of the provenance hash."""
    from bayesmark.random_search import suggest_dict

    from runtime.spec import load
    from suites.bayesmark_suite import BayesmarkObjective

    spec = load("neurips2020")
    assert (spec.rounds, spec.batch) == (16, 8)
    rng = np.random.RandomState(0)
    total_v1 = total_v2 = studies = 0
    for n, problem in enumerate(SIZE_PROBLEMS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # load_boston's deprecation
            config = BayesmarkObjective(problem, 0, spec.batch).get_api_config()
        sid = f"s{n:08d}sizesizesz"
        v1 = 0
        for study in range(10):
            rounds = [
                suggest_dict([], [], config, n_suggestions=spec.batch, random=rng) for _ in range(spec.rounds)
            ]
            result = _job_result(study, f"bbo-worker-{study // 4:02d}:{4000 + study // 4}", problem)
            result = result.model_copy(
                update={
                    "suggestions": [
                        [{k: getattr(v, "item", lambda v=v: v)() for k, v in p.items()} for p in s]
                        for s in rounds
                    ],
                    "losses": rng.uniform(-1, 1, (spec.rounds, spec.batch)).tolist(),
                    "generalization": rng.uniform(-1, 1, (spec.rounds, spec.batch)).tolist(),
                    "suggest_time_s": float(rng.uniform(0, 100)),
                    "eval_time_s": float(rng.uniform(0, 100)),
                }
            )
            assert write_study(r, sid, 1, problem, result, float(rng.uniform())) == 1
            v1 += len(result.model_copy(update={"normalized": 0.0}).to_json().encode())
        stored = r.hgetall(keys.study_results(sid, 1, problem))
        v2 = sum(len(raw.encode()) for raw in stored.values())
        v2 += sum(len(text.encode()) for text in r.hvals(keys.version_provenance(sid, 1)))
        print(
            f"{problem}: {len(config)} parameters, a study v1 {v1 / 10:.0f} B, v2 {v2 / 10:.0f} B"
            f" ({v1 / v2:.2f}x)"
        )
        total_v1, total_v2, studies = total_v1 + v1, total_v2 + v2, studies + 10
    evals = studies * spec.rounds * spec.batch
    print(
        f"neurips2020-shaped study: v1 {total_v1 / studies:.0f} B ({total_v1 / evals:.0f} B an evaluation), "
        f"v2 {total_v2 / studies:.0f} B ({total_v2 / evals:.0f} B an evaluation): {total_v1 / total_v2:.2f}x"
    )
    assert total_v1 >= 3 * total_v2
