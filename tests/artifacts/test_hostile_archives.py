"""Hostile archives through the real intake (`archive.check`) and the worker's extraction
(`archive.extract`, called as workers/job.py calls it): every failure the archive's bytes cause is the
team's `InvalidSubmission` with a safe message, refused before a byte is written; only our own disk's
failures escape as OSError. Then property-based tests of the checker over random names, sizes, layouts,
truncations and End Of Central Directory fields."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from artifacts import archive, zip_checks
from runtime.spec import SubmissionRules
from tests.conftest import SUBMISSIONS
from tests.zip_helpers import Raw, raw_zip

RULES = SubmissionRules(max_zip_mb=2, max_unpacked_mb=8, max_files=20, max_source_kb=64)
MIB = 1024 * 1024
OPT = Raw("optimizer.py", b"x = 1\n")


def extract_as_the_worker(data: bytes, work: Path, rules: SubmissionRules = RULES) -> Path:
    return archive.extract(data, work / "submission", rules)


def refused(data: bytes, tmp_path: Path, reason: str) -> str:
    """Refused at intake and by the worker's extraction with `reason`, and nothing was written."""
    with pytest.raises(archive.InvalidSubmission) as intake:
        archive.check(data, RULES)
    assert reason in str(intake.value), str(intake.value)
    work = tmp_path / "work"
    with pytest.raises(archive.InvalidSubmission) as worker:
        extract_as_the_worker(data, work)
    assert str(worker.value) == str(intake.value)
    assert not work.exists()  # refused before anything was written
    message = str(intake.value)
    assert message.isprintable(), repr(message)  # safe to show: no control character survives
    return message


# -- finding 1: names that crashed extraction, and the rest of the name rules ----------------------

NAME_CASES = {
    "a name of 300 characters": (
        [OPT, Raw("a" * 300, b"x")],
        "path component of 300 bytes; the limit is 255",
    ),
    "a file, then a folder of that name": (
        [OPT, Raw("pkg", b"x"), Raw("pkg/m.py", b"x")],
        "'pkg' is a file, and 'pkg/m.py' uses it as a folder",
    ),
    "a folder's file, then a file of its name": (
        [OPT, Raw("pkg/m.py", b"x"), Raw("pkg", b"x")],
        "'pkg' is a file, and 'pkg/m.py' uses it as a folder",
    ),
    "a folder entry and a file of its name": ([OPT, Raw("pkg/"), Raw("pkg", b"x")], "collide"),
    "an entry named '.'": ([OPT, Raw(".", b"x")], "empty or '.' path component"),
    "an entry named './'": ([OPT, Raw("./")], "empty or '.' path component"),
    "an empty component": ([OPT, Raw("a//b.py", b"x")], "empty or '.' path component"),
    "a '.' component": ([OPT, Raw("a/./b.py", b"x")], "empty or '.' path component"),
    "a leading './'": ([OPT, Raw("./b.py", b"x")], "empty or '.' path component"),
    "an empty name": ([OPT, Raw("", b"x")], "an entry with an empty name"),
    "a duplicate name": ([OPT, Raw("a.py", b"1"), Raw("a.py", b"2")], "'a.py' appears twice"),
    "a duplicate optimizer.py": ([OPT, Raw("optimizer.py", b"import os\n")], "appears twice"),
    "names differing in case": ([OPT, Raw("Model.py", b"1"), Raw("model.py", b"2")], "collide"),
    "names differing in Unicode normalisation": (
        [OPT, Raw("caf\u00e9.py", b"1"), Raw("cafe\u0301.py", b"2")],
        "collide",
    ),
    "a NUL in a name": ([OPT, Raw(b"a\x00b.py", b"x")], "control or invisible characters"),
    "an OSC 52 escape in a name": ([OPT, Raw("a\x1b]52;c;aGk=\x07.py", b"x")], "control or invisible"),
    "a bidi override in a name": ([OPT, Raw("\u202eyp.txt", b"x")], "control or invisible characters"),
    "non-UTF-8 bytes": ([OPT, Raw(b"caf\xe9.py", b"x", flags=0)], "not valid UTF-8"),
    "non-UTF-8 bytes under the UTF-8 flag": (
        [OPT, Raw(b"caf\xe9.py", b"x", flags=0x800)],
        "not a readable zip",
    ),
    "a backslash": ([OPT, Raw("pkg\\m.py", b"x")], "backslash"),
    "an absolute path": ([OPT, Raw("/etc/cron.d/evil", b"x")], "absolute path"),
    "a drive path": ([OPT, Raw("C:/evil.py", b"x")], "absolute path"),
    "a drive-relative path": ([OPT, Raw("C:evil.py", b"x")], "absolute path"),
    "a parent component": ([OPT, Raw("../../evil.py", b"x")], "points outside the archive"),
    "a parent component inside": ([OPT, Raw("a/../../evil.py", b"x")], "points outside the archive"),
    "33 folders deep": ([OPT, Raw("d/" * 33 + "x.py", b"x")], "nested 34 folders deep; the limit is 32"),
    "a path of 1,205 bytes": ([OPT, Raw("/".join(["d" * 200] * 6) + ".py", b"x")], "the limit is 1024"),
    "a component of 131 characters but 259 bytes": (
        [OPT, Raw("\u00e9" * 128 + ".py", b"x")],
        "path component of 259 bytes",
    ),
    "a symlink": ([OPT, Raw("link", b"/etc/passwd", external_attr=(stat.S_IFLNK | 0o777) << 16)], "link"),
    "a device": ([OPT, Raw("dev", external_attr=(stat.S_IFCHR | 0o666) << 16)], "link or device"),
    "the encryption flag": ([OPT, Raw("a.py", b"x", flags=0x1)], "encrypted"),
    "bzip2 compression": ([OPT, Raw("a.py", b"x", method=12, payload=b"BZh9")], "compression method 12"),
    "deflate64 compression": ([OPT, Raw("a.py", b"x", method=9, payload=b"x")], "compression method 9"),
    "a folder with content": ([OPT, Raw("d/", b"content")], "a folder with content"),
    "another name in the local header": ([OPT, Raw("a.py", b"x", local_name=b"b.py")], "local header"),
}


@pytest.mark.parametrize("case", list(NAME_CASES), ids=list(NAME_CASES))
def test_hostile_entries_are_the_teams_invalid_submission_at_intake_and_extraction(case, tmp_path):
    entries, reason = NAME_CASES[case]
    refused(raw_zip(entries), tmp_path, reason)


def test_what_extraction_raised_on_the_landed_code_is_now_refused_before_writing(tmp_path):
    """The exact inputs of issue 14 finding 1, zipped with Python's own zipfile as a team would."""
    cases = {
        "a" * 300: [("optimizer.py", b"x = 1\n"), ("a" * 300, b"x")],  # OSError ENAMETOOLONG
        "pkg, pkg/m.py": [("optimizer.py", b"x = 1\n"), ("pkg", b"x"), ("pkg/m.py", b"x")],  # FileExistsError
        "pkg/m.py, pkg": [
            ("optimizer.py", b"x = 1\n"),
            ("pkg/m.py", b"x"),
            ("pkg", b"x"),
        ],  # IsADirectoryError
        ".": [("optimizer.py", b"x = 1\n"), (".", b"x")],  # IsADirectoryError
    }
    for name, entries in cases.items():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
            for entry, data in entries:
                out.writestr(entry, data)
        work = tmp_path / f"case{len(name)}"
        with pytest.raises(archive.InvalidSubmission):
            extract_as_the_worker(buffer.getvalue(), work)
        assert not work.exists()


@pytest.mark.usefixtures("unsafe_ok")
def test_an_archive_that_crashed_extraction_fails_its_submission_as_invalid_and_charged(r):
    """Through the worker's job (workers.job.score_problem): an artifact stored without today's checks
    (as those stored before them were) fails the submission with `invalid_submission`, charged, and
    the message is extract's own reason (not a second-line catch-all). It was an OSError on the landed
    code: `infrastructure`, refunded."""
    from rq import Queue

    from competition import quotas
    from competition.submit import create_submission
    from queue_schema import keys
    from queue_schema.connection import rq_connection
    from queue_schema.ids import artifact_digest
    from queue_schema.records import load_submission
    from runtime.spec import load
    from workers.job import score_problem

    spec = load("demo")
    good = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    source = (SUBMISSIONS / "random_search" / "optimizer.py").read_bytes()
    cases = {
        "a 300-character name": ([("a" * 300, b"x")], "the limit is 255"),
        "pkg, then pkg/m.py": ([("pkg", b"x"), ("pkg/m.py", b"x")], "uses it as a folder"),
        "pkg/m.py, then pkg": ([("pkg/m.py", b"x"), ("pkg", b"x")], "uses it as a folder"),
        "an entry named '.'": ([(".", b"x")], "empty or '.' path component"),
    }
    for name, (entries, reason) in cases.items():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
            out.writestr("optimizer.py", source)
            for entry, data in entries:
                out.writestr(entry, data)
        hostile = buffer.getvalue()
        archive.store(r, archive.Artifact(artifact_digest(hostile), hostile, 1 + len(entries), 0))
        sub = create_submission(r, team="t", data=good, spec=spec, phase="feedback", backend="process")
        first = sorted(r.smembers(keys.submission_jobs(sub.id, 1)))[0]
        payload = Queue(keys.team_queue("t"), connection=rq_connection()).fetch_job(first).args[0]
        outcome = score_problem({**payload, "artifact_sha256": artifact_digest(hostile)})
        assert outcome == {"status": "failed", "cause": "invalid_submission"}, (name, outcome)
        failed = load_submission(r, sub.id)
        assert failed.failure.cause.value == "invalid_submission", name
        assert reason in failed.failure.message, (name, failed.failure.message)
        assert failed.charged, name
    assert quotas.used_today(r, "t") == len(cases)


# -- data: sizes, CRCs, lies ------------------------------------------------------------------------


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def test_corrupt_and_lying_data_is_refused_at_intake_and_never_inflated_past_its_declared_size(tmp_path):
    import resource

    # optimizer.py declares 6 bytes; its deflate stream inflates to 256 MiB. The landed code read it
    # whole (ZipExtFile.read() inflates all compressed bytes in one call): measured 1 GiB for 512 MiB.
    big = zlib.compressobj(1, zlib.DEFLATED, -15)
    block = bytes(MIB)
    payload = big.compress(b"x = 1\n") + b"".join(big.compress(block) for _ in range(256)) + big.flush()
    lying = raw_zip([Raw("optimizer.py", b"x = 1\n", payload=payload, file_size=6)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(archive.InvalidSubmission, match="'optimizer.py' is larger than it claims"):
        archive.check(lying, RULES)
    # The worker never gets it; were it stored before this check existed, it writes the declared bytes.
    root = extract_as_the_worker(lying, tmp_path)
    assert (root / "optimizer.py").read_bytes() == b"x = 1\n"
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew_mib < 20, f"the checks grew this process by {grew_mib:.0f} MiB"

    cases = {
        "a bad CRC": (Raw("d.bin", os.urandom(5000), crc=0), "CRC does not match"),
        "short data": (Raw("d.bin", b"abc", file_size=10, crc=zlib.crc32(b"abc")), "not the 10 it claims"),
        "garbled deflate": (Raw("d.bin", b"x" * 100, payload=b"\xff" * 40), "cannot be read"),
        "truncated deflate": (Raw("d.bin", b"y" * 5000, payload=_deflated(os.urandom(5000))[:-50]), "read"),
        "bytes after the stream": (
            Raw("d.bin", b"z", payload=_deflated(b"z") + b"junk"),
            "after its compressed",
        ),
        "stored with two sizes": (Raw("d.bin", b"abc", method=0, file_size=99), "two different sizes"),
    }
    for name, (entry, reason) in cases.items():
        data = raw_zip([OPT, entry])
        with pytest.raises(archive.InvalidSubmission) as intake:
            archive.check(data, RULES)
        assert reason in str(intake.value), (name, str(intake.value))
        # The worker's extraction (no separate verification pass) refuses what it cannot read, or writes
        # exactly the declared bytes; never another exception.
        work = tmp_path / name.replace(" ", "_")
        try:
            root = extract_as_the_worker(data, work)
        except archive.InvalidSubmission:
            continue
        assert (root / "d.bin").stat().st_size == entry.file_size or entry.file_size is None, name


def test_a_zip_bomb_and_the_overlapping_entries_bomb_are_refused_without_inflating(tmp_path):
    zeros = _deflated(bytes(50 * MIB))
    refused(raw_zip([OPT, Raw("z.bin", payload=zeros, file_size=50 * MIB, crc=0)]), tmp_path / "a", "ratio")
    # Fifield's overlap: many central entries pointing at one local blob. Built by hand: 10 entries that
    # share the bytes of the first.
    data = bytearray(raw_zip([OPT, Raw("blob.bin", os.urandom(3000), method=0)]))
    end = len(data) - 22
    _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack_from("<4s4H2LH", data, end)
    central = bytes(data[cd_offset:end])
    second = central.index(b"PK\x01\x02", 4)
    copies = [central[second:].replace(b"blob.bin", f"blob{i:04d}".encode()[:8]) for i in range(10)]
    new_central = central + b"".join(copies)
    rebuilt = bytes(data[:cd_offset]) + new_central
    rebuilt += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 12, 12, len(new_central), cd_offset, 0)
    refused(rebuilt, tmp_path / "b", "overlaps another entry's bytes")


# -- bounded before parsing: the end record ----------------------------------------------------------


def _eocd(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def test_the_end_record_is_checked_before_the_central_directory_is_parsed(tmp_path):
    good = raw_zip([OPT, Raw("a.py", b"a = 1\n")])
    assert archive.check(good, RULES).files == 2

    def patched(field_format: str, offset: int, value: int) -> bytes:
        data = bytearray(good)
        struct.pack_into(field_format, data, _eocd(good) + offset, value)
        return bytes(data)

    cases = {
        "65,535 entries declared": (patched("<H", 10, 0xFFFE), "65534 entries; the limit is 20"),
        "more entries on this disk": (patched("<H", 8, 3), "spanning several disks"),
        "a second disk": (patched("<H", 4, 1), "spanning several disks"),
        "a directory larger than its entries need": (patched("<L", 12, 3 * 4096), "central directory of"),
        "a directory smaller than its entries": (patched("<L", 12, 50), "central directory of"),
        "a directory offset elsewhere": (patched("<L", 16, 0), "not where its end record says"),
        "fewer entries declared than held": (patched("<H", 10, 1), "spanning several disks"),
        "a comment length past the end": (patched("<H", 20, 40), "comment length"),
        "zip64 markers without zip64": (patched("<L", 16, 0xFFFFFFFF), "zip64"),
        "data before the archive": (raw_zip([OPT], prefix=b"MZ" + bytes(100)), "not where its end record"),
        "no end record": (good[:-22], "no end of central directory"),
        "too short": (b"PK\x05\x06", "too short"),
        "empty": (b"", "too short"),
        "not a zip": (b"this is not an archive at all" * 10, "no end of central directory"),
    }
    for name, (data, reason) in cases.items():
        refused(data, tmp_path / name.replace(" ", "_").replace(",", ""), reason)
    # The declared count must match what zipfile parsed (entries on disk kept consistent with it).
    data = bytearray(good)
    struct.pack_into("<HH", data, _eocd(good) + 8, 1, 1)
    refused(bytes(data), tmp_path / "count", "declares 1 entries, its directory holds 2")


def test_the_zip64_end_record_is_read_and_checked_too(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        out.writestr("optimizer.py", b"x = 1\n")
    classic = buffer.getvalue()
    position = _eocd(classic)
    _, _, _, here, total, cd_size, cd_offset, _ = struct.unpack_from("<4s4H2LH", classic, position)

    def zip64(entries: int, cd: int, offset: int) -> bytes:
        record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd, offset)
        locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, position, 1)
        end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
        return classic[:position] + record + locator + end

    assert archive.check(zip64(total, cd_size, cd_offset), RULES).files == 1  # a true zip64 record
    refused(zip64(10**9, cd_size, cd_offset), tmp_path / "a", "1000000000 entries; the limit is 20")
    refused(zip64(total, 2**40, cd_offset), tmp_path / "b", "central directory of")
    refused(zip64(total, cd_size, 2**40), tmp_path / "c", "not where its end record says")


def test_archives_written_by_common_tools_are_accepted_and_extracted(tmp_path):
    folder = SUBMISSIONS / "bundled_module"
    made = {
        "zipfile deflated": archive.pack(folder, RULES),
        "zip -r": _zip_cli(folder, tmp_path / "cli.zip"),
        "make_archive": Path(shutil.make_archive(str(tmp_path / "ma"), "zip", folder)).read_bytes(),
    }
    streamed = io.BytesIO()
    with zipfile.ZipFile(_Unseekable(streamed), "w", zipfile.ZIP_DEFLATED) as out:  # data descriptors
        for path in sorted(folder.iterdir()):
            out.write(path, path.name)
    made["streamed, with data descriptors"] = streamed.getvalue()
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as out:
        for path in sorted(folder.iterdir()):
            out.write(path, f"caf\u00e9/{path.name}" if path.name != "optimizer.py" else path.name)
    made["stored, non-ASCII folder"] = stored.getvalue()
    for name, data in made.items():
        if data is None:
            continue
        artifact = archive.check(data, RULES)
        assert artifact.files >= 2, name
        root = extract_as_the_worker(data, tmp_path / name.replace(" ", "_"))
        assert (root / "optimizer.py").read_bytes() == (folder / "optimizer.py").read_bytes(), name


class _Unseekable(io.RawIOBase):
    def __init__(self, sink: io.BytesIO) -> None:
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.sink.write(data)


def _zip_cli(folder: Path, target: Path) -> bytes | None:
    if shutil.which("zip") is None:
        return None
    subprocess.run(["zip", "-qr", str(target), "."], cwd=folder, check=True)
    return target.read_bytes()


# -- the worker's disk: ours, raised as itself ------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_while_extracting_is_ours_not_the_teams(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("no tmpfs could be mounted here")
    try:
        rules = SubmissionRules(max_zip_mb=4, max_unpacked_mb=8, max_files=20)
        data = raw_zip([OPT, Raw("weights.bin", os.urandom(3 * MIB), method=0)])
        archive.check(data, rules)  # a good archive
        with pytest.raises(OSError) as info:
            archive.extract(data, small / "submission", rules)
        assert not isinstance(info.value, archive.InvalidSubmission)
        assert info.value.errno == errno.ENOSPC
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        with pytest.raises(OSError) as info:
            archive.extract(raw_zip([OPT]), small / "other", rules)
        assert info.value.errno == errno.EROFS and not isinstance(info.value, archive.InvalidSubmission)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_extraction_does_not_parse_the_source_and_intake_does(tmp_path):
    data = raw_zip([Raw("optimizer.py", b"def f(:\n")])
    with pytest.raises(archive.InvalidSubmission, match="syntax error in optimizer.py line 1"):
        archive.check(data, RULES)
    # The worker leaves the syntax to the sandbox host, which reports it with the team's line number.
    root = extract_as_the_worker(data, tmp_path)
    assert (root / "optimizer.py").read_bytes() == b"def f(:\n"


# -- property-based: the checker raises only InvalidSubmission; what it accepts extracts inside ------

SAFE_PIECE = st.text(alphabet="abAB_-.\u00e9\u4e2d", min_size=1, max_size=8)
NAME_PIECES = st.one_of(
    SAFE_PIECE,
    SAFE_PIECE,
    SAFE_PIECE,
    st.text(min_size=1, max_size=12),
    st.sampled_from(
        [".", "..", "", "pkg", "PKG", "optimizer.py", "a\x00b", "\x1b]0;t\x07", "\u202e", "\\", "C:"]
    ),
    st.text(alphabet="ab", min_size=250, max_size=300),
)


@st.composite
def names(draw, clean: bool) -> bytes:
    parts = draw(st.lists(SAFE_PIECE if clean else NAME_PIECES, min_size=1, max_size=4))
    name = "/".join(parts) + draw(st.sampled_from(["", "", "/"]))
    encoded = name.encode("utf-8", errors="surrogatepass")
    if not clean and draw(st.booleans()) and draw(st.booleans()):
        encoded += draw(st.binary(min_size=1, max_size=3))  # raw bytes, perhaps not UTF-8
    return encoded


@st.composite
def archives(draw) -> bytes:
    """Half of them 'clean' (safe names, no mutation: mostly accepted, so extraction is exercised), half
    hostile: any names, duplicates, then truncated, bit-flipped, or with a random end record field."""
    clean = draw(st.booleans())
    entries = [Raw("optimizer.py", b"x = 1\n")] if clean or draw(st.booleans()) else []
    for name in draw(st.lists(names(clean), max_size=6)):
        folder = name.endswith(b"/")
        data = b"" if folder else draw(st.binary(max_size=64))
        method = 0 if folder else draw(st.sampled_from([0, 8]))
        entries.append(Raw(name, data, method=method, flags=draw(st.sampled_from([None, 0, 0x800]))))
    if not clean and draw(st.booleans()) and len(entries) > 1:
        entries.append(entries[draw(st.integers(0, len(entries) - 1))])  # a duplicate
    data = raw_zip(entries)
    mutation = "none" if clean else draw(st.sampled_from(["none", "truncate", "flip", "eocd", "declared"]))
    if mutation == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif mutation == "flip" and data:
        buffer = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            buffer[draw(st.integers(0, len(buffer) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(buffer)
    elif mutation == "eocd":
        buffer = bytearray(data)
        offset = draw(st.sampled_from([4, 6, 8, 10, 12, 16, 20]))
        width = "<L" if offset in (12, 16) else "<H"
        value = draw(st.integers(0, 2 ** (32 if width == "<L" else 16) - 1))
        struct.pack_into(width, buffer, len(buffer) - 22 + offset, value)
        data = bytes(buffer)
    elif mutation == "declared":
        data = raw_zip(entries, entries_declared=draw(st.integers(0, 0xFFFF)))
    return data


def _everything_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=archives())
def test_the_checker_raises_only_invalid_submission_and_what_it_accepts_extracts_inside(data):
    with tempfile.TemporaryDirectory() as scratch:
        outer = Path(scratch)
        accepted = None
        try:
            accepted = archive.check(data, RULES)
        except archive.InvalidSubmission as exc:
            assert str(exc).isprintable()
        event("accepted" if accepted is not None else "refused")
        root = outer / "work" / "submission"
        try:
            archive.extract(data, root, RULES)
        except archive.InvalidSubmission:
            assert accepted is None, "intake accepted what the worker's extraction refuses"
        written = _everything_under(outer)
        # Nothing outside the destination, no link, within the limits (also after a refusal half-way).
        assert all(path == outer / "work" or path.is_relative_to(root) for path in written), written
        assert not any(path.is_symlink() for path in written)
        files = [p for p in written if p.is_file()]
        assert len(files) <= RULES.max_files
        assert sum(p.stat().st_size for p in files) <= RULES.max_unpacked_mb * MIB
        if accepted is not None:
            declared = [i for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if not i.is_dir()]
            assert len(files) == len(declared)
            assert accepted.unpacked_bytes == sum(p.stat().st_size for p in files)


@settings(max_examples=150, deadline=None)
@given(
    fields=st.tuples(
        *(st.integers(0, 0xFFFF) for _ in range(4)),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 0xFFFF),
    ),
    comment=st.binary(max_size=40),
)
def test_random_end_record_fields_are_refused_or_consistent(fields, comment):
    good = raw_zip([OPT, Raw("a.py", b"a = 1\n")])
    position = _eocd(good)
    data = good[:position] + struct.pack("<4s4H2LH", b"PK\x05\x06", *fields) + comment
    try:
        end = zip_checks.read_end_record(data, RULES.max_files)
    except zip_checks.InvalidSubmission:
        return
    assert end.cd_offset + end.cd_size == position  # accepted: the directory is exactly where it is
    assert end.entries <= RULES.max_files and end.cd_size <= end.entries * zip_checks.MAX_CD_RECORD
    with contextlib.suppress(archive.InvalidSubmission):
        archive.check(data, RULES)
