"""The submission state machine and the typed failure causes."""

from __future__ import annotations

import errno
from enum import StrEnum


class SubmissionState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SCORED = "scored"
    STOPPED = "stopped"
    FAILED = "failed"


class StudyState(StrEnum):
    COMPLETE = "complete"
    # The optimizer exceeded a call timeout or the study's time budget: later rounds were not run and the
    # best-so-far stands.
    CUT_OFF = "cut_off"


class FailureCause(StrEnum):
    INVALID_SUBMISSION = "invalid_submission"
    INSTALL_FAILED = "install_failed"
    OPTIMIZER_CRASHED = "optimizer_crashed"
    TIME_LIMIT = "time_limit"
    RESOURCE_LIMIT = "resource_limit"
    INFRASTRUCTURE = "infrastructure"


# OSErrors of a worker's own machine (a full, read-only or failing disk, no descriptors or memory left, a
# permission of ours): never what a team's bytes decide, so `infrastructure` wherever they arise (the
# archive cannot set modes or owners: EACCES and EPERM while unpacking are ours too).
OUR_OS_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM,
     errno.EACCES, errno.EPERM}
)  # fmt: skip


class RefundState(StrEnum):
    """What became of the refund an upload was due when its first scoring failed as infrastructure."""

    AUTO = "auto"  # within the team's refunds of that day: not charged
    HELD = "held"  # past them: charged until an organizer decides
    GRANTED = "granted"  # an organizer refunded it
    DENIED = "denied"  # an organizer ruled it the team's: stays charged


ACTIVE_STATES = frozenset({SubmissionState.QUEUED, SubmissionState.RUNNING})
TERMINAL_STATES = frozenset({SubmissionState.SCORED, SubmissionState.STOPPED, SubmissionState.FAILED})

# A rescore starts a new score version, which re-enters the queue from any terminal state.
_ALLOWED: dict[SubmissionState, frozenset[SubmissionState]] = {
    SubmissionState.QUEUED: frozenset(
        {SubmissionState.RUNNING, SubmissionState.STOPPED, SubmissionState.FAILED, SubmissionState.SCORED}
    ),
    SubmissionState.RUNNING: frozenset(
        {SubmissionState.SCORED, SubmissionState.STOPPED, SubmissionState.FAILED}
    ),
    SubmissionState.SCORED: frozenset({SubmissionState.QUEUED}),
    SubmissionState.STOPPED: frozenset({SubmissionState.QUEUED}),
    SubmissionState.FAILED: frozenset({SubmissionState.QUEUED}),
}


class IllegalTransition(ValueError):
    pass


def can_transition(current: SubmissionState, new: SubmissionState) -> bool:
    return new in _ALLOWED[current]


def check_transition(current: SubmissionState, new: SubmissionState) -> None:
    if not can_transition(current, new):
        raise IllegalTransition(f"a submission cannot go from {current.value} to {new.value}")
