"""The workers layer's exceptions, in one place: what a study run, a sandbox and the optimizer's
channel raise (workers/failures.py decides whose fault each is)."""

from __future__ import annotations

from queue_schema.states import FailureCause
from queue_schema.untrusted import safe_text

# The team's own words (an exception's message) inside a failure message or the log: at most this long.
TEAM_TEXT_CHARS = 500


class StudyCutOff(BaseException):  # noqa: N818 - a control-flow signal, not an error
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FatalOptimizerError(BaseException):
    """The submission cannot be scored: stop the whole batch with this cause."""

    def __init__(self, cause: FailureCause, message: str) -> None:
        self.cause = cause
        self.message = message
        super().__init__(f"{cause.value}: {message}")


class SandboxInfrastructureError(BaseException):
    """Our infrastructure lost the sandbox (engine gone, container vanished): retried, not charged."""


class HarnessFault(SandboxInfrastructureError):
    """The harness itself failed (our bug, our problem definition): never the team's failure."""


class OptimizerRaised(Exception):
    """The optimizer's own suggest/observe raised: bayesmark falls back (random batch) or ignores it.

    bayesmark logs it (message and traceback): the message is the team's, so it is made safe first."""

    def __init__(self, message: str) -> None:
        super().__init__(safe_text(message, limit=TEAM_TEXT_CHARS))


class NoSlot(RuntimeError):
    """No sandbox uid could be handed out (none free, or the slot folder is unusable)."""


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here (no engine, no image, unknown name): an infrastructure problem."""


class InstallFailed(RuntimeError):
    """The submission's bundled requirements did not install; the message is safe to show the team."""


class SandboxRefused(RuntimeError):
    """The backend was asked for but is not allowed (the unsafe process backend without the opt-in)."""


class CallTimeout(Exception):
    """The optimizer did not answer within the call's deadline; it has been killed."""


class OptimizerDied(Exception):
    def __init__(self, returncode: int | None, during: str) -> None:
        self.returncode = returncode
        self.during = during
        super().__init__(f"optimizer process exited (code {returncode}) during {during}")


class ProtocolViolation(Exception):
    """The sandbox broke the protocol (malformed, oversized or unsolicited output); it has been killed."""
