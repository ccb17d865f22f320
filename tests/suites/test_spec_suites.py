"""Specs choose a suite: per spec or per problem list, names SUITE/NAME, and suites of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.spec import Spec, SpecError, load

HEAD = """
name = "t"
rounds = 4
batch = 2
"""
LIMITS = """
[limits]
suggest_budget_s = 10.0
call_timeout_s = 5.0
"""

OBJECTIVE = """
api_config = {"x": {"type": "real", "space": "linear", "range": (-1.0, 1.0)}}
optimum = 0.0


def evaluate(params):
    return params["x"] ** 2
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(HEAD + body + LIMITS)  # the body's top-level keys before any table
    return path


def test_shipped_specs_keep_their_hashes():
    # The hashes every stored score and baseline file of these specs was made under (before suites).
    assert load("demo").hash == "f8809018f876fe08"
    assert load("neurips2020").hash == "be66328b07fdd858"


def test_a_problem_list_s_suite_wins_over_the_spec_s(tmp_path):
    spec = load(
        write(
            tmp_path,
            """
suite = "bbob"
[phases.feedback]
problems = ["f1-i1-d2", "bbob/f3-i1-d3"]
studies = 1
[phases.final]
suite = "bayesmark"
problems = ["DT-iris-acc", "bbob/f8-i2-d5"]
studies = 1
""",
        )
    )
    assert spec.phases["feedback"].problems == ("bbob/f1-i1-d2", "bbob/f3-i1-d3")
    assert spec.phases["final"].problems == ("DT-iris-acc", "bbob/f8-i2-d5")
    assert spec.suite_set.of("bbob/f1-i1-d2").name == "bbob"
    assert spec.suite_set.of("DT-iris-acc").name == "bayesmark"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('suite = "nope"\n[phases.feedback]\nproblems = ["x"]\nstudies = 1\n', "unknown suite 'nope'"),
        ('[phases.feedback]\nproblems = ["bbob/f99-i1-d2"]\nstudies = 1\n', "f99"),
        ('[phases.feedback]\nproblems = ["bbob/f1-i1-d4"]\nstudies = 1\n', "d4"),
        ('[phases.feedback]\nproblems = ["lab/x"]\nstudies = 1\n', "unknown suite 'lab'"),
        ('[suites.bbob]\nkind = "python"\n', "built-in"),
        ('[suites.lab]\nkind = "docker"\n', 'kind must be "python"'),
        ('[suites.lab]\nkind = "python"\n', "objectives must be a table"),
        ('[suites.lab]\nkind = "python"\nobjectives = {a = "missing.py"}\n', "cannot read"),
        ('[suites.lab]\nkind = "python"\nshell = "rm -rf /"\n', "unknown field(s): shell"),
    ],
)
def test_bad_suites_are_refused_with_the_reason(tmp_path, body, message):
    with pytest.raises(SpecError) as caught:
        load(write(tmp_path, body))
    assert message in str(caught.value)


def test_a_spec_s_own_suite_travels_with_it(tmp_path):
    (tmp_path / "obj").mkdir()
    (tmp_path / "obj" / "square.py").write_text(OBJECTIVE)
    path = write(
        tmp_path,
        """
suite = "lab"
[suites.lab]
kind = "python"
objectives = { square = "obj/square.py" }
[phases.feedback]
problems = ["square"]
studies = 1
""",
    )
    spec = load(path)
    assert spec.phases["feedback"].problems == ("lab/square",)
    assert spec.suites["lab"].objectives == {"square": OBJECTIVE}
    # The store's copy holds the source itself: a worker on another machine needs no file.
    (tmp_path / "obj" / "square.py").unlink()
    again = Spec.from_json(spec.to_json())
    assert again.hash == spec.hash and again.suites == spec.suites
    assert again.baseline_plan().suites == (spec.suites["lab"],)
    # The objective's text is part of the rules: changing it changes the hash.
    (tmp_path / "obj" / "square.py").write_text(OBJECTIVE.replace("** 2", "** 4"))
    assert load(path).hash != spec.hash
    cube = path.read_text().replace('problems = ["square"]', 'problems = ["cube"]')
    path.write_text(cube)
    with pytest.raises(SpecError, match="cube"):
        load(path)
