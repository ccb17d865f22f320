"""The lines of a submission's `requirements.txt` and `install_order.txt` (the 2020 starter kit's bundled
packages): which are accepted, one rule for the gateway's intake (artifacts/bundled.py) and the worker's
install (workers/sandbox/install.py), so an artifact accepted under an older intake is held to it again.

A line is accepted when it is, after pip's comment rule, empty, the file name of a wheel bundled at the
top level of the archive, or a PEP 508 requirement by name (`name`, `name[extra]`, `name==1.0`,
`name>=1,<2`) with no URL and no environment marker. Options (`-e`, `-r`, `--index-url`, `-f`, `--hash`
...), paths, URLs, VCS references, source archives, `${VARIABLES}` and line continuations are refused:
pip would fetch, build (a `setup.py` runs) or be reconfigured by them.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement

INSTALL_FILES = ("requirements.txt", "install_order.txt")
# What pip's --find-links reads as a source distribution (pip's own list of archive extensions).
SDIST_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz", ".tar.lzma",
                  ".tar", ".zip")  # fmt: skip
# A requirement line naming any compressed file is an archive for pip to unpack and build, never a name.
_ARCHIVE_LINE_SUFFIXES = (*SDIST_SUFFIXES, ".gz", ".bz2", ".xz", ".lz", ".lzma")
_COMMENT = re.compile(r"(^|\s+)#.*$")  # pip's own rule: '#' starts a comment at a line start or after space
_VCS = ("git+", "hg+", "svn+", "bzr+")
# What pip reads as a plain requirement, spelled out (a second opinion beside packaging's parser).
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_EXTRAS = rf"\[\s*(?:{_NAME}(?:\s*,\s*{_NAME})*)?\s*\]"
_SPEC = r"(?:===|==|!=|~=|>=|<=|>|<)\s*[A-Za-z0-9.*+!_-]+"
_SPECS = rf"{_SPEC}(?:\s*,\s*{_SPEC})*"
_PLAIN_REQUIREMENT = re.compile(rf"{_NAME}\s*(?:{_EXTRAS})?\s*(?:{_SPECS}|\(\s*{_SPECS}\s*\))?")


def meaningful_lines(text: str) -> list[tuple[int, str]]:
    """(line number from 1, the line without its comment) of every line that says something."""
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = without_comment(raw)
        if line:
            found.append((number, line))
    return found


def without_comment(line: str) -> str:
    return _COMMENT.sub("", line).strip()


def line_problem(line: str, wheels: set[str]) -> str | None:
    """Why one (comment-stripped) line is refused, or None when it is accepted; `wheels` are the file
    names of the wheels bundled at the top level."""
    if not line or line in wheels:
        return None
    if line.endswith("\\"):
        return "continues on the next line; write one requirement per line"
    if line.startswith("-"):
        return "is an option; only package names (name==version) and bundled wheel file names are accepted"
    if "$" in line:
        return "uses an environment variable; write the requirement out"
    lower = line.lower()
    if "://" in line or lower.startswith(_VCS) or "@" in line:
        return "is a URL or VCS reference; there is no network: bundle a wheel instead"
    if "/" in line or "\\" in line or line.startswith((".", "~")):
        return "is a path: projects and folders are not built (setup.py would run); bundle a wheel instead"
    if lower.endswith(".whl"):
        return "names a wheel that is not bundled at the top level of the archive"
    if lower.endswith(_ARCHIVE_LINE_SUFFIXES):
        return "names a source distribution: pip would run its setup.py; bundle a wheel instead"
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return "is not a requirement: write a package name, optionally with a version (name==1.0)"
    if requirement.url:
        return "is a URL or VCS reference; there is no network: bundle a wheel instead"
    if requirement.marker is not None:
        return (
            "has an environment marker; the sandbox is one platform (CPython 3.11 on linux x86_64): "
            "list what it needs"
        )
    if not _PLAIN_REQUIREMENT.fullmatch(line):
        return "is not a requirement pip would read as a plain one: write name or name==version"
    return None
