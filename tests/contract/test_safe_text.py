"""The one function that shows a team's text (queue_schema.untrusted.safe_text), for every markup a face
embeds it in, and the stream and log handler that put a service's output lines through it."""

from __future__ import annotations

import io
import logging

from hypothesis import given
from hypothesis import strategies as st
from rich.text import Text
from textual.markup import to_content

from queue_schema.untrusted import (
    SafeLines,
    SafeStreamHandler,
    redact_url,
    redact_urls_in,
    safe_line,
    safe_text,
)

OSC52 = "\x1b]52;c;aGFja2VkIGNsaXBib2FyZA==\x07"
HOSTILE = (
    f"boom {OSC52} \x1b]0;pwned title\x07 \x1b[2J\x1b[H \x9b2J \x9d0;t\x9c "
    "[/] [link=file:///etc/passwd]x[/link] [ @click=app.quit]click[/] [$accent]hidden [Bold]b \\"
)
# Controls a terminal acts on: ESC, BEL, C1 (0x9b is a one-byte CSI, 0x9d a one-byte OSC), CR, BS...
ACTIVE = {chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}

# Text built of pieces a markup parser cares about, plus any character.
texts = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(
            [
                "[",
                "]",
                "[/]",
                "[/",
                "/",
                "\\",
                "@",
                "$",
                "=",
                "[link=",
                "[@click=",
                "[ ",
                "\x1b",
                "\x9b",
                "\n",
            ]
        ),
    ),
    max_size=40,
).map("".join)


def test_hostile_text_keeps_no_control_a_terminal_acts_on():
    shown = safe_text(HOSTILE)
    assert not ACTIVE & set(shown)
    assert "␛]52;c;aGFja2VkIGNsaXBib2FyZA==␇" in shown  # visible, not sent
    assert "\\u009b2J" in shown and "\\u009d0;t" in shown


def test_rich_markup_shows_the_text_as_written():
    escaped = safe_text(HOSTILE, markup=True)
    text = Text.from_markup(f"[red]{escaped}[/]")  # raised MarkupError before escaping ("[/]")
    assert text.plain == safe_text(HOSTILE)
    assert [span.style for span in text.spans] == ["red"]  # no link, no style of the team's


def test_textual_markup_shows_the_text_as_written_and_runs_no_action():
    # Rich's escape leaves these to Textual's parser: an action on click, a hidden variable style.
    rich_escaped = to_content(safe_text("[ @click=app.quit]click[/]", markup=True))
    assert rich_escaped.spans, "Rich's escape is not enough for Textual (the reason for the textual mode)"
    content = to_content(f"[red]{safe_text(HOSTILE, markup='textual')}[/]")
    # HOSTILE ends with a backslash: a space after it keeps it from escaping the closing tag's `[`.
    assert content.plain == safe_text(HOSTILE) + " "
    assert [str(span.style) for span in content.spans] == ["red"]


@given(texts)
def test_any_text_in_either_markup_reads_back_exactly_with_no_control(text):
    plain = safe_text(text)
    assert not ACTIVE & set(plain)
    rich = Text.from_markup(f"[red]{safe_text(text, markup=True)}[/red]")  # never a MarkupError
    assert [span.style for span in rich.spans] in ([], ["red"]) and not ACTIVE & set(rich.plain)
    # (Rich itself reads a `\\[` that opens no tag as `[`, escaped or not: rich.markup.escape's rule.)
    assert rich.plain == plain or "\\[" in plain
    content = to_content(f"[b]{safe_text(text, markup='textual')}[/b]")
    assert content.plain.rstrip(" ") == plain.rstrip(" ")  # a trailing backslash gets a space after it
    assert all(str(span.style) == "b" for span in content.spans)


def test_multiline_keeps_lines_and_limit_cuts():
    assert safe_text("a\n\x1b[2Jb\tc", multiline=True) == "a\n␛[2Jb\tc"
    assert safe_text("a\nb") == "a␊b"
    assert safe_text("x" * 50, limit=10) == "x" * 9 + "…"


def test_urls_lose_their_credentials_in_place_and_in_free_text():
    assert redact_url("redis://default:s3cret@db:6379/0") == "redis://default:***@db:6379/0"
    assert redact_url("redis://:s3cret@db:6379") == "redis://***@db:6379"
    assert (
        redact_url("unix:///run/redis.sock?db=0&password=s3cret")
        == "unix:///run/redis.sock?db=0&password=***"
    )
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    line = "Redis at rediss://u:s3cret@db:6380/1 is not reachable; also redis://x?password=s3cret&db=2"
    assert "s3cret" not in redact_urls_in(line)
    assert "rediss://u:***@db:6380/1" in redact_urls_in(line)


def test_safe_lines_puts_every_line_written_through_safe_line():
    out = io.StringIO()
    stream = SafeLines(out)
    print(f"job failed: {OSC52} at redis://:pw@db:1", file=stream)
    stream.write("partial \x9b2J")
    assert out.getvalue().count("\n") == 1  # a partial line waits
    stream.write(" end\nnext\x07\n")
    stream.flush()
    lines = out.getvalue().splitlines()
    assert lines == [
        safe_line(f"job failed: {OSC52} at redis://:pw@db:1"),
        safe_line("partial \x9b2J end"),
        "next␇",
    ]
    assert "pw" not in out.getvalue() and not ACTIVE - {"\n"} & set(out.getvalue())
    assert not stream.isatty()


def test_safe_stream_handler_formats_each_line_of_a_traceback_safely():
    out = io.StringIO()
    handler = SafeStreamHandler(out)
    log = logging.getLogger("bbo.test-safe-handler")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError(f"team text {OSC52}")
        except ValueError:
            log.exception("request to /v1/\x1b]0;x\x07 failed with redis://:pw@db")
    finally:
        log.removeHandler(handler)
    written = out.getvalue()
    assert "Traceback" in written and written.count("\n") > 2  # still one line per line
    assert not ACTIVE - {"\n"} & set(written)
    assert ":pw@" not in written
