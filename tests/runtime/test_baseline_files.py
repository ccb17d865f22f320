"""Where built baselines live: beside a spec given by path, else in the state folder; the package's shipped
files only when nothing was built; a build never writes into the package. Real builds of a tiny spec, the
real `bbo admin baselines` commands, the scoring path's own lookup (runtime.versions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from baselines.build import build_baselines, build_path, write_baseline_file
from baselines.store import PACKAGE_DIR, MissingBaseline, shipped_path
from cli.baselines_cmd import app
from runtime import versions
from runtime.spec import SPECS_DIR, Spec, load
from tests.baseline_helpers import tiny_spec, write_spec_toml

runner = CliRunner()


@pytest.fixture()
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("BBO_STATE_DIR", str(folder))
    return folder


@pytest.fixture()
def package_untouched():
    """The package's data folder, listed with mtimes before the test and compared after it."""

    def listing() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in PACKAGE_DIR.iterdir()}

    before = listing()
    yield
    assert listing() == before, "a build wrote into the package's baselines/data"


def small() -> Spec:
    return tiny_spec(rounds=2, batch=2, random_studies=2, strong_rounds=2)


def test_nothing_built_uses_the_shipped_file(state):
    demo = load("demo")
    assert versions.baselines_for(demo).path == shipped_path("demo")
    # A spec with nothing built and nothing shipped names every place it looked.
    with pytest.raises(MissingBaseline) as exc:
        versions.baselines_for(small())
    assert str(state.resolve() / "baselines" / "tiny.json") in str(exc.value)
    assert str(shipped_path("tiny")) in str(exc.value)


@pytest.mark.usefixtures("package_untouched")
def test_a_build_of_a_spec_without_a_file_goes_to_the_state_folder_and_scoring_finds_it(state):
    spec = small()
    plan = spec.baseline_plan()
    target = build_path(plan)
    assert target == state.resolve() / "baselines" / "tiny.json"
    data = build_baselines(plan, workers=1)
    write_baseline_file(data, target)
    found = versions.baselines_for(spec, required=spec.all_problems())
    assert found.path == target and found.version == data["version"]
    # The scoring path reads the spec back from the store: the same file.
    assert versions.baselines_for(Spec.from_json(spec.to_json())).path == target


def test_a_build_in_the_state_folder_shadows_the_shipped_file_for_scoring_and_show(state):
    shipped = json.loads(shipped_path("demo").read_text())
    built = state / "baselines" / "demo.json"
    built.parent.mkdir(parents=True)
    built.write_text(json.dumps(shipped | {"version": "organizer-build"}))
    demo = load("demo")
    assert versions.baselines_for(demo).version == "organizer-build"
    assert versions.baselines_for(Spec.from_json(demo.to_json())).path == built.resolve()

    result = runner.invoke(app, ["show", "--spec", "demo", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["path"] == str(built.resolve()) and shown["version"] == "organizer-build"
    assert shown["lookup"] == [
        {"path": str(built.resolve()), "exists": True},
        {"path": str(shipped_path("demo")), "exists": True},
    ]
    table = runner.invoke(app, ["show", "--spec", "demo"])
    assert table.exit_code == 0, table.output
    assert f"1. {built.resolve()} (used)" in table.stdout
    assert f"2. {shipped_path('demo')} (found)" in table.stdout


@pytest.mark.usefixtures("package_untouched")
def test_a_spec_given_by_path_gets_its_baselines_beside_it(state, tmp_path):
    (tmp_path / "specs").mkdir()
    spec_file = write_spec_toml(tmp_path / "specs" / "mine.toml", small())
    beside = tmp_path / "specs" / "mine.baselines.json"
    result = runner.invoke(app, ["build", "--spec", str(spec_file), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["path"] == str(beside) and beside.is_file()
    assert not (state / "baselines").exists()

    loaded = load(spec_file)
    assert versions.baselines_for(loaded).path == beside
    # A worker reads the spec from the store: the copy remembers the file, so it finds the same baselines.
    stored = Spec.from_json(loaded.to_json())
    assert stored.hash == loaded.hash and stored.spec_file == spec_file
    assert versions.baselines_for(stored).version == printed["version"]

    shown = runner.invoke(app, ["show", "--spec", str(spec_file), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["path"] == str(beside)


def test_a_shipped_spec_given_by_path_builds_to_the_state_folder_not_the_package(state):
    by_path = load(SPECS_DIR / "demo.toml")
    assert by_path.spec_file is None
    assert by_path.built_baseline_paths() == (state.resolve() / "baselines" / "demo.json",)
