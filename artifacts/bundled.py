"""Bundled packages, checked at intake: the 2020 starter kit's `requirements.txt`, `install_order.txt` and
`*.whl` files. pip would run a `setup.py` for an sdist, a folder or a URL, and unpacks a wheel without a
size limit, so only what installs without building anything, and within the archive's own limits, is let
through:

- every `.whl` entry is a wheel for the sandbox image: its file name parses (PEP 427), one of its tags is
  one the image's CPython 3.11 on linux x86_64 accepts (manylinux up to the image's glibc, or pure
  Python); its bytes are read (bounded: at most the upload's size cap) and checked as a nested zip exactly
  like the archive (end record, entry count, names, kinds, ratio, sizes, CRCs), its one `.dist-info`
  folder names the wheel's project and holds METADATA, WHEEL and RECORD; what the wheels unpack to counts
  with the archive's own files against `max_unpacked_mb`;
- a source distribution or nested archive at the top level (where pip's `--find-links` looks) is refused;
- each line of the top-level `requirements.txt` and `install_order.txt` passes
  `queue_schema.bundled_requirements.line_problem` (a requirement by name, or a bundled wheel's file name;
  the worker's install applies the same rule), refused with the line and the reason. A `setup.py` project
  in the archive is inert: nothing may name it (a path is refused).
"""

from __future__ import annotations

from packaging import tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from artifacts.zip_checks import MIB, Entry, InvalidSubmission, Listing, inspect, shown
from queue_schema.bundled_requirements import INSTALL_FILES, SDIST_SUFFIXES, line_problem, without_comment
from queue_schema.untrusted import safe_text
from runtime.spec import SubmissionRules

MAX_INSTALL_FILE_BYTES = 64 * 1024
MAX_INSTALL_LINES = 1000
# The sandbox image: CPython 3.11 on Debian bookworm (python:3.11-slim, or debootstrap bookworm offline),
# whose glibc is 2.36; manylinux_2_N wheels with N above it would not load there.
PYTHON = (3, 11)
IMAGE_GLIBC_MINOR = 36
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(IMAGE_GLIBC_MINOR, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
ACCEPTED_TAGS = frozenset(tags.cpython_tags(PYTHON, ["cp311", "abi3", "none"], PLATFORMS)) | frozenset(
    tags.compatible_tags(PYTHON, "cp311", PLATFORMS)
)
PLATFORM_TEXT = "CPython 3.11 on linux x86_64 (a manylinux or pure-Python wheel)"


def check(listing: Listing, rules: SubmissionRules) -> int:
    """Raise InvalidSubmission for anything above; returns the bytes the bundled wheels unpack to."""
    top = {e.name: e for e in listing.entries if len(e.parts) == 1}
    wheels = {e.name for e in top.values() if not e.is_dir and e.name.lower().endswith(".whl")}
    for entry in top.values():
        lower = entry.name.lower()
        if not entry.is_dir and lower.endswith(SDIST_SUFFIXES):
            raise InvalidSubmission(
                f"{shown(entry.name)} looks like a source distribution: pip would build it and run its "
                f"setup.py. Bundle wheels instead, built for {PLATFORM_TEXT}"
            )
    for name in INSTALL_FILES:
        entry = top.get(name)
        if entry is not None and not entry.is_dir:
            if entry.size > MAX_INSTALL_FILE_BYTES:  # before reading it
                raise InvalidSubmission(f"{name} is larger than {MAX_INSTALL_FILE_BYTES // 1024} KiB")
            check_install_file(name, listing.read(entry), wheels)
    budget = rules.max_unpacked_mb * MIB - listing.unpacked_bytes
    unpacked = 0
    for entry in listing.files():
        if entry.name.lower().endswith(".whl"):
            unpacked += check_wheel(listing, entry, rules, budget - unpacked)
    return unpacked


def check_wheel(listing: Listing, entry: Entry, rules: SubmissionRules, budget: int) -> int:
    """One bundled wheel: its name and tags, then its bytes as a nested zip. Returns its unpacked bytes."""
    label = f"bundled wheel {shown(entry.name)}"
    filename = entry.parts[-1]
    try:
        project, _, _, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise InvalidSubmission(f"{label} is not a wheel file name: {safe_text(exc, limit=200)}") from None
    if not wheel_tags & ACCEPTED_TAGS:
        built_for = ", ".join(sorted(str(t) for t in wheel_tags)[:3])
        raise InvalidSubmission(f"{label} is built for {built_for}; the sandbox runs {PLATFORM_TEXT}")
    cap = rules.max_zip_mb * MIB
    if entry.size > cap:
        raise InvalidSubmission(
            f"{label} is {entry.size / MIB:.1f} MiB; a wheel may be at most {cap // MIB} MiB"
        )
    data = listing.read(entry)
    wheel = inspect(
        data,
        max_files=rules.max_files,
        max_unpacked=rules.max_unpacked_mb * MIB,
        verify=True,
        what=label,
    )
    if wheel.unpacked_bytes > budget:
        raise InvalidSubmission(
            f"archive unpacks to more than {rules.max_unpacked_mb} MiB with its bundled wheels' contents"
        )
    dist_infos = {e.parts[0] for e in wheel.entries if e.parts[0].endswith(".dist-info")}
    if len(dist_infos) != 1:
        raise InvalidSubmission(f"{label} has {len(dist_infos)} .dist-info folders; a wheel has one")
    (dist_info,) = dist_infos
    if canonicalize_name(dist_info[: -len(".dist-info")].partition("-")[0]) != project:
        raise InvalidSubmission(f"{label} has a .dist-info folder for another project: {shown(dist_info)}")
    files = {e.name for e in wheel.files()}
    missing = [n for n in ("METADATA", "WHEEL", "RECORD") if f"{dist_info}/{n}" not in files]
    if missing:
        raise InvalidSubmission(f"{label} lacks {', '.join(missing)} in its .dist-info folder")
    return wheel.unpacked_bytes


def check_install_file(name: str, data: bytes, wheels: set[str]) -> None:
    """Every line of requirements.txt or install_order.txt: a requirement by name, or a bundled wheel."""
    if len(data) > MAX_INSTALL_FILE_BYTES:
        raise InvalidSubmission(f"{name} is larger than {MAX_INSTALL_FILE_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidSubmission(f"{name} is not UTF-8 text") from None
    lines = text.splitlines()
    if len(lines) > MAX_INSTALL_LINES:
        raise InvalidSubmission(f"{name} has more than {MAX_INSTALL_LINES} lines")
    for number, line in enumerate(lines, start=1):
        reason = line_problem(without_comment(line), wheels)
        if reason:
            raise InvalidSubmission(f"{name} line {number} ({shown(line.strip(), 80)}) {reason}")
