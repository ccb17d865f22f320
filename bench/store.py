"""Store figures: how much Redis a scored neurips2020 submission keeps, before and after archiving, and what
its archive costs (issue 16, "The seed's scale in memory").

In a scratch state folder with an embedded Redis of its own, it lays down synthetic but shape-true
neurips2020 data through the real write path: --submissions feedback submissions (30 problems x 10
studies) and --finalists final-phase submissions (30 held-out problems x 100 studies), each recorded as
the service records it (the intake's writes: spec, artifact, `records.save_new_submission` with a real
Submission, its `submitted` event and job set; then per job, as workers/job.py does: the transition to
running, every study through `records.write_study` with its `study` event, the job's log through
`records.append_job_log` within the version's log budget and retention, the problem's done mark and
`versions.finalize_if_complete`, which writes the score version's hash and moves it to scored). A study is
16 rounds x 8 suggestions drawn in the problem's real bayesmark space (each parameter of its type and
range, normalised by queue_schema.suggestions as the harness does), float visible and generalization
losses, provenance as a docker worker writes it (sandbox, packages, seeds) and its normalized score. A
finalist also gets its final-leaderboard study scores (competition.final.study_scores). RQ's own job
records are not laid down (they expire a week after the job ends).

Without a shipped neurips2020 baseline file (`bbo admin baselines build --spec neurips2020` takes hours),
a synthetic one of the same shape (16 iterations, both objectives, every problem) is written in the
scratch folder and read in its place; the normalized scores and the export's baseline record then rest on
it, which changes no byte count that matters here.

Then it exports (competition.scores.export_bayesmark) the first --export-checks submissions of each kind,
archives every submission's score version with runtime.archiver.archive_version (when that module
exists; otherwise the archive figures are null with the reason), exports them again and compares every
file byte for byte.

- redis_bytes_per_scored_submission: MEMORY USAGE (SAMPLES 0, exact) of every key of a feedback
  submission (keys holding its id: record, studies, events, score version, job set, done set, job logs),
  summed, after archiving (without the archiver: as it stays today). Keys with a TTL (job logs and their
  budget, kept `logs.retention_days`) are left out of it and counted in *_expiring_*; the artifact
  (content-addressed zip, `artifact_bytes_per_submission`) is counted apart. `*_hot` is the same before
  archiving; `*_by_family` splits both by key family. `used_memory_*` are INFO used_memory deltas while
  laying down and while archiving, the cross-check (they include index entries and the global stream).
- seed_scale_redis_gb: 3,608 x the feedback figure + 10 finalists x the finalist figure, / 1e9.
- archive_bytes_per_submission, archive_s_per_submission: the bytes archive_version added under
  STATE/archive/ and the seconds it took, per feedback submission (finalists apart).
- export_identical: every file of every export after archiving equals the one taken before.

    python -m bench store --json [--submissions 20] [--finalists 3] [--problems 30] [--studies 10]
        [--final-studies 100] [--export-checks 1] [--seed 0] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import importlib
import inspect
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from artifacts import archive
from baselines import store as baseline_store
from bench.common import logger, print_figures, salted_zip, scratch_state
from competition import final as final_phase
from competition import scores
from queue_schema import keys
from queue_schema.connection import connect
from queue_schema.ids import job_id, new_submission_id
from queue_schema.payloads import StudyResult, Submission
from queue_schema.records import (
    add_event,
    append_job_log,
    load_submission,
    save_new_submission,
    transition,
    write_study,
)
from queue_schema.states import StudyState, SubmissionState
from queue_schema.suggestions import BOOL, INT, Param, Space, check_batch, compile_space
from runtime import versions
from runtime.enqueue import phase_progress
from runtime.provenance import scoring_packages, study_seeds
from runtime.redis_server import ensure_redis
from runtime.spec import Spec, load
from suites.bayesmark_catalogue import parse

ROOT = Path(__file__).resolve().parent.parent
SUBMISSION = ROOT / "tests" / "submissions" / "random_search"
SPEC = "neurips2020"
SEED_FEEDBACK_SUBMISSIONS = 3608  # the NeurIPS 2020 challenge's feedback submissions
SEED_FINALISTS = 10
TEAMS = 70
IMAGE = "bbo-arena/sandbox:neurips2020"
IMAGE_DIGEST = "sha256:" + "d0c4e7" * 10 + "a1b2"
MIB = 1024 * 1024

_log = logger("store")


# -- the problems' spaces ---------------------------------------------------------------------------


def api_config(problem: str) -> dict[str, Any]:
    """The problem's bayesmark api_config, as the harness hands it to the optimizer (real names)."""
    from bayesmark.sklearn_funcs import MODELS_CLF, MODELS_REG

    p = parse(problem)
    models = MODELS_REG if p.is_regression else MODELS_CLF
    return models[p.model][2]


def draw(rng: random.Random, param: Param, config: dict[str, Any]) -> Any:
    """A value of the parameter in its declared space (log, logit and linear warps honoured)."""
    if param.kind == BOOL:
        return rng.random() < 0.5
    if param.values is not None:
        return rng.choice(param.values)
    lo, hi = float(param.lo), float(param.hi)  # type: ignore[arg-type]
    warp = config.get("space", "linear")
    if warp == "log":
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    elif warp == "logit":
        logit = rng.uniform(math.log(lo / (1 - lo)), math.log(hi / (1 - hi)))
        value = 1 / (1 + math.exp(-logit))
    else:
        value = rng.uniform(lo, hi)
    value = min(max(value, lo), hi)
    return int(round(value)) if param.kind == INT else value


@dataclass
class Problem:
    name: str
    config: dict[str, Any]
    space: Space
    clip: float
    opt: float

    def batch(self, rng: random.Random, n: int) -> list[dict[str, Any]]:
        points = [{k: draw(rng, p, self.config[k]) for k, p in self.space.items()} for _ in range(n)]
        return check_batch(points, self.space, n)  # normalised as the harness stores them


# -- synthetic baselines ----------------------------------------------------------------------------


def loss_range(problem: str, rng: random.Random) -> tuple[float, float]:
    """A plausible (clip, opt) of the visible loss: bayesmark minimises -accuracy, nll, mae and mse."""
    metric = problem.rsplit("-", 1)[1]
    dataset = problem.rsplit("-", 2)[1]
    if metric == "acc":
        return -rng.uniform(0.3, 0.7), -rng.uniform(0.9, 0.99)
    if metric == "nll":
        return rng.uniform(1.0, 2.5), rng.uniform(0.02, 0.3)
    scale = {"boston": 1.0, "diabetes": 8.0}.get(dataset, 1.0)
    if metric == "mae":
        return scale * rng.uniform(6, 9), scale * rng.uniform(2.0, 3.5)
    return scale * scale * rng.uniform(50, 90), scale * scale * rng.uniform(8, 15)


def synthetic_baselines(spec: Spec, rng: random.Random) -> dict[str, Any]:
    """A baseline file of the real shape (every problem, `rounds` iterations, both objectives)."""

    def curves(clip: float, opt: float) -> dict[str, Any]:
        med = [opt + (clip - opt) * (0.15 + 0.6 * math.exp(-k / 3)) for k in range(spec.rounds)]
        mean = [opt + (clip - opt) * (0.2 + 0.6 * math.exp(-k / 3)) for k in range(spec.rounds)]
        return {"clip": clip, "opt": opt, "median": med, "mean": mean}

    problems = {}
    for name in spec.all_problems():
        clip, opt = loss_range(name, rng)
        visible = curves(clip, opt)
        visible["mean_normed"] = [(m - opt) / (clip - opt) for m in visible["mean"]]
        problems[name] = {
            "test_case": parse(name).test_case,
            **visible,
            "strong_best": opt,
            "random_best": opt + 0.05 * (clip - opt),
            "generalization": curves(clip + 0.02 * abs(clip), opt + 0.02 * abs(opt)),
        }
    plan = spec.baseline_plan()
    return {
        "format": baseline_store.FORMAT,
        "version": f"{spec.hash}-synthetic",
        "spec": spec.name,
        "spec_hash": spec.hash,
        "rounds": spec.rounds,
        "batch": spec.batch,
        "created_at": "2020-07-10T00:00:00Z",
        "provenance": {
            "synthetic": "bench/store.py: not built, shape only",
            "baseline_settings": {
                "random_studies": plan.random_studies,
                "strong_rounds": plan.strong_rounds,
                "seed": plan.seed,
            },
        },
        "problems": problems,
    }


@contextlib.contextmanager
def baselines_for(spec: Spec, state: Path, rng: random.Random) -> Iterator[str]:
    """The spec's baselines when it has some (shipped, or built beside its file); else a synthetic file
    where a build would go, the scratch state folder, which every reader looks in first. Yields
    "shipped" or "synthetic"."""
    plan = spec.baseline_plan()
    if baseline_store.find_baseline_file(plan) is not None:
        yield "shipped"
        return
    target = baseline_store.build_path(plan)
    assert target.resolve().is_relative_to(state.resolve()), f"{target} is outside the scratch folder {state}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(synthetic_baselines(spec, rng)))
    yield "synthetic"


# -- the competition --------------------------------------------------------------------------------


def bench_spec(problems: int | None, studies: int | None, final_studies: int | None) -> Spec:
    """neurips2020 itself by default; cut to the first `problems` of each phase and to fewer studies for
    a quick run (same rounds, batch and job sizes)."""
    spec = load(SPEC)
    if problems is None and studies is None and final_studies is None:
        return spec
    phases = {}
    for name, phase in spec.phases.items():
        kept = phase.problems[:problems] if problems else phase.problems
        count = (studies if name == "feedback" else final_studies) or phase.studies
        sizes = tuple((p, min(n, count)) for p, n in phase.studies_per_job_by_problem if p in kept)
        phases[name] = replace(
            phase,
            problems=kept,
            studies=count,
            studies_per_job=min(phase.studies_per_job, count),
            studies_per_job_by_problem=sizes,
        )
    return replace(spec, phases=phases)


@dataclass
class Laid:
    """One submission as laid down: its id, kind, and what that took."""

    sid: str
    kind: str  # feedback | final
    studies: int
    evals: int
    seconds: float
    used_memory_delta: int
    keys_hot: dict[str, int] = field(default_factory=dict)  # family -> bytes (persistent)
    expiring_hot: dict[str, int] = field(default_factory=dict)
    keys_cold: dict[str, int] = field(default_factory=dict)
    expiring_cold: dict[str, int] = field(default_factory=dict)
    archive_bytes: int | None = None
    archive_s: float | None = None
    artifact_bytes: int = 0


class Layer:
    """Writes submissions the way the service does, each through the project's own writers."""

    def __init__(self, r: redis.Redis, spec: Spec, seed: int) -> None:
        self.r = r
        self.spec = spec
        self.rng = random.Random(seed)
        self.baselines = versions.baselines_for(spec)
        self.problems: dict[str, Problem] = {}
        for name in spec.all_problems():
            config = api_config(name)
            clip, opt = versions.clip_opt(self.baselines, name)
            self.problems[name] = Problem(name, config, compile_space(config), clip, opt)
        self.zip_template = SUBMISSION
        self.count = 0

    # -- intake ---------------------------------------------------------------------------------

    def feedback(self, team: str) -> Submission:
        """As competition.submit.create_submission records an accepted upload (its RQ jobs left out)."""
        self.count += 1
        data = salted_zip(self.zip_template, f"{team}-{self.count}-{self.rng.random()}")
        artifact = archive.check(data, self.spec.submission)
        sub = Submission(
            id=new_submission_id(),
            team=team,
            artifact_sha256=artifact.sha256,
            spec_name=self.spec.name,
            spec_hash=self.spec.hash,
            phase="feedback",
            baseline_version=self.baselines.version,
            backend="docker",
            progress=phase_progress(self.spec, "feedback"),
        )
        self.r.set(keys.spec(self.spec.hash), self.spec.to_json())
        archive.store(self.r, artifact)
        save_new_submission(self.r, sub)
        add_event(
            self.r,
            "submitted",
            sub.id,
            team=team,
            phase="feedback",
            spec=self.spec.name,
            sha256=sub.artifact_sha256,
        )
        self.enqueued(sub)
        return sub

    def finalist(self, source: Submission) -> Submission:
        """As competition.final._launch records a finalist's final-phase submission."""
        sub = Submission(
            id=new_submission_id(),
            team=source.team,
            artifact_sha256=source.artifact_sha256,
            filename=source.filename,
            spec_name=self.spec.name,
            spec_hash=self.spec.hash,
            phase="final",
            baseline_version=self.baselines.version,
            progress=phase_progress(self.spec, "final"),
            charged=False,
            source=source.id,
            backend="docker",
        )
        self.r.set(keys.spec(self.spec.hash), self.spec.to_json())
        save_new_submission(self.r, sub)
        launch_key = f"{sub.team}:{self.spec.hash}:{sub.artifact_sha256}"
        self.r.hset(keys.final_launches(self.spec.name), launch_key, sub.id)
        add_event(
            self.r,
            "submitted",
            sub.id,
            team=sub.team,
            phase="final",
            spec=self.spec.name,
            sha256=sub.artifact_sha256,
            source=source.id,
        )
        self.enqueued(sub)
        self.r.hset(keys.final_entries(self.spec.name), sub.team, sub.id)
        return sub

    def enqueued(self, sub: Submission) -> None:
        """The job set runtime.enqueue.enqueue_jobs keeps (RQ's records of the jobs are not laid down)."""
        phase = self.spec.phase(sub.phase)
        ids = [job_id(sub.id, sub.score_version, p, c) for p, c, _ in phase.jobs()]
        self.r.sadd(keys.submission_jobs(sub.id, sub.score_version), *ids)

    # -- the jobs -------------------------------------------------------------------------------

    def score(self, sub: Submission) -> int:
        """Every job of the score version as workers/job.py runs it; the evaluations written."""
        phase = self.spec.phase(sub.phase)
        target = self.rng.uniform(0.05, 0.6)  # the submission's level (normalized score)
        host = f"bbo-worker-{self.rng.randrange(24):02d}"
        evals = 0
        for problem, chunk, studies in phase.jobs():
            jid = job_id(sub.id, sub.score_version, problem, chunk)
            worker = f"{host}:{self.rng.randrange(1000, 60000)}"
            transition(
                self.r,
                sub.id,
                SubmissionState.RUNNING,
                version=sub.score_version,
                only_from=[SubmissionState.QUEUED],
            )
            lines = [self._line(f"[harness] {problem}: studies {studies}, {len(studies)} to run on {worker}")]
            for study in studies:
                result = self.study(problem, study, target, worker)
                normalized = versions.study_normalized(self.baselines, problem, result, self.spec.rounds)
                write_study(self.r, sub.id, sub.score_version, problem, result, normalized)
                evals += sum(len(round_) for round_ in result.losses)
                if self.rng.random() < 0.3:
                    lines.append(
                        self._line("/opt/optimizer/optimizer.py:41: UserWarning: suggesting from the prior")
                    )
                lines.append(
                    self._line(
                        f"[harness] study {study} {result.state.value}: {len(result.losses)} rounds, "
                        f"optimizer {result.suggest_time_s:.1f} s, objective {result.eval_time_s:.1f} s"
                    )
                )
            append_job_log(
                self.r,
                jid,
                lines,
                budget_key=keys.log_budget(sub.id, sub.score_version),
                budget_bytes=self.spec.logs.submission_mb * MIB,
                retention_s=int(self.spec.logs.retention_days * 86_400),
            )
            self.r.sadd(keys.problems_done(sub.id, sub.score_version), f"{problem}#{chunk}")
            versions.finalize_if_complete(self.r, sub.id, sub.score_version)
        return evals

    def _line(self, text: str) -> str:
        return f"{time.strftime('%H:%M:%S', time.gmtime())} {text}"

    def study(self, problem: str, study: int, target: float, worker: str) -> StudyResult:
        """One complete study as the harness returns it (16 x 8, real space, both losses, provenance)."""
        p, rng, rounds, batch = self.problems[problem], self.rng, self.spec.rounds, self.spec.batch
        final = min(1.0, max(-0.1, target + rng.gauss(0, 0.08)))
        losses, general, points = [], [], []
        for k in range(rounds):
            level = final + (1.0 - final) * math.exp(-3.0 * k / rounds)
            row = [p.opt + (p.clip - p.opt) * (level + abs(rng.gauss(0, 0.15))) for _ in range(batch)]
            losses.append(row)
            general.append([v + abs(rng.gauss(0, 0.02 * abs(p.clip - p.opt))) for v in row])
            points.append(p.batch(rng, batch))
        losses[-1][rng.randrange(batch)] = p.opt + (p.clip - p.opt) * final
        describe = {"backend": "docker", "image": IMAGE, "image_digest": IMAGE_DIGEST}
        return StudyResult(
            study=study,
            state=StudyState.COMPLETE,
            losses=[[StudyResult.encode_loss(v) for v in row] for row in losses],
            generalization=[[StudyResult.encode_loss(v) for v in row] for row in general],
            suggestions=points,
            suggest_time_s=round(rng.uniform(0.5, 600.0), 4),
            eval_time_s=round(rng.uniform(0.2, 900.0), 4),
            worker=worker,
            backend="docker",
            image_digest=IMAGE_DIGEST,
            sandbox=describe,
            packages=scoring_packages(),
            seeds=study_seeds(problem, study),
        )


# -- measuring --------------------------------------------------------------------------------------


def family(key: str, sid: str) -> str:
    """A key's family: bbo:studies:SID:v1:PROBLEM -> studies, bbo:log:SID-v1-... -> log."""
    parts = key.split(":")
    return parts[1] if len(parts) > 1 else key


def key_bytes(r: redis.Redis, sid: str) -> tuple[dict[str, int], dict[str, int]]:
    """(persistent, expiring) bytes by key family of every key holding the submission's id."""
    found = sorted(r.scan_iter(match=f"{keys.PREFIX}:*{sid}*", count=10_000))
    pipe = r.pipeline(transaction=False)
    for key in found:
        pipe.memory_usage(key, samples=0)
        pipe.pttl(key)
    answers = pipe.execute()
    persistent: dict[str, int] = {}
    expiring: dict[str, int] = {}
    for key, size, ttl in zip(found, answers[::2], answers[1::2], strict=True):
        into = expiring if ttl is not None and int(ttl) >= 0 else persistent
        into[family(key, sid)] = into.get(family(key, sid), 0) + int(size or 0)
    return persistent, expiring


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def folder_bytes(folder: Path) -> dict[str, int]:
    if not folder.exists():
        return {}
    return {str(p): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def same_tree(a: Path, b: Path) -> tuple[bool, str]:
    """Every file under `a` equals the one under `b` byte for byte, and no file is only on one side."""
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        return False, f"file lists differ ({len(files_a)} vs {len(files_b)})"
    for name in files_a:
        if not filecmp.cmp(a / name, b / name, shallow=False):
            return False, f"{name} differs"
    return True, f"{len(files_a)} files identical"


def load_archiver() -> tuple[Any, str | None]:
    """runtime.archiver when it exists; else None and why."""
    try:
        return importlib.import_module("runtime.archiver"), None
    except ImportError as exc:
        return None, f"runtime.archiver is not there yet ({exc})"


def archive_now(archiver: Any, r: redis.Redis, sid: str) -> Any:
    """archive_version of the submission's score version 1, now: without the grace period after a
    version ends (its jobs have long finished here) when the archiver has one."""
    extra = {"grace": 0.0} if "grace" in inspect.signature(archiver.archive_version).parameters else {}
    return archiver.archive_version(r, sid, 1, **extra)


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def rounded(value: float | None, digits: int = 0) -> float | int | None:
    if value is None:
        return None
    return round(value) if digits == 0 else round(value, digits)


def total(parts: dict[str, int]) -> int:
    return sum(parts.values())


def mean_families(laid: list[Laid], attr: str) -> dict[str, int]:
    names = sorted({name for x in laid for name in getattr(x, attr)})
    return (
        {n: round(statistics.fmean(getattr(x, attr).get(n, 0) for x in laid)) for n in names} if laid else {}
    )


# -- the run ----------------------------------------------------------------------------------------


def shape(spec: Spec, phase: str) -> str:
    return f"{len(spec.phase(phase).problems)} problems x {spec.phase(phase).studies} studies"


def run(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = bench_spec(args.problems, args.studies, args.final_studies)
    archiver, why_not = load_archiver()
    figures: dict[str, Any] = {
        "spec": spec.name,
        "spec_hash": spec.hash,
        "feedback_shape": shape(spec, "feedback"),
        "final_shape": shape(spec, "final"),
        "study_shape": f"{spec.rounds} x {spec.batch}",
        "submissions": args.submissions,
        "finalists": args.finalists,
    }
    rng = random.Random(args.seed)
    with baselines_for(spec, state, rng) as which, ensure_redis() as url:
        figures["baselines"] = which
        r = connect(url)
        started = time.monotonic()
        layer = Layer(r, spec, args.seed)
        laid: list[Laid] = []
        feedback: list[Submission] = []
        for i in range(args.submissions):
            before, t0 = used_memory(r), time.monotonic()
            sub = layer.feedback(f"team-{i % TEAMS:02d}")
            evals = layer.score(sub)
            laid.append(
                Laid(
                    sub.id,
                    "feedback",
                    sub.progress.studies_total,
                    evals,
                    time.monotonic() - t0,
                    used_memory(r) - before,
                )
            )
            feedback.append(sub)
            _log(f"feedback {i + 1}/{args.submissions}: {sub.id} in {laid[-1].seconds:.1f} s")
        for i in range(args.finalists):
            before, t0 = used_memory(r), time.monotonic()
            sub = layer.finalist(feedback[i % len(feedback)])
            evals = layer.score(sub)
            scored = load_submission(r, sub.id)
            assert scored is not None and scored.last_scored() is not None, (
                f"finalist {sub.id} was not scored"
            )
            final_phase.study_scores(r, scored.last_scored())  # the final leaderboard's cache of it
            laid.append(
                Laid(
                    sub.id,
                    "final",
                    sub.progress.studies_total,
                    evals,
                    time.monotonic() - t0,
                    used_memory(r) - before,
                )
            )
            _log(f"finalist {i + 1}/{args.finalists}: {sub.id} in {laid[-1].seconds:.1f} s")
        figures["lay_down_s"] = round(time.monotonic() - started, 1)
        for x in laid:
            sub = load_submission(r, x.sid)
            assert sub is not None and sub.state == SubmissionState.SCORED, f"{x.sid} is {sub and sub.state}"
            x.keys_hot, x.expiring_hot = key_bytes(r, x.sid)
            x.artifact_bytes = int(r.memory_usage(keys.artifact(sub.artifact_sha256), samples=0) or 0) + int(
                r.memory_usage(keys.artifact_meta(sub.artifact_sha256), samples=0) or 0
            )

        # Exports before archiving.
        exports = state / "exports"
        checked = [x for x in laid if x.kind == "feedback"][: args.export_checks]
        checked += [x for x in laid if x.kind == "final"][: args.export_checks]
        t0 = time.monotonic()
        for x in checked:
            # The export names its own folder (bayesmark's db root): both exports are written at one path.
            scores.export_bayesmark(r, x.sid, exports / x.sid)
            (exports / x.sid).rename(exports / f"{x.sid}-before")
        figures["export_s_per_submission"] = (
            rounded((time.monotonic() - t0) / len(checked), 2) if checked else None
        )

        # Archiving.
        used_before_archive = used_memory(r)
        if archiver is not None:
            folder = state / "archive"
            not_archived: list[str] = []
            for x in laid:
                files = folder_bytes(folder)
                t0 = time.monotonic()
                report = archive_now(archiver, r, x.sid)
                x.archive_s = time.monotonic() - t0
                outcome = getattr(report, "outcome", "archived")
                if outcome != "archived":
                    not_archived.append(f"{x.sid}: {outcome} {getattr(report, 'reason', '')}".strip())
                after = folder_bytes(folder)
                x.archive_bytes = sum(size - files.get(path, 0) for path, size in after.items())
                x.keys_cold, x.expiring_cold = key_bytes(r, x.sid)
            identical, notes = True, []
            for x in checked:
                scores.export_bayesmark(r, x.sid, exports / x.sid)
                same, note = same_tree(exports / f"{x.sid}-before", exports / x.sid)
                identical = identical and same
                notes.append(f"{x.sid}: {note}")
            figures["export_identical"] = identical if checked else None
            figures["export_checked"] = notes
            figures["not_archived"] = not_archived
        else:
            figures["export_identical"] = None
            figures["archive_skipped"] = why_not
        figures["used_memory_freed_by_archiving_bytes"] = (
            used_before_archive - used_memory(r) if archiver else None
        )
        if not args.keep:
            shutil.rmtree(exports, ignore_errors=True)
        figures |= summarise(laid, archiver is not None)
        figures["run_s"] = round(time.monotonic() - started, 1)
        r.close()
    return figures


def summarise(laid: list[Laid], archived: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"archived": archived}
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in ("feedback", "final"):
        group = [x for x in laid if x.kind == kind]
        if not group:
            per_kind[kind] = {}
            continue
        hot = statistics.fmean(total(x.keys_hot) for x in group)
        expiring_hot = statistics.fmean(total(x.expiring_hot) for x in group)
        cold = statistics.fmean(total(x.keys_cold) for x in group) if archived else None
        expiring_cold = statistics.fmean(total(x.expiring_cold) for x in group) if archived else None
        evals = statistics.fmean(x.evals for x in group)
        per_kind[kind] = {
            "hot": hot,
            "cold": cold,
            "now": cold if archived else hot,
            "expiring_now": expiring_cold if archived else expiring_hot,
            "expiring_hot": expiring_hot,
            "evals": evals,
            "studies": statistics.fmean(x.studies for x in group),
            "used_memory_delta": statistics.fmean(x.used_memory_delta for x in group),
            "seconds": statistics.fmean(x.seconds for x in group),
            "families_hot": mean_families(group, "keys_hot"),
            "families_cold": mean_families(group, "keys_cold") if archived else None,
            "expiring_families_hot": mean_families(group, "expiring_hot"),
            "archive_bytes": mean([x.archive_bytes for x in group if x.archive_bytes is not None]),
            "archive_s": mean([x.archive_s for x in group if x.archive_s is not None]),
            "archive_s_max": max((x.archive_s for x in group if x.archive_s is not None), default=None),
            "artifact": statistics.fmean(x.artifact_bytes for x in group),
        }
    fb, fin = per_kind["feedback"], per_kind["final"]
    out["redis_bytes_per_scored_submission"] = rounded(fb.get("now"))
    out["redis_bytes_per_scored_submission_hot"] = rounded(fb.get("hot"))
    out["redis_expiring_bytes_per_scored_submission"] = rounded(fb.get("expiring_now"))
    out["redis_expiring_bytes_per_scored_submission_hot"] = rounded(fb.get("expiring_hot"))
    out["redis_bytes_per_evaluation"] = rounded(fb["now"] / fb["evals"], 2) if fb else None
    out["redis_bytes_per_evaluation_hot"] = rounded(fb["hot"] / fb["evals"], 2) if fb else None
    out["redis_bytes_by_family_hot"] = fb.get("families_hot")
    out["redis_bytes_by_family"] = fb.get("families_cold")
    out["redis_expiring_bytes_by_family_hot"] = fb.get("expiring_families_hot")
    out["used_memory_per_submission_laid_bytes"] = rounded(fb.get("used_memory_delta"))
    out["lay_s_per_submission"] = rounded(fb.get("seconds"), 2)
    out["artifact_bytes_per_submission"] = rounded(fb.get("artifact"))
    out["archive_bytes_per_submission"] = rounded(fb.get("archive_bytes"))
    out["archive_s_per_submission"] = rounded(fb.get("archive_s"), 3)
    out["archive_s_per_submission_max"] = rounded(fb.get("archive_s_max"), 3)
    out["redis_bytes_per_finalist"] = rounded(fin.get("now"))
    out["redis_bytes_per_finalist_hot"] = rounded(fin.get("hot"))
    out["redis_expiring_bytes_per_finalist_hot"] = rounded(fin.get("expiring_hot"))
    out["redis_bytes_by_family_finalist_hot"] = fin.get("families_hot")
    out["redis_bytes_by_family_finalist"] = fin.get("families_cold")
    out["used_memory_per_finalist_laid_bytes"] = rounded(fin.get("used_memory_delta"))
    out["archive_bytes_per_finalist"] = rounded(fin.get("archive_bytes"))
    out["archive_s_per_finalist"] = rounded(fin.get("archive_s"), 3)

    def scale(key: str, expiring: str | None = None) -> float | None:
        if not fb:
            return None
        per_fb = fb[key] + (fb[expiring] if expiring else 0)
        per_fin = (fin[key] + (fin[expiring] if expiring else 0)) if fin else 0.0
        return round((SEED_FEEDBACK_SUBMISSIONS * per_fb + SEED_FINALISTS * per_fin) / 1e9, 3)

    out["seed_scale_redis_gb"] = scale("now")
    out["seed_scale_redis_gb_hot"] = scale("hot")
    out["seed_scale_redis_gb_with_unexpired_logs"] = scale("now", "expiring_now")
    out["seed_scale_note"] = (
        f"{SEED_FEEDBACK_SUBMISSIONS} x feedback + {SEED_FINALISTS} x finalist bytes; "
        "artifacts, RQ records, indexes and the capped global event stream not included"
        + ("" if fin else "; no finalist measured (counted as 0)")
    )
    out["targets"] = {
        "redis_bytes_per_scored_submission": 20_000,
        "archive_bytes_per_submission": 2_000_000,
        "seed_scale_redis_gb": 1,
    }
    return out


def main(argv: list[str]) -> None:
    # scikit-learn 1.1 warns on loading boston whenever the export computes a problem's signature.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(prog="python -m bench store", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--submissions", type=int, default=20, help="scored feedback submissions")
    parser.add_argument(
        "--finalists",
        type=int,
        default=3,
        help="scored final-phase submissions (the seed has 10: extrapolated)",
    )
    parser.add_argument("--problems", type=int, default=None, help="only the first N problems of each phase")
    parser.add_argument("--studies", type=int, default=None, help="feedback studies per problem (spec: 10)")
    parser.add_argument(
        "--final-studies", type=int, default=None, help="final studies per problem (spec: 100)"
    )
    parser.add_argument(
        "--export-checks", type=int, default=1, help="submissions of each kind exported before and after"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch state folder (its path is logged)"
    )
    args = parser.parse_args(argv)
    if args.submissions < 1 or args.finalists < 0 or args.export_checks < 0:
        parser.error("--submissions must be at least 1, --finalists and --export-checks not negative")
    if args.finalists > args.submissions:
        parser.error(
            "--finalists cannot exceed --submissions (a finalist is a feedback submission's artifact)"
        )
    with scratch_state("bbo-store-", keep=args.keep) as state:
        if args.keep:
            _log(f"state folder kept: {state}")
        figures = run(state, args)
    figures["cpus"] = os.cpu_count()
    print_figures(figures, args.json, width=48)


if __name__ == "__main__":
    main(sys.argv[1:])
