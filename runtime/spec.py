"""Competition specs: one version-controlled TOML file per competition, loaded, validated and hashed.

A spec is addressed by name (a file shipped in `runtime/specs/`) or by path. Its hash goes into every
score, so a score always says under which rules it was computed.

A spec given by path keeps its baselines beside it (`myspec.toml` -> `myspec.baselines.json`); the
store's copy of the spec remembers that path, so a worker scoring under it looks there too.
"""

from __future__ import annotations

import hashlib
import json
import random
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import redis

from baselines.store import BaselinePlan
from queue_schema import keys
from queue_schema.settings import state_dir
from runtime.errors import SpecError
from suites.base import BAYESMARK, SEPARATOR, SuiteDef, qualified
from suites.errors import UnknownProblem
from suites.registry import BUILTIN, Suites

SPECS_DIR = Path(__file__).parent / "specs"
PHASES = ("feedback", "final")
BASELINE_SUFFIX = ".baselines.json"
# The stored spec's JSON carries the file it was loaded from under this key, outside the hashed fields.
_SOURCE_FIELD = "_source"


@dataclass(frozen=True)
class Phase:
    name: str
    problems: tuple[str, ...]
    studies: int
    studies_per_job: int
    opens: str | None = None  # ISO 8601, UTC
    closes: str | None = None
    # After this moment the public leaderboard shows only what was scored before it (organizers see live).
    leaderboard_freeze: str | None = None
    # Whether teams may upload into this phase themselves. Unset: the feedback phase yes, the final no
    # (it is scored by the organizers from each team's selection, and a team uploading there would learn
    # how it does on the held-out problems).
    team_uploads: bool | None = None
    # (problem, studies per job) for problems whose jobs would otherwise run far longer than the rest
    # (`bbo admin estimate --max-job-minutes` proposes them); sorted, so the spec hash is stable.
    studies_per_job_by_problem: tuple[tuple[str, int], ...] = ()

    @property
    def accepts_uploads(self) -> bool:
        return self.team_uploads if self.team_uploads is not None else self.name != "final"

    def job_size(self, problem: str | None = None) -> int:
        """Studies per job of `problem` (the phase's default when it has no size of its own)."""
        return dict(self.studies_per_job_by_problem).get(problem or "", self.studies_per_job)

    def chunks(self, problem: str | None = None) -> list[tuple[int, list[int]]]:
        """(chunk index, study indices) per job of `problem`, so that no job runs for hours."""
        # As even as the size allows: 10 studies at most 4 a job go 4+3+3, not 4+4+2.
        jobs = -(-self.studies // self.job_size(problem))
        small, extra = divmod(self.studies, jobs)
        out, start = [], 0
        for chunk in range(jobs):
            size = small + (1 if chunk < extra else 0)
            out.append((chunk, list(range(start, start + size))))
            start += size
        return out

    def jobs(self, problems: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, int, list[int]]]:
        """(problem, chunk index, study indices) of every job of one score version, in `problems`'
        order (default: the phase's)."""
        return [
            (problem, chunk, studies)
            for problem in (self.problems if problems is None else problems)
            for chunk, studies in self.chunks(problem)
        ]


@dataclass(frozen=True)
class Limits:
    suggest_budget_s: float  # optimizer time (init + suggest + observe) per study
    call_timeout_s: float  # any single call, and loading the submission
    memory_mb: int = 2048
    pids: int = 128
    cpus: float = 1.0
    tmpfs_mb: int = 256
    file_size_mb: int = 256


@dataclass(frozen=True)
class SubmissionRules:
    max_zip_mb: int = 50
    max_unpacked_mb: int = 200
    max_files: int = 2000
    daily_quota: int = 5
    # optimizer.py is parsed at intake (in a child process with limits); a source past this is refused.
    max_source_kb: int = 1024
    # Infrastructure failures refunded automatically per team and UTC day; past this, a refund waits for
    # an organizer's decision (a hostile team must not turn crashes into free submissions).
    refunds_per_day: int = 3


@dataclass(frozen=True)
class LogSettings:
    """Organizer-only job logs: what a study and a submission may write, and how long it is kept."""

    study_kb: int = 256  # the sandbox's stderr per study; beyond it lines are counted, not kept
    submission_mb: int = 16  # all job logs of one score version together
    retention_days: float = 14.0


@dataclass(frozen=True)
class BaselineSettings:
    random_studies: int = 20  # random-search studies per problem
    strong_rounds: int = 0  # rounds of the strong optimizer's long run (0: rounds x 4)
    seed: int = 0


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    rounds: int
    batch: int
    phases: dict[str, Phase]
    limits: Limits
    submission: SubmissionRules
    baselines: BaselineSettings
    obfuscate_names: bool = False
    logs: LogSettings = field(default_factory=LogSettings)
    # The suites the spec defines itself ([suites.NAME]: an organizer's objectives, their sources and
    # locked requirements inside, so that any worker can run them); bayesmark and bbob need none.
    suites: dict[str, SuiteDef] = field(default_factory=dict)
    source: str = field(default="", compare=False)

    @cached_property
    def suite_set(self) -> Suites:
        """Every suite this spec's problems may belong to: the built-in ones and its own."""
        return Suites(self.suites)

    @property
    def evals_per_study(self) -> int:
        return self.rounds * self.batch

    def phase(self, name: str) -> Phase:
        try:
            return self.phases[name]
        except KeyError:
            raise SpecError(
                f"spec {self.name!r} has no phase {name!r} (it has: {', '.join(self.phases)})"
            ) from None

    @property
    def spec_file(self) -> Path | None:
        """The organizer's own spec file this was loaded from (None for a shipped spec, or a spec whose file
        is not on this machine): its baselines live beside it."""
        if self.source in ("", "<redis>"):
            return None
        path = Path(self.source)
        if not path.is_file() or path.resolve().parent == SPECS_DIR.resolve():
            return None
        return path.resolve()

    def built_baseline_paths(self) -> tuple[Path, ...]:
        """Where a build of this spec's baselines goes and is looked for, in lookup order: beside the spec
        file given by path, then the state folder. (The package's shipped file comes after these.)"""
        beside = () if self.spec_file is None else (self.spec_file.with_suffix(BASELINE_SUFFIX),)
        return (*beside, state_dir() / "baselines" / f"{self.name}.json")

    def baseline_plan(self) -> BaselinePlan:
        """The plain values scoring builds, checks and finds this spec's baselines by."""
        return BaselinePlan(
            name=self.name,
            hash=self.hash,
            rounds=self.rounds,
            batch=self.batch,
            problems=self.all_problems(),
            random_studies=self.baselines.random_studies,
            strong_rounds=self.baselines.strong_rounds,
            seed=self.baselines.seed,
            suites=tuple(self.suites.values()),
            built_paths=self.built_baseline_paths(),
        )

    def all_problems(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for phase in self.phases.values():
            seen.update(dict.fromkeys(phase.problems))
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        data["phases"] = {k: _phase_dict(v) for k, v in self.phases.items()}
        if self.suites:
            data["suites"] = {name: d.to_dict() for name, d in sorted(self.suites.items())}
        else:
            del data["suites"]  # specs of built-in suites only keep the hash they always had
        return data

    @cached_property  # a frozen spec: computed once (every enqueued job names it)
    def hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The resolved spec as the store keeps it, with the organizer's spec file if any (not hashed)."""
        data = self.to_dict()
        if self.spec_file is not None:
            data[_SOURCE_FIELD] = str(self.spec_file)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Spec:
        data = json.loads(raw)
        source = data.pop(_SOURCE_FIELD, None)
        return _build(data, source=source or "<redis>", resolved=True)


def _phase_dict(phase: Phase) -> dict[str, Any]:
    data = asdict(phase) | {"problems": list(phase.problems)}
    for optional in ("leaderboard_freeze", "team_uploads"):
        if data[optional] is None:
            del data[optional]  # specs that leave these unset keep the hash they always had
    if phase.studies_per_job_by_problem:
        data["studies_per_job_by_problem"] = dict(phase.studies_per_job_by_problem)
    else:
        del data["studies_per_job_by_problem"]
    return data


def stored_spec(r: redis.Redis, spec_hash: str) -> Spec | None:
    """The spec a submission or job was made under, as intake stored it by its hash; None if absent."""
    raw = r.get(keys.spec(spec_hash))
    return None if raw is None else Spec.from_json(raw)


def available() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.toml"))


def load(name_or_path: str | Path) -> Spec:
    """Load a spec by name (shipped) or path; raise SpecError with a one-line reason otherwise."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SPECS_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise SpecError(f"no spec named {str(name_or_path)!r} (shipped: {', '.join(available())})")
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path.name}: not valid TOML: {exc}") from None
    return _build(data, source=str(path))


def _build(data: dict[str, Any], source: str, resolved: bool = False) -> Spec:
    where = Path(source).name

    def fail(msg: str) -> SpecError:
        return SpecError(f"{where}: {msg}")

    name = _req(data, "name", str, fail)
    rounds = _positive_int(data, "rounds", fail)
    batch = _positive_int(data, "batch", fail)
    unknown = set(data) - {
        "name",
        "description",
        "rounds",
        "batch",
        "phases",
        "limits",
        "submission",
        "baselines",
        "obfuscate_names",
        "draw",
        "logs",
        "suite",
        "suites",
    }
    if unknown:
        raise fail(f"unknown field(s): {', '.join(sorted(unknown))}")

    defs = _suites(data.get("suites"), Path(source).parent, resolved, fail)
    suite_set = Suites(defs)
    default_suite = _suite_name(data.get("suite", BAYESMARK), "suite", suite_set, fail)
    drawn = _draw(data.get("draw"), suite_set.named(default_suite).catalogue(), fail) if not resolved else {}
    raw_phases = data.get("phases") or {}
    if not isinstance(raw_phases, dict) or not raw_phases:
        raise fail("needs a [phases.feedback] table (and usually [phases.final])")
    phases: dict[str, Phase] = {}
    for phase_name, raw in raw_phases.items():
        if phase_name not in PHASES:
            raise fail(f"unknown phase {phase_name!r} (phases are: {', '.join(PHASES)})")
        phases[phase_name] = _phase(phase_name, raw, drawn.get(phase_name), default_suite, suite_set, fail)
    if "feedback" not in phases:
        raise fail("needs a [phases.feedback] table")
    if "final" in phases:
        overlap = set(phases["feedback"].problems) & set(phases["final"].problems)
        if overlap:
            raise fail(f"held-out problems must not be visible: {', '.join(sorted(overlap))} in both phases")

    limits = _section(Limits, data.get("limits"), "limits", fail)
    if limits.call_timeout_s > limits.suggest_budget_s:
        raise fail("limits.call_timeout_s cannot exceed limits.suggest_budget_s")
    rules = _section(SubmissionRules, data.get("submission"), "submission", fail)
    baseline = _section(BaselineSettings, data.get("baselines"), "baselines", fail)
    logs = _section(LogSettings, data.get("logs"), "logs", fail)
    if baseline.random_studies < 2:
        raise fail("baselines.random_studies must be at least 2")
    return Spec(
        name=name,
        description=str(data.get("description", "")),
        rounds=rounds,
        batch=batch,
        phases=phases,
        limits=limits,
        submission=rules,
        baselines=baseline,
        obfuscate_names=bool(data.get("obfuscate_names", False)),
        logs=logs,
        suites=defs,
        source=source,
    )


# Sizes of what a spec's own suite brings along (the organizer's, stored with the spec and in every
# worker's memory): a file larger than this is not an objective.
_OBJECTIVE_BYTES = 512 * 1024
_REQUIREMENTS_BYTES = 64 * 1024


def _suite_name(value: Any, label: str, suite_set: Suites, fail) -> str:
    if not isinstance(value, str):
        raise fail(f"{label} must be a suite's name")
    try:
        suite_set.named(value)
    except UnknownProblem as exc:
        raise fail(f"{label}: {exc}") from None
    return value


def _read_text(base: Path, relative: Any, label: str, cap: int, fail) -> str:
    if not isinstance(relative, str) or not relative:
        raise fail(f"{label} must be a file's path, relative to the spec")
    path = base / relative
    try:
        if path.stat().st_size > cap:
            raise fail(f"{label}: {path} is larger than {cap // 1024} KB")
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{label}: cannot read {path}: {exc}") from None


def _suites(raw: Any, base: Path, resolved: bool, fail) -> dict[str, SuiteDef]:
    """[suites.NAME] tables: kind = "python", objectives = {PROBLEM = "file.py"}, optional requirements
    ("requirements.txt", exact pins). Loaded from a file, paths are read relative to the spec; the stored
    spec holds the texts themselves."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail("[suites] must hold one table per suite: [suites.NAME]")
    defs: dict[str, SuiteDef] = {}
    for name, table in sorted(raw.items()):
        label = f"suites.{name}"
        if name in BUILTIN or not _is_suite_name(name):
            raise fail(
                f"{label}: a suite's name is lower-case letters, digits, - and _, and not a built-in one"
            )
        if not isinstance(table, dict):
            raise fail(f"{label} must be a table")
        unknown = set(table) - {"kind", "objectives", "requirements"}
        if unknown:
            raise fail(f"{label}: unknown field(s): {', '.join(sorted(unknown))}")
        if table.get("kind") != "python":
            raise fail(f'{label}.kind must be "python" (an organizer\'s objective files)')
        objectives = table.get("objectives")
        if not isinstance(objectives, dict) or not objectives:
            raise fail(f'{label}.objectives must be a table of PROBLEM = "file.py"')
        texts: dict[str, str] = {}
        for problem, where in sorted(objectives.items()):
            if not _is_suite_name(problem):
                raise fail(
                    f"{label}.objectives: {problem!r} is not a problem name (letters, digits, - and _)"
                )
            if resolved:
                texts[problem] = str(where)
            else:
                texts[problem] = _read_text(
                    base, where, f"{label}.objectives.{problem}", _OBJECTIVE_BYTES, fail
                )
        requirements = table.get("requirements", "")
        if not resolved and requirements:
            requirements = _read_text(base, requirements, f"{label}.requirements", _REQUIREMENTS_BYTES, fail)
        defs[name] = SuiteDef(name=name, kind="python", objectives=texts, requirements=str(requirements))
    return defs


def _is_suite_name(name: str) -> bool:
    return (
        0 < len(name) <= 64
        and name[0].isalnum()
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
        and SEPARATOR not in name
    )


def _draw(raw: Any, catalogue: tuple[str, ...], fail) -> dict[str, tuple[str, ...]]:
    """Problems drawn by a fixed seed from the spec's suite's catalogue: the first `feedback` are visible."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail("[draw] must be a table with seed, total and feedback")
    seed = _req(raw, "seed", int, fail, "draw.")
    total = _positive_int(raw, "total", fail, "draw.")
    feedback = _positive_int(raw, "feedback", fail, "draw.")
    if total > len(catalogue):
        raise fail(f"draw.total is {total} but the suite has only {len(catalogue)} problems to draw from")
    if feedback >= total:
        raise fail("draw.feedback must leave problems held out (feedback < total)")
    picked = random.Random(seed).sample(list(catalogue), total)
    return {"feedback": tuple(sorted(picked[:feedback])), "final": tuple(sorted(picked[feedback:]))}


def _phase(
    name: str, raw: Any, drawn: tuple[str, ...] | None, default_suite: str, suite_set: Suites, fail
) -> Phase:
    if not isinstance(raw, dict):
        raise fail(f"phases.{name} must be a table")
    prefix = f"phases.{name}."
    problems = raw.get("problems", drawn)
    if problems is None:
        raise fail(f"{prefix}problems is missing (list them, or draw them with a [draw] table)")
    if not isinstance(problems, list | tuple) or not problems:
        raise fail(f"{prefix}problems must be a non-empty list")
    suite = _suite_name(raw.get("suite", default_suite), f"{prefix}suite", suite_set, fail)
    if not all(isinstance(p, str) for p in problems):
        raise fail(f"{prefix}problems must be names")
    # A name without a suite is the list's suite's (SUITE/NAME always says its own).
    problems = [p if SEPARATOR in p else qualified(suite, p) for p in problems]
    for problem in problems:
        try:
            suite_set.check(problem)
        except UnknownProblem as exc:
            raise fail(f"{prefix}problems: {exc}") from None
    if len(set(problems)) != len(problems):
        raise fail(f"{prefix}problems lists a problem twice")
    studies = _positive_int(raw, "studies", fail, prefix)
    per_job = int(raw.get("studies_per_job", studies))
    if per_job < 1:
        raise fail(f"{prefix}studies_per_job must be at least 1")
    opens, closes = (_when(raw.get(k), f"{prefix}{k}", fail) for k in ("opens", "closes"))
    if opens and closes and closes <= opens:
        raise fail(f"{prefix}closes must come after opens")
    freeze = _when(raw.get("leaderboard_freeze"), f"{prefix}leaderboard_freeze", fail)
    if freeze and opens and _instant(freeze) <= _instant(opens):
        raise fail(f"{prefix}leaderboard_freeze must come after opens")
    uploads = raw.get("team_uploads")
    if uploads is not None and not isinstance(uploads, bool):
        raise fail(f"{prefix}team_uploads must be true or false")
    raw_sizes = raw.get("studies_per_job_by_problem")
    if isinstance(raw_sizes, dict):
        raw_sizes = {k if SEPARATOR in k else qualified(suite, k): v for k, v in raw_sizes.items()}
    sizes = _job_sizes(raw_sizes, problems, studies, prefix, fail)
    return Phase(
        name,
        tuple(problems),
        studies,
        min(per_job, studies),
        opens,
        closes,
        leaderboard_freeze=freeze,
        team_uploads=uploads,
        studies_per_job_by_problem=sizes,
    )


def _job_sizes(raw: Any, problems: Any, studies: int, prefix: str, fail) -> tuple[tuple[str, int], ...]:
    if raw is None:
        return ()
    label = f"{prefix}studies_per_job_by_problem"
    if not isinstance(raw, dict):
        raise fail(f"{label} must be a table of problem = studies per job")
    sizes = []
    for problem, size in sorted(raw.items()):
        if problem not in problems:
            raise fail(f"{label}: {problem!r} is not a problem of this phase")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise fail(f"{label}.{problem} must be a whole number of studies, at least 1")
        sizes.append((problem, min(size, studies)))
    return tuple(sizes)


def _instant(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _when(value: Any, label: str, fail) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    try:
        return datetime.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise fail(f"{label} is not an ISO 8601 date-time: {value!r}") from None


def _section(cls, raw: Any, label: str, fail):
    raw = raw or {}
    if not isinstance(raw, dict):
        raise fail(f"[{label}] must be a table")
    fields = cls.__dataclass_fields__
    unknown = set(raw) - set(fields)
    if unknown:
        raise fail(f"unknown field(s) in [{label}]: {', '.join(sorted(unknown))}")
    try:
        section = cls(**raw)
    except TypeError as exc:
        raise fail(f"[{label}]: {exc}") from None
    for key, value in asdict(section).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"{label}.{key} must be a number, got {value!r}")
        if value < 0 or (value == 0 and key not in {"strong_rounds", "seed", "refunds_per_day"}):
            raise fail(f"{label}.{key} must be positive, got {value!r}")
    return section


def _req(data: dict[str, Any], key: str, kind: type, fail, prefix: str = ""):
    if key not in data:
        raise fail(f"{prefix}{key} is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise fail(f"{prefix}{key} must be a {kind.__name__}, got {value!r}")
    return value


def _positive_int(data: dict[str, Any], key: str, fail, prefix: str = "") -> int:
    value = _req(data, key, int, fail, prefix)
    if value < 1:
        raise fail(f"{prefix}{key} must be at least 1, got {value}")
    return value
