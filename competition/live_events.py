"""What an event on the store's stream means to the faces that follow it live (the console, the web pages):
one rule, so that the organizers' board and the teams' board move on the same events."""

from __future__ import annotations

from queue_schema.payloads import Event

# Besides a score landing or leaving (a `state` event to or from scored, or a rescore), these change which
# submission is a team's best, whether the team is on the board at all, or whether teams see the final one.
BOARD_KINDS = frozenset({"disqualified", "requalified", "team_disabled", "team_enabled", "final_released"})


def moves_board(event: Event) -> bool:
    """Whether the leaderboard may read differently after `event`: a cheap test on the event alone, which
    may say yes for one that in the end changed nothing (a score that is not the team's best)."""
    if event.kind == "state":
        return "scored" in (event.data.get("from"), event.data.get("to")) or bool(event.data.get("rescore"))
    return event.kind in BOARD_KINDS
