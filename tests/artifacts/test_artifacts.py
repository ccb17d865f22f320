from __future__ import annotations

import io
import stat
import zipfile

import pytest

from artifacts import archive
from runtime.spec import SubmissionRules
from tests.conftest import SUBMISSIONS

RULES = SubmissionRules(max_zip_mb=1, max_unpacked_mb=5, max_files=20)


def make_zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return buffer.getvalue()


OK = {"optimizer.py": b"x = 1\n"}


def test_folder_is_packed_with_optimizer_at_the_top(tmp_path):
    data = archive.pack(SUBMISSIONS / "bundled_module", RULES)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(names) == ["helpers.py", "optimizer.py"]
    art = archive.check(data, RULES)
    assert len(art.sha256) == 64 and art.files == 2
    root = archive.extract(data, tmp_path / "x", RULES)
    assert (root / "helpers.py").read_bytes() == (SUBMISSIONS / "bundled_module" / "helpers.py").read_bytes()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"readme.txt": b"hi"}, "optimizer.py not found at the top level"),
        ({"mine/optimizer.py": b"x=1"}, "zip the folder's contents"),
        ({"optimizer.py": b"def f(:\n"}, "syntax error in optimizer.py line 1"),
        (OK | {"../evil.py": b"x"}, "points outside"),
        (OK | {"/etc/cron.d/evil": b"x"}, "absolute path"),
        (OK | {f"f{i}.py": b"" for i in range(25)}, "entries; the limit is 20"),
        (OK | {"bomb.bin": b"\0" * (6 * 1024 * 1024)}, "suspicious compression ratio"),
    ],
)
def test_bad_archives_are_rejected_with_a_clear_message(entries, message):
    with pytest.raises(archive.InvalidSubmission, match=message.replace("(", r"\(")):
        archive.check(make_zip(entries), RULES)


def test_total_unpacked_size_is_capped():
    import os

    roomy = SubmissionRules(max_zip_mb=20, max_unpacked_mb=5, max_files=20)
    data = make_zip(OK | {f"w{i}.bin": os.urandom(1024 * 1024) for i in range(6)})
    with pytest.raises(archive.InvalidSubmission, match="unpacks to more than 5 MiB"):
        archive.check(data, roomy)


def test_symlinks_and_garbage_are_rejected():
    with pytest.raises(archive.InvalidSubmission, match="link or device"):
        archive.check(make_zip(OK, symlink="link.py"), RULES)
    with pytest.raises(archive.InvalidSubmission, match="not a readable zip"):
        archive.check(b"PK\x03\x04 this is not really a zip", RULES)
    with pytest.raises(archive.InvalidSubmission, match="limit is 1 MiB"):
        archive.check(b"\0" * (2 * 1024 * 1024), RULES)


def test_store_is_content_addressed(r):
    from queue_schema.connection import rq_connection

    art = archive.check(make_zip(OK), RULES)
    archive.store(r, art)
    archive.store(r, art)
    assert archive.fetch(rq_connection(), art.sha256) == art.data
