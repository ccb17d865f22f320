"""A suite's locked environment: exact pins only, built offline from its wheelhouse, once per lock."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from suites.environment import (
    EnvironmentBuildError,
    ensure_environment,
    environment_key,
    environment_python,
    pins,
    shipped,
    venv_dir,
    wheelhouse_dir,
)
from tests.sandbox_helpers import write_wheel


@pytest.mark.parametrize(
    "line",
    [
        "numpy",
        "numpy>=1.24",
        "numpy~=2.4",
        "numpy==2.*",
        "numpy===2.4.6",
        "numpy[dev]==2.4.6",
        "numpy==2.4.6; python_version >= '3.11'",
        "numpy==2.4.6 --hash=sha256:00",
        "-r other.txt",
        "--index-url https://example.org/simple",
        "-e .",
        "git+https://github.com/numbbo/coco-experiment",
        "https://example.org/numpy-2.4.6.whl",
        "./numpy-2.4.6-cp311-cp311-linux_x86_64.whl",
    ],
)
def test_anything_but_an_exact_pin_is_refused_in_one_line(line: str) -> None:
    with pytest.raises(EnvironmentBuildError) as caught:
        pins(f"# a comment\ncoco-experiment==2.8.2\n{line}\n")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("requirements line 3:") and "not an exact pin name==version" in message


def test_pins_are_canonical_sorted_and_their_key_ignores_comments_and_order() -> None:
    text = "# bbob\nNumPy==2.4.6  # numpy 2\n\ncoco_experiment==2.8.2\ntorch==2.1.0+cpu\n"
    assert pins(text) == ["coco-experiment==2.8.2", "numpy==2.4.6", "torch==2.1.0+cpu"]
    assert environment_key(text) == environment_key("torch==2.1.0+cpu\ncoco-experiment==2.8.2\nnumpy==2.4.6")
    assert environment_key(text) != environment_key("coco-experiment==2.8.2\nnumpy==2.4.5\ntorch==2.1.0+cpu")


def test_a_package_pinned_twice_or_nothing_pinned_is_refused() -> None:
    with pytest.raises(EnvironmentBuildError, match="numpy is pinned twice"):
        pins("numpy==2.4.6\nNumPy==2.4.5\n")
    with pytest.raises(EnvironmentBuildError, match="pin nothing"):
        pins("# nothing\n")


def test_no_requirements_is_the_workers_own_interpreter_with_nothing_built(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BBO_CACHE_DIR", str(tmp_path))
    assert environment_python("") == ensure_environment("lab", "") == sys.executable
    assert ensure_environment("lab", "\n  \n") == sys.executable
    assert not (tmp_path / "suites").exists()


def test_the_shipped_bbob_lock_pins_coco_and_numpy_2() -> None:
    locked = pins(shipped("bbob"))
    assert [p.split("==")[0] for p in locked] == ["coco-experiment", "numpy"]
    assert locked[1].split("==")[1].startswith("2.")
    with pytest.raises(EnvironmentBuildError, match=r"no shipped environment 'nope' \(shipped: bbob"):
        shipped("nope")


# -- real builds, offline from hand-written wheels ---------------------------------------------------


@pytest.fixture()
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of its own, and pip's only source a folder of wheels written here."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "bbo-tiny-a", "1.0", {"bbo_tiny_a.py": "VALUE = 'a'\n"}, requires=("bbo-tiny-b>=2",))
    write_wheel(wheels, "bbo-tiny-b", "2.0", {"bbo_tiny_b.py": "VALUE = 'b'\n"})
    monkeypatch.setenv("BBO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


def test_an_environment_is_built_once_from_its_wheelhouse_and_reused(offline_index: Path) -> None:
    lock = "# tiny\nbbo-tiny-a==1.0\nbbo-tiny-b==2.0\n"
    logs: list[str] = []
    results: list[str] = []
    # Two builders at once (two workers): one builds, the other waits for it and uses its result.
    builders = [
        threading.Thread(target=lambda: results.append(ensure_environment("tiny", lock, logs.append)))
        for _ in range(2)
    ]
    for thread in builders:
        thread.start()
    for thread in builders:
        thread.join()
    assert len(results) == 2 and results[0] == results[1] == environment_python(lock)
    assert sum("creating the tiny environment" in line for line in logs) == 1
    python = results[0]
    assert Path(python).parent.parent == venv_dir(lock)
    assert sorted(p.name.split("-")[0] for p in wheelhouse_dir(lock).glob("*.whl")) == [
        "bbo_tiny_a",
        "bbo_tiny_b",
    ]
    assert not list(wheelhouse_dir(lock).parent.glob("*.partial"))

    done = subprocess.run(
        [python, "-I", "-c", "import bbo_tiny_a, bbo_tiny_b; print(bbo_tiny_a.VALUE + bbo_tiny_b.VALUE)"],
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "ab"
    # Its own packages only: nothing of the worker's stack, and no pip to change it.
    for absent in ("numpy", "bayesmark", "pip"):
        assert subprocess.run([python, "-I", "-c", f"import {absent}"], capture_output=True).returncode != 0

    marker = venv_dir(lock) / ".complete"
    before = marker.stat().st_mtime_ns
    assert ensure_environment("tiny", "bbo-tiny-b==2.0\nbbo-tiny-a==1.0", logs.append) == python
    assert marker.stat().st_mtime_ns == before


def test_a_lock_missing_a_dependency_is_refused_naming_it(offline_index: Path) -> None:
    with pytest.raises(EnvironmentBuildError) as caught:
        ensure_environment("tiny", "bbo-tiny-a==1.0\n", [].append)
    message = str(caught.value)
    assert "not a complete lock: bbo-tiny-b" in message and "\n" not in message
    assert environment_python("bbo-tiny-a==1.0\n") is None
    assert not venv_dir("bbo-tiny-a==1.0\n").exists()


def test_a_pin_the_index_does_not_have_fails_in_one_line(offline_index: Path) -> None:
    with pytest.raises(EnvironmentBuildError, match=r"pip wheel failed: .*bbo-tiny-a==9\.9") as caught:
        ensure_environment("tiny", "bbo-tiny-a==9.9\n", [].append)
    assert "\n" not in str(caught.value)
