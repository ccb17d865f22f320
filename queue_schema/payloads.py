"""Typed, versioned payloads exchanged through Redis.

Every payload carries `schema_version`; a reader refuses a version newer than it knows rather than
misreading it, so a mixed fleet during an upgrade fails loudly instead of scoring wrongly.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from queue_schema import SCHEMA_VERSION
from queue_schema.states import FailureCause, RefundState, StudyState, SubmissionState
from queue_schema.untrusted import safe_text


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)

    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(
                f"payload schema {value} is newer than this process understands ({SCHEMA_VERSION})"
            )
        return value

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Any:
        return cls.model_validate_json(raw)


# A failure message often carries team text (an exception's message): it is stored bounded and with its
# controls made visible, once, so the record, the event streams and every face get the same safe text.
MAX_FAILURE_MESSAGE = 1000


class Failure(BaseModel):
    cause: FailureCause
    message: str

    @field_validator("message", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> str:
        return safe_text(value, limit=MAX_FAILURE_MESSAGE)


class Progress(BaseModel):
    studies_done: int = 0
    studies_total: int = 0
    evals_done: int = 0
    evals_total: int = 0


class ScoredVersion(BaseModel):
    """An earlier score version that was scored, kept on the record while a rescore replaces it."""

    version: int
    score: float
    scored_at: float
    spec_hash: str
    baseline_version: str = ""


class Submission(Payload):
    id: str
    team: str
    state: SubmissionState = SubmissionState.QUEUED
    artifact_sha256: str
    filename: str = "submission.zip"
    spec_name: str
    spec_hash: str
    phase: str
    score_version: int = 1
    baseline_version: str = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    score: float | None = None
    partial_score: float | None = None
    failure: Failure | None = None
    progress: Progress = Field(default_factory=Progress)
    charged: bool = True
    # The sandbox its jobs ask for, so jobs lost before they were enqueued can be enqueued again alike.
    backend: str = "auto"
    # When the current score version was scored: the leaderboard freeze compares against this.
    scored_at: float | None = None
    # An organizer's reason for taking the submission off the leaderboard (None: in good standing).
    disqualified: str | None = None
    # The last scored version while a rescore runs (or after it ended unscored): the leaderboard shows it.
    previous: ScoredVersion | None = None
    # A final-phase submission launched by `bbo admin final`: the feedback submission it came from.
    source: str | None = None
    # Set when the upload's first scoring failed as infrastructure (see RefundState); None otherwise.
    refund: RefundState | None = None

    def last_scored(self) -> Submission | None:
        """This record as of its last scored version: itself once scored; during a rescore (or after one
        ended unscored) a scored copy carrying the previous version; None if no version was ever scored."""
        if self.state == SubmissionState.SCORED and self.score is not None:
            return self
        if self.previous is None:
            return None
        return self.model_copy(
            update={
                "state": SubmissionState.SCORED,
                "score": self.previous.score,
                "score_version": self.previous.version,
                "scored_at": self.previous.scored_at,
                "spec_hash": self.previous.spec_hash,
                "baseline_version": self.previous.baseline_version,
                "failure": None,
                "partial_score": None,
            }
        )

    def public_view(self) -> dict[str, Any]:
        """The command contract's submission object (what `--json` prints and the gateway returns)."""
        out: dict[str, Any] = {
            "id": self.id,
            "team": self.team,
            "state": self.state.value,
            "score": self.score,
            "failure": self.failure.model_dump(mode="json") if self.failure else None,
            "progress": {
                "studies_done": self.progress.studies_done,
                "studies_total": self.progress.studies_total,
            },
            "created_at": utc_iso(self.created_at),
        }
        if self.state == SubmissionState.STOPPED and self.partial_score is not None:
            out["partial_score"] = self.partial_score
        if self.disqualified is not None:
            out["disqualified"] = self.disqualified
        if self.refund is not None:
            out["refund"] = self.refund.value
        return out


class ScoreJob(Payload):
    """One RQ job: a chunk of studies of one problem for one score version of a submission."""

    submission_id: str
    score_version: int
    problem: str
    studies: list[int]
    chunk: int = 0
    phase: str
    spec_hash: str
    artifact_sha256: str
    backend: str = "auto"


class BaselineUnitJob(Payload):
    """One RQ job of a fleet baseline build: one study of a trusted reference optimizer (random search,
    or the strong run) on a problem, its losses stored under `unit` in the build's hash."""

    build_id: str
    unit: str  # the build's hash field: "KIND:PROBLEM:STUDY"
    kind: str  # "random" or "strong"
    problem: str
    study: int
    rounds: int
    batch: int
    salt: str
    # A spec's own suite of the problem (its name and definition), for units of an organizer's objectives.
    suite: dict[str, Any] | None = None


class StudyResult(Payload):
    """One study's outcome, written once under its index."""

    study: int
    state: StudyState
    # Visible (cross-validation) loss of every evaluated suggestion, round by round; None means +inf.
    losses: list[list[float | None]]
    generalization: list[list[float | None]] = Field(default_factory=list)
    # The evaluated points, round by round (real parameter names), for export and `reproduce`.
    suggestions: list[list[dict[str, Any]]] = Field(default_factory=list)
    suggest_time_s: float = 0.0
    eval_time_s: float = 0.0
    cut_off_reason: str | None = None
    suggest_fallbacks: int = 0
    observe_errors: int = 0
    worker: str = ""
    backend: str = ""
    image_digest: str | None = None
    # Provenance, so that `reproduce` can tell what changed: the sandbox's own description, the scoring
    # stack's package versions in the worker, and the seeds the study used.
    sandbox: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str] = Field(default_factory=dict)
    seeds: dict[str, Any] = Field(default_factory=dict)
    finished_at: float = Field(default_factory=time.time)
    # The study's normalized score at its last iteration, stored when the study is written (the value the
    # running score counted); None in records written before it was stored, or without baselines then.
    normalized: float | None = None

    @staticmethod
    def encode_loss(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    @staticmethod
    def decode_loss(value: float | None) -> float:
        return math.inf if value is None else float(value)


class Event(Payload):
    kind: str
    submission_id: str | None = None
    ts: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict)


class Heartbeat(Payload):
    worker: str
    host: str
    pid: int
    state: str  # idle | busy | draining
    current_job: str | None = None
    backend: str = ""
    started_at: float
    ts: float = Field(default_factory=time.time)


class JobHeartbeat(Payload):
    """A running job's own heartbeat, written by the process that runs it (the work horse)."""

    job_id: str
    worker: str  # the RQ worker's name (its Heartbeat's `worker`)
    host: str
    pid: int
    study: int | None = None  # the study being run, None before the first
    started_at: float
    ts: float = Field(default_factory=time.time)


DAY_S = 86_400


def leaderboard_score(normalized_mean: float) -> float:
    """The one score scale: 100 x (1 - mean normalized score); 100 is the best-known loss everywhere, 0
    the random-search median. `Submission.score` and `partial_score` are on it."""
    return 100.0 * (1.0 - normalized_mean)


def utc_day(ts: float) -> tuple[float, float]:
    """Start and end (exclusive) of the UTC day holding `ts`: quotas and refunds count by it."""
    start = float(int(ts) // DAY_S * DAY_S)
    return start, start + DAY_S


def utc_iso(ts: float) -> str:
    """The one timestamp format every face shows: ISO 8601, UTC, whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
