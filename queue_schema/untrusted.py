"""Showing text a team controls (optimizer output, exception text, failure messages, file names) and URLs
that may carry credentials.

`safe_text` is the one function every face uses before team-controlled text reaches a terminal, a page, a
log file or a Rich/Textual renderable: control characters (ESC and the rest of C0, DEL, C1, and the
Unicode format and line/paragraph separators that reorder or break what an organizer reads) are made
visible instead of being interpreted, so an OSC 52 clipboard write, a title change or a screen clear is
shown as text and never reaches the terminal. With `markup=True` (or "rich") the result is also safe to
embed in Rich console markup: `[/]` or `[link=...]` are shown as written instead of parsed. Textual 8 has
markup of its own, which reads every `[` as a tag (`[$accent]`, `[ @click=app.quit]`, `[Bold]`: Rich's
escape leaves these alone), so a string handed to a Textual widget that parses markup (`Static`, `notify`,
an `OptionList` prompt) takes `markup="textual"`. Rich's `Table` and Textual's `DataTable` parse a `str`
cell as Rich markup.

`SafeLines` wraps a service's stdout/stderr (a worker's, the gateway's) so that every line it writes to a
terminal or a log file went through `safe_text`, with URL credentials redacted.

`redact_url` hides the password (and a token-like user name) of a URL before it is shown or logged.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import unicodedata
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

# Replacement glyphs for the C0 controls (U+2400 block), so a stray ESC reads as "␛" in a log.
_C0_PICTURES = {code: chr(0x2400 + code) for code in range(0x20)}
_C0_PICTURES[0x7F] = "\u2421"  # ␡
# Kept as they are where the caller allows line structure.
_LAYOUT = {"\n", "\t"}
_TRUNCATED = "…"


def _visible(char: str) -> str:
    code = ord(char)
    if code in _C0_PICTURES:
        return _C0_PICTURES[code]
    # C1 controls (0x80-0x9F: 0x9B is a one-byte CSI on some terminals), and the format characters that
    # reorder text (bidi overrides, "Trojan Source") or hide it (zero-width joiners...).
    return f"\\u{code:04x}"


def _needs_escape(char: str) -> bool:
    code = ord(char)
    if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F:
        return True
    return unicodedata.category(char) in ("Cf", "Zl", "Zp", "Cs", "Co", "Cn") and code > 0x7F


def safe_text(
    text: object,
    *,
    limit: int | None = None,
    markup: bool | str = False,
    multiline: bool = False,
) -> str:
    """`text` made safe to show: every control made visible (`multiline` keeps newlines and tabs), at most
    `limit` characters (an ellipsis marks a cut), and escaped for the markup it will be embedded in:
    `markup=True` or "rich" for Rich's (consoles, tables), "textual" for Textual's widgets."""
    if not isinstance(text, str):
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + _TRUNCATED
    out = []
    for char in text:
        if multiline and char in _LAYOUT:
            out.append(char)
        elif _needs_escape(char):
            out.append(_visible(char))
        else:
            out.append(char)
    cleaned = "".join(out)
    if markup == "textual":
        cleaned = escape_textual_markup(cleaned)
    elif markup is True or markup == "rich":
        cleaned = escape_markup(cleaned)
    elif markup:
        raise ValueError(f"markup must be False, True, 'rich' or 'textual', not {markup!r}")
    return cleaned


# Rich's own rule (rich.markup.escape), without importing Rich into the contract layer: a backslash before
# anything Rich would read as a tag, and the trailing backslashes doubled so they cannot escape a closing
# tag (see escape_markup).
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escape_markup(text: str) -> str:
    def escape_backslashes(match: re.Match[str]) -> str:
        backslashes, tag = match.groups()
        return f"{backslashes}{backslashes}\\{tag}"

    escaped = _MARKUP_TAG.sub(escape_backslashes, text)
    # A closing tag the caller puts after the text must stay a tag: Rich halves a run of backslashes
    # before a tag (an odd run escapes it), so the trailing run is doubled. Rich's own escape does this
    # for one backslash only: two showed as one, three printed the caller's closing tag as text.
    trailing = len(escaped) - len(escaped.rstrip("\\"))
    return escaped + "\\" * trailing


def escape_textual_markup(text: str) -> str:
    """Textual's markup (textual.markup): any `[` not preceded by a backslash opens a tag, and `\\[` reads
    as `[`. So every `[` gets a backslash, and a trailing backslash a space after it, lest it escape the
    `[` of a closing tag the caller puts after the text."""
    escaped = text.replace("[", "\\[")
    return escaped + " " if escaped.endswith("\\") else escaped


def redact_url(url: str | None) -> str:
    """The URL with its password (and a user name, which may itself be a token) replaced by `***`:
    `redis://default:s3cret@host:6379/0` -> `redis://default:***@host:6379/0`; so is a `password=` (or
    `token=`) in its query, where redis-py also reads one (`unix:///run/redis.sock?password=...`)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and parts.username is None:
        return _hide_query_secrets(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    user = parts.username or ""
    # A lone user part (redis://TOKEN@host) is the secret itself.
    credentials = f"{user}:***" if parts.password is not None and user else "***"
    return _hide_query_secrets(
        urlunsplit((parts.scheme, f"{credentials}@{host}{port}", parts.path, parts.query, parts.fragment))
    )


_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|token)=)[^&#\s]*", re.IGNORECASE)


def _hide_query_secrets(text: str) -> str:
    return _QUERY_SECRET.sub(r"\1***", text)


_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/@]*)@", re.IGNORECASE)


def redact_urls_in(text: str) -> str:
    """Every `scheme://user:password@` (and `?password=`) inside free text (an exception message, a log
    line) redacted."""

    def hide(match: re.Match[str]) -> str:
        scheme, userinfo = match.groups()
        user, sep, _ = userinfo.partition(":")
        return f"{scheme}{user}:***@" if sep and user else f"{scheme}***@"

    return _hide_query_secrets(_URL_IN_TEXT.sub(hide, text))


def markup_text(text: object, limit: int | None = None) -> str:
    """Untrusted text for a Rich markup string or table cell: controls made visible, markup escaped, URL
    credentials redacted."""
    return safe_text(redact_urls_in(str(text)), limit=limit, markup=True)


def safe_line(line: str) -> str:
    """One line of a service's output as it may reach a terminal or a log file: credentials in URLs
    redacted, then made safe (tabs kept)."""
    return safe_text(redact_urls_in(line), multiline=True).replace("\n", _C0_PICTURES[0x0A])


class SafeLines(io.TextIOBase):
    """A text stream writing whole lines to `stream`, each through `safe_line`: a service's stdout or
    stderr, whatever prints to it (logging, RQ, uvicorn, a traceback, a stray `print`). A partial line
    waits for its end, a flush, or `max_line` characters."""

    def __init__(self, stream: TextIO, max_line: int = 65536) -> None:
        super().__init__()
        self._stream = stream
        self._max_line = max_line
        self._pending: list[str] = []
        self._pending_len = 0
        self._lock = threading.RLock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._stream, "errors", None)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # no colours: an escape sequence of our own would be shown as text

    def fileno(self) -> int:
        return self._stream.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            *done, rest = text.split("\n")
            if done:
                head = "".join(self._pending) + done[0]
                self._pending, self._pending_len = [], 0
                self._emit([head, *done[1:]])
            if rest:
                self._pending.append(rest)
                self._pending_len += len(rest)
                if self._pending_len >= self._max_line:
                    self._flush_pending()
        return len(text)

    def _emit(self, lines: list[str]) -> None:
        self._stream.write("".join(safe_line(line) + "\n" for line in lines))

    def _flush_pending(self) -> None:
        if self._pending:
            line = "".join(self._pending)
            self._pending, self._pending_len = [], 0
            self._stream.write(safe_line(line))

    def flush(self) -> None:
        with self._lock:
            self._flush_pending()
            self._stream.flush()


def safe_log_text(text: str) -> str:
    """A log record as formatted (a traceback spans lines): each line through `safe_line`."""
    return "\n".join(safe_line(line) for line in text.split("\n"))


class SafeStreamHandler(logging.StreamHandler):
    """`logging.StreamHandler` whose every record goes through `safe_log_text`: for a logging
    configuration that names handler classes (uvicorn's `log_config`, applied in each of its worker
    processes, where a wrapped `sys.stderr` would not follow)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_log_text(super().format(record))
