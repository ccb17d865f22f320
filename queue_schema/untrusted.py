"""Showing text a team controls (optimizer output, exception text, failure messages, file names) and URLs
that may carry credentials.

`safe_text` is the one function every face uses before team-controlled text reaches a terminal, a page, a
log file or a Rich/Textual renderable: control characters (ESC and the rest of C0, DEL, C1, and the
Unicode format and line/paragraph separators that reorder or break what an organizer reads) are made
visible instead of being interpreted, so an OSC 52 clipboard write, a title change or a screen clear is
shown as text and never reaches the terminal. With `markup=True` the result is also safe to embed in Rich
console markup (Textual's too): `[/]` or `[link=...]` are shown as written instead of parsed.

`redact_url` hides the password (and a token-like user name) of a URL before it is shown or logged.
"""

from __future__ import annotations

import re
import unicodedata
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
    markup: bool = False,
    multiline: bool = False,
) -> str:
    """`text` made safe to show: every control made visible (`multiline` keeps newlines and tabs), at most
    `limit` characters (an ellipsis marks a cut), and with `markup=True` escaped for Rich markup."""
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
    if markup:
        cleaned = escape_markup(cleaned)
    return cleaned


# Rich's own rule (rich.markup.escape), without importing Rich into the contract layer: a backslash before
# anything Rich would read as a tag, and a trailing backslash doubled so it cannot escape a closing tag.
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escape_markup(text: str) -> str:
    def escape_backslashes(match: re.Match[str]) -> str:
        backslashes, tag = match.groups()
        return f"{backslashes}{backslashes}\\{tag}"

    escaped = _MARKUP_TAG.sub(escape_backslashes, text)
    if escaped.endswith("\\") and not escaped.endswith("\\\\"):
        escaped += "\\"
    return escaped


def redact_url(url: str | None) -> str:
    """The URL with its password (and a user name, which may itself be a token) replaced by `***`:
    `redis://default:s3cret@host:6379/0` -> `redis://default:***@host:6379/0`."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and parts.username is None:
        return url
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
    return urlunsplit((parts.scheme, f"{credentials}@{host}{port}", parts.path, parts.query, parts.fragment))


_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/@]*)@", re.IGNORECASE)


def redact_urls_in(text: str) -> str:
    """Every `scheme://user:password@` inside free text (an exception message, a log line) redacted."""

    def hide(match: re.Match[str]) -> str:
        scheme, userinfo = match.groups()
        user, sep, _ = userinfo.partition(":")
        return f"{scheme}{user}:***@" if sep and user else f"{scheme}***@"

    return _URL_IN_TEXT.sub(hide, text)
