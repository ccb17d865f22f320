"""Warm sandboxes (sandbox_image/host.py --warm, workers/warm_slot.py, workers/sandbox/warm.py) on the
process backend: started before their submission, they load nothing until the harness's load line, then
score a study exactly as a cold sandbox does; a job takes one of its own backend and limits for its first
study and closes any other; a warm host given up (end of file) exits having loaded nothing."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest
from rq import Queue

from artifacts import archive
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.records import load_submission, read_job_log, read_studies
from runtime.spec import load
from sandbox_image import host
from tests.conftest import SUBMISSIONS
from tests.waiting import wait_for
from workers import warm_slot
from workers.harness import run_one_study
from workers.job import score_problem
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import bwrap
from workers.sandbox.process import ProcessBackend
from workers.sandbox.warm import link_tree, shadowed

pytestmark = pytest.mark.usefixtures("unsafe_ok", "state_dir")


def loaded_marker(tmp_path: Path) -> Path:
    """A submission that leaves a file behind when its optimizer.py is imported."""
    folder = tmp_path / "marking"
    folder.mkdir()
    source = (SUBMISSIONS / "random_search" / "optimizer.py").read_text()
    marker = tmp_path / "imported"
    (folder / "optimizer.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + source)
    return folder


def test_a_warm_host_loads_nothing_until_its_load_line(tmp_path, small_spec):
    folder = loaded_marker(tmp_path)
    backend = ProcessBackend()
    proc = OptimizerProcess(backend.launch_warm(small_spec.limits)).start()
    try:
        time.sleep(1.0)  # long enough for a cold host to have loaded and said hello
        assert proc.returncode is None
        assert not (tmp_path / "imported").exists()
        assert proc.load(folder)
        hello = proc.wait_hello(small_spec.limits.call_timeout_s)
        assert hello.message.optimizer == "PlainRandom"
        assert (tmp_path / "imported").exists()
    finally:
        proc.close()


def test_a_warm_sandbox_scores_a_study_exactly_as_a_cold_one(small_spec):
    backend = ProcessBackend()
    folder = SUBMISSIONS / "random_search"
    cold_proc = OptimizerProcess(backend.launch(folder, small_spec.limits)).start()
    cold = run_one_study(cold_proc, "DT-iris-acc", 0, small_spec, backend.describe(), lambda line: None)
    proc = OptimizerProcess(backend.launch_warm(small_spec.limits)).start()
    time.sleep(0.5)
    assert proc.load(folder)
    warm = run_one_study(proc, "DT-iris-acc", 0, small_spec, backend.describe(), lambda line: None)
    assert warm.losses == cold.losses and warm.suggestions == cold.suggestions


def test_a_warm_host_given_up_exits_having_loaded_nothing(tmp_path, small_spec):
    loaded_marker(tmp_path)
    launched = ProcessBackend().launch_warm(small_spec.limits)
    proc = subprocess.Popen(launched.argv, env=launched.env, cwd=launched.cwd, stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)
        proc.stdin.close()  # its worker gave it up, or died
        assert proc.wait(30) == 0
        assert not (tmp_path / "imported").exists()
    finally:
        proc.kill()
        launched.cleanup()


def test_a_warm_host_refuses_anything_but_a_load_line(small_spec):
    launched = ProcessBackend().launch_warm(small_spec.limits)
    proc = subprocess.Popen(
        launched.argv, env=launched.env, cwd=launched.cwd, stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(b'{"op": "init", "api_config": {}, "seed": 1}\n', timeout=30)
        assert proc.returncode != 0 and b"expected a load line" in err
    finally:
        proc.kill()
        launched.cleanup()


def test_the_prewarmed_packages_are_what_the_warm_host_imports():
    python = bwrap.default_python()
    if python is None:
        pytest.skip("no sandbox venv here (bbo admin sandbox venv): the image's packages are not at hand")
    # Named by where they come from: scipy registers some extension modules under top-level names.
    probe = (
        "import os, sys, sysconfig, importlib\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "before = set(sys.modules)\n"
        f"for name in {host.PREWARM!r}: importlib.import_module(name)\n"
        "files = [getattr(sys.modules[m], '__file__', None) or '' for m in set(sys.modules) - before]\n"
        "tops = {os.path.relpath(f, site).split(os.sep)[0] for f in files if f.startswith(site)}\n"
        "print(' '.join(sorted(tops)))"
    )
    done = subprocess.run([python, "-s", "-c", probe], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert "numpy" in loaded and "bayesmark" in loaded
    assert loaded == host.PREWARMED_PACKAGES


def test_a_bundle_shadowing_a_prewarmed_package_needs_a_cold_sandbox(tmp_path):
    site = tmp_path / "site-packages"
    (site / "numpy").mkdir(parents=True)
    (site / "numpy-2.0.0.dist-info").mkdir()
    (site / "turbo").mkdir()
    (site / "six.py").write_text("")
    assert shadowed(site) == {"numpy"}
    (site / "numpy").rmdir()
    assert shadowed(site) == set()
    assert shadowed(tmp_path / "absent") == set()


def test_link_tree_links_files_and_keeps_modes(tmp_path):
    source = tmp_path / "staged"
    (source / "pkg").mkdir(parents=True)
    (source / "optimizer.py").write_text("x = 1\n")
    (source / "pkg" / "mod.py").write_text("y = 2\n")
    for path in (source, source / "pkg"):
        path.chmod(0o755)
    target = tmp_path / "warm"
    target.mkdir()
    link_tree(source, target)
    assert (target / "pkg" / "mod.py").read_text() == "y = 2\n"
    assert (target / "optimizer.py").stat().st_ino == (source / "optimizer.py").stat().st_ino
    assert (target / "pkg").stat().st_mode & 0o777 == 0o755


# -- the job ------------------------------------------------------------------------------------------


def first_job(r):
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    sub = create_submission(r, team="t", data=data, spec=spec, phase="feedback", backend="process")
    job_id = sorted(r.smembers(keys.submission_jobs(sub.id, 1)))[0]
    job = Queue(keys.team_queue("t"), connection=rq_connection()).fetch_job(job_id)
    return sub, spec, job


def test_a_job_takes_a_warm_sandbox_of_its_backend_and_limits_for_its_first_study(r):
    sub, spec, job = first_job(r)
    warm = warm_slot.start("process", spec.limits)
    assert score_problem(job.args[0])["status"] == "done"
    log = "\n".join(read_job_log(r, f"{sub.id}-local"))
    assert "takes the warm process sandbox" in log
    assert warm_slot.held() is None and warm.proc.returncode is not None  # closed with its study
    problem = job.args[0]["problem"]
    assert sorted(read_studies(r, sub.id, 1, problem)) == job.args[0]["studies"]


def test_a_warm_sandbox_of_other_limits_is_closed_and_the_job_starts_cold(r):
    sub, spec, job = first_job(r)
    other = dataclasses.replace(spec.limits, memory_mb=spec.limits.memory_mb // 2)
    warm = warm_slot.start("process", other)
    assert score_problem(job.args[0])["status"] == "done"
    assert warm.proc.returncode is not None  # closed, not used
    assert "warm" not in "\n".join(read_job_log(r, f"{sub.id}-local"))
    assert load_submission(r, sub.id).progress.studies_done == len(job.args[0]["studies"])


def test_discarding_closes_the_warm_sandbox(small_spec):
    warm = warm_slot.start("process", small_spec.limits)
    warm_slot.discard()
    assert warm_slot.held() is None
    assert warm.proc.returncode is not None


# -- the isolating backends ---------------------------------------------------------------------------


def isolating_backend(name: str):
    from workers.sandbox import select
    from workers.sandbox.base import SandboxUnavailable

    try:
        return select(name)
    except SandboxUnavailable as exc:
        pytest.skip(f"{name} backend unavailable here: {exc}")


@pytest.mark.system
@pytest.mark.parametrize("name", ["docker", "bwrap"])
def test_an_isolating_warm_sandbox_scores_as_a_cold_one_and_its_folders_stay_its_own(name, small_spec):
    backend = isolating_backend(name)
    folder = SUBMISSIONS / "random_search"
    backend.prepare(folder, small_spec.limits)
    cold_proc = OptimizerProcess(backend.launch(folder, small_spec.limits)).start()
    cold = run_one_study(cold_proc, "DT-iris-acc", 0, small_spec, backend.describe(), lambda line: None)
    launched = backend.launch_warm(small_spec.limits)
    proc = OptimizerProcess(launched).start()
    time.sleep(0.5)
    assert not launched.started()  # nothing loaded, nothing of the submission reached: no marker yet
    assert proc.load(folder)
    wait_for(launched.started, timeout=30, what="the start marker, once the submission is loading")
    warm = run_one_study(proc, "DT-iris-acc", 0, small_spec, backend.describe(), lambda line: None)
    assert warm.losses == cold.losses and warm.suggestions == cold.suggestions
    # The study's sandbox is gone with its per-launch folders; the artifact's cache is intact.
    prepared = backend.prepared[str(folder.resolve())]
    assert (prepared.submission / "optimizer.py").read_text() == (folder / "optimizer.py").read_text()
