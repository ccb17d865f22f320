"""A hostile team's terminal escapes never reach an organizer's terminal (issue 14, finding 5).

`bench.terminal_scan` runs `bbo admin up` and `bbo admin console` in pseudo-terminals against a store with
a hostile submission and counts the escape sequences of the team's text among the bytes they wrote: the
benchmark's `osc_reaching_terminal`, whose target is 0. On the landed code it counted 179 in the console
(the logs view wrote optimizer stderr byte for byte; the fleet view then crashed on `[/]`) and 48 in
`up` (bayesmark logs the optimizer's exception messages, which `up` passed through).
"""

from __future__ import annotations

import sys

import pytest

from bench.terminal_scan import CLIPBOARD, PtyProgram, count_hostile, hostile, measure
from queue_schema.untrusted import safe_text

# A child of `up`'s that prints hostile text on stdout and stderr, started by `up`'s own Child.
PRINTS = f"import sys; print({hostile('OUT')!r}); print({hostile('ERR')!r}, file=sys.stderr)"
RELAYED = f"""
import os, sys, time
from runtime.supervisor import Child
child = Child("x", [sys.executable, "-c", {PRINTS!r}], dict(os.environ))
child.start()
child.wait(time.monotonic() + 30)
"""


def test_the_scan_counts_the_hostile_sequences_and_not_the_shown_text():
    raw = hostile("raw").encode()
    # OSC 52, OSC 0, OSC 8 (its closing one carries no marker), CSI 2J; C1 CSI 2J and C1 OSC 0 (as
    # characters, UTF-8 encoded)
    assert count_hostile(raw) == 6
    assert count_hostile(hostile("raw").encode("latin-1", errors="replace")) >= 5  # C1 as raw bytes
    shown = safe_text(hostile("shown")).encode()
    assert CLIPBOARD.encode() in shown and count_hostile(shown) == 0


def test_up_relays_its_childrens_output_made_safe(tmp_path):
    direct = PtyProgram([sys.executable, "-c", f"print({hostile('DIRECT')!r})"], {"PATH": "/usr/bin:/bin"})
    direct.proc.wait(30)
    direct.stop()
    assert count_hostile(direct.output) > 0  # the scan sees them when they are sent

    relayed = PtyProgram([sys.executable, "-c", RELAYED], {"PYTHONPATH": ".", "PATH": "/usr/bin:/bin"})
    relayed.wait_text("ERR", 60, "the child's lines")
    relayed.proc.wait(30)
    relayed.stop()
    text = relayed.output.decode()
    assert "OUT ␛]52;c;" in text and "ERR ␛]52;c;" in text
    assert count_hostile(relayed.output) == 0


@pytest.mark.system
def test_no_hostile_escape_reaches_the_terminal_of_up_or_the_console(r, redis_server, state_dir):
    outputs: dict[str, bytes] = {}
    figures = measure(redis_server, backend="process", timeout=300, outputs=outputs)
    assert figures["console_error"] is None, figures
    assert figures["console"] == 0 and figures["up"] == 0, figures
    # The hostile text was on screen, shown as text: the logs view in follow mode, and the fleet view.
    console = outputs["console"].decode("utf-8", errors="replace")
    assert "HOSTILE-FOLLOW-19 ␛]52;c;" in console and "HOSTILE-WORKER" in console
    assert figures["up_exit"] == 0
