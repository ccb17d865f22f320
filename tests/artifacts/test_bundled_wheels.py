"""Bundled packages at intake (issue 14 finding 7): only wheels for the sandbox image (CPython 3.11, linux
x86_64: manylinux or pure Python), each checked like the archive itself as a nested zip; no sdist; and
requirement files that name packages or bundled wheels, never paths, URLs, VCS references or options.
Every wheel here is written by hand (METADATA, WHEEL, RECORD), never copied from a third party."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from artifacts import archive, bundled
from queue_schema.bundled_requirements import without_comment
from runtime.spec import SubmissionRules

RULES = SubmissionRules(max_zip_mb=2, max_unpacked_mb=8, max_files=40, max_source_kb=64)
MIB = 1024 * 1024
OPTIMIZER = b"import tiny_dep\n"


def make_wheel(
    name: str = "tiny_dep",
    version: str = "0.1.0",
    tag: str = "py3-none-any",
    *,
    files: dict[str, bytes] | None = None,
    dist_info: str | None = None,
    omit: tuple[str, ...] = (),
    compression: int = zipfile.ZIP_DEFLATED,
) -> tuple[str, bytes]:
    """(file name, bytes) of a wheel written here: a package, its .dist-info with METADATA, WHEEL, RECORD."""
    info = dist_info or f"{name}-{version}.dist-info"
    contents = {f"{name}/__init__.py": b"VALUE = 42\n", **(files or {})}
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: bbo-tests\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()
    )
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for path, data in contents.items():
            if path.rsplit("/", 1)[-1] not in omit:
                zf.writestr(path, data)
    return f"{name}-{version}-{tag}.whl", buffer.getvalue()


def submission(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        zf.writestr("optimizer.py", OPTIMIZER)
        for path, data in entries.items():
            zf.writestr(path, data)
    return buffer.getvalue()


def refused(data: bytes, reason: str, tmp_path=None) -> str:
    with pytest.raises(archive.InvalidSubmission) as caught:
        archive.check(data, RULES)
    message = str(caught.value)
    assert reason in message, message
    assert message.isprintable()
    if tmp_path is not None:  # the worker's extraction refuses it too (structural checks), writing nothing
        with pytest.raises(archive.InvalidSubmission):
            archive.extract(data, tmp_path / "submission", RULES)
        assert not (tmp_path / "submission").exists()
    return message


def test_a_starter_kit_submission_with_a_wheel_and_its_requirement_files_is_accepted(tmp_path):
    wheel_name, wheel = make_wheel()
    linux_name, linux = make_wheel(
        "fast_dep", "2.0", "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64"
    )
    abi3_name, abi3 = make_wheel("abi_dep", "1.0", "cp36-abi3-manylinux1_x86_64")
    data = submission(
        {
            wheel_name: wheel,
            linux_name: linux,
            abi3_name: abi3,
            "requirements.txt": b"# pinned\ntiny-dep==0.1.0\nfast_dep>=2,<3  # comment\nabi-dep\n\nnumpy\n",
            "install_order.txt": f"{wheel_name}\n{linux_name}\nabi_dep[extra]==1.0\n".encode(),
        }
    )
    artifact = archive.check(data, RULES)
    assert artifact.files == 6
    root = archive.extract(data, tmp_path / "submission", RULES)
    assert (root / wheel_name).read_bytes() == wheel


@pytest.mark.parametrize(
    "tag",
    [
        "cp311-cp311-win_amd64",
        "cp311-cp311-macosx_11_0_arm64",
        "cp310-cp310-manylinux1_x86_64",
        "cp312-cp312-manylinux_2_17_x86_64",
        "cp311-cp311-linux_x86_64",
        "cp311-cp311-musllinux_1_1_x86_64",
        "cp311-cp311-manylinux_2_38_x86_64",
        "cp311-cp311-manylinux_2_17_aarch64",
        "py2-none-any",
    ],
)
def test_a_wheel_for_another_platform_is_refused_with_the_reason(tag, tmp_path):
    name, wheel = make_wheel(tag=tag)
    message = refused(submission({name: wheel}), f"is built for {tag}", tmp_path)
    assert "CPython 3.11 on linux x86_64" in message


def test_bundled_wheels_are_checked_like_the_archive_itself(tmp_path):
    cases = {
        "not a wheel file name": ({"tiny.whl": make_wheel()[1]}, "is not a wheel file name"),
        "not a zip": (
            {"tiny_dep-0.1.0-py3-none-any.whl": b"MZ not a zip" * 50},
            "not a readable zip bundled",
        ),
        "a zip bomb inside": (
            {
                make_wheel(files={"tiny_dep/zeros.bin": bytes(20 * MIB)})[0]: make_wheel(
                    files={"tiny_dep/zeros.bin": bytes(20 * MIB)}
                )[1]
            },
            "'tiny_dep/zeros.bin' has a suspicious compression ratio",
        ),
        "too many entries": (
            dict([make_wheel(files={f"tiny_dep/m{i}.py": b"" for i in range(60)})]),
            "entries; the limit is 40",
        ),
        "a path outside": (dict([make_wheel(files={"../../evil.py": b"x"})]), "points outside the archive"),
        "an absolute path": (dict([make_wheel(files={"/etc/cron.d/x": b"x"})]), "absolute path"),
        "a file and a folder": (
            dict([make_wheel(files={"tiny_dep/sub": b"x", "tiny_dep/sub/m.py": b"x"})]),
            "uses it as a folder",
        ),
        "an escape in a name": (dict([make_wheel(files={"tiny_dep/\x1b[2J.py": b"x"})]), "control"),
        "no RECORD": (dict([make_wheel(omit=("RECORD",))]), "lacks RECORD"),
        "no WHEEL": (dict([make_wheel(omit=("WHEEL", "METADATA"))]), "lacks METADATA, WHEEL"),
        "another project's .dist-info": (
            dict([make_wheel(dist_info="other-0.1.0.dist-info")]),
            ".dist-info folder for another project",
        ),
        "no .dist-info": (
            dict([make_wheel(dist_info="tiny_dep-0.1.0.data")]),
            "has 0 .dist-info folders",
        ),
    }
    for name, (entries, reason) in cases.items():
        message = refused(submission(entries), reason, tmp_path / name.replace(" ", "_"))
        assert "bundled wheel" in message or "wheel file name" in message, (name, message)


def _letters(size: int, seed: int) -> bytes:
    """Bytes that deflate about 6:1: under the ratio limit, so only the sizes can refuse them."""
    import random

    return bytes(random.Random(seed).choices(b"ab", k=size))


def test_what_wheels_unpack_to_counts_against_the_archives_limit():
    # Three wheels of about 0.5 MiB each unpack to 3 MiB each: the archive's files are 1.5 MiB, with
    # the wheels' contents 9 MiB, over the 8 MiB limit.
    wheels = dict(make_wheel(f"dep{i}", files={f"dep{i}/w.bin": _letters(3 * MIB, i)}) for i in range(3))
    data = submission(wheels, zipfile.ZIP_STORED)
    assert len(data) < RULES.max_zip_mb * MIB
    refused(data, "unpacks to more than 8 MiB with its bundled wheels' contents")
    two = dict(list(wheels.items())[:2])
    assert archive.check(submission(two, zipfile.ZIP_STORED), RULES).files == 3


def test_a_wheel_larger_than_an_upload_may_be_is_refused_before_it_is_read(tmp_path):
    name, wheel = make_wheel(files={"tiny_dep/pad.bin": _letters(3 * MIB, 7)}, compression=zipfile.ZIP_STORED)
    data = submission({name: wheel})
    assert len(data) < RULES.max_zip_mb * MIB
    refused(data, "is 3.0 MiB; a wheel may be at most 2 MiB", tmp_path)


@pytest.mark.parametrize(
    "name",
    ["tiny-0.1.tar.gz", "tiny-0.1.tgz", "tiny-0.1.tar.bz2", "tiny-0.1.zip", "tiny-0.1.tar.xz", "Tiny.TAR.GZ"],
)
def test_a_source_distribution_at_the_top_level_is_refused(name, tmp_path):
    message = refused(
        submission({name: b"sdist bytes", "requirements.txt": b"tiny\n"}), "source distribution"
    )
    assert "setup.py" in message and "wheel" in message
    # Data archives deeper in the tree are just files (pip's --find-links reads only the top level).
    assert archive.check(submission({f"data/{name}": b"bytes"}), RULES).files == 2


REFUSED_LINES = {
    "-e .": "is an option",
    "-r other.txt": "is an option",
    "--requirement other.txt": "is an option",
    "--index-url https://pypi.example.org/simple": "is an option",
    "-i https://pypi.example.org/simple": "is an option",
    "--extra-index-url https://evil.example.org": "is an option",
    "-f /tmp/wheels": "is an option",
    "--find-links=https://evil.example.org": "is an option",
    "--no-binary :all:": "is an option",
    "--hash=sha256:00": "is an option",
    "-c constraints.txt": "is an option",
    ".": "is a path",
    "./pkg": "is a path",
    "pkg/": "is a path",
    "../outside": "is a path",
    "/abs/path": "is a path",
    "~/pkg": "is a path",
    "pkg\\sub": "is a path",
    "git+https://github.com/x/y.git": "URL or VCS reference",
    "hg+https://example.org/repo": "URL or VCS reference",
    "pkg @ https://example.org/pkg-1.0-py3-none-any.whl": "URL or VCS reference",
    "pkg@file:///tmp/pkg": "URL or VCS reference",
    "https://example.org/pkg-1.0.tar.gz": "URL or VCS reference",
    "file:pkg-1.0.tar.gz": "source distribution",
    "file:pkg": "not a requirement",
    "pkg; python_version < '4'": "environment marker",
    "pkg==1.0 ; sys_platform == 'linux'": "environment marker",
    "pkg[extra]; os_name == 'posix'": "environment marker",
    "numpy==1.23.5 \\": "continues on the next line",
    "${HOME}/pkg": "environment variable",
    "pkg==${VERSION}": "environment variable",
    "tiny-0.1.tar.gz": "source distribution",
    "tiny-0.1.zip": "source distribution",
    "missing-1.0-py3-none-any.whl": "not bundled at the top level",
    "numpy --global-option=build": "not a requirement",
    "numpy==1.23.5 --hash=sha256:abc": "not a requirement",
    "two words": "not a requirement",
    "numpy#egg=numpy": "not a requirement",
}


@pytest.mark.parametrize("line", list(REFUSED_LINES), ids=range(len(REFUSED_LINES)))
@pytest.mark.parametrize("file", ["requirements.txt", "install_order.txt"])
def test_requirement_lines_that_would_build_fetch_or_reconfigure_are_refused(file, line, tmp_path):
    text = f"# header\nnumpy==1.23.5\n{line}\n".encode()
    message = refused(submission({file: text}), REFUSED_LINES[line], tmp_path)
    assert f"{file} line 3" in message


def test_requirement_files_are_utf8_and_bounded():
    refused(submission({"requirements.txt": b"caf\xe9\n"}), "requirements.txt is not UTF-8")
    refused(submission({"requirements.txt": b"numpy\n" * 20_000}), "larger than 64 KiB")
    refused(submission({"install_order.txt": b"a\n" * 1500}), "more than 1000 lines")
    ok = submission({"requirements.txt": "\ufeffnumpy==1.23.5\r\n  # only comments\r\n\r\n".encode()})
    assert archive.check(ok, RULES).files == 2


def test_the_accepted_tags_are_those_of_the_sandbox_image():
    from packaging.tags import Tag

    assert Tag("py3", "none", "any") in bundled.ACCEPTED_TAGS
    assert Tag("cp311", "cp311", "manylinux_2_36_x86_64") in bundled.ACCEPTED_TAGS
    assert Tag("cp311", "cp311", "manylinux2014_x86_64") in bundled.ACCEPTED_TAGS
    assert Tag("cp311", "cp311", "manylinux_2_37_x86_64") not in bundled.ACCEPTED_TAGS
    assert Tag("cp311", "cp311", "linux_x86_64") not in bundled.ACCEPTED_TAGS


# -- property-based: only InvalidSubmission, and only plain requirements pass --------------------------

WHEEL_NAME = "tiny_dep-0.1.0-py3-none-any.whl"
LINE_PIECES = st.sampled_from(
    ["numpy", "==", "1.0", "-e", "--index-url", " ", "@", "://", "/", ".", "~", ";", "python_version<'4'",
     "[x]", "git+", "${X}", "\\", "#", ".tar.gz", ".whl", WHEEL_NAME, ",", ">=", "https", "file:"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(line=st.one_of(st.text(max_size=60), st.lists(LINE_PIECES, max_size=6).map("".join)))
def test_a_requirement_line_passes_only_as_a_name_with_versions_or_a_bundled_wheel(line):
    data = f"{line}\n".encode("utf-8", errors="surrogatepass")
    try:
        bundled.check_install_file("requirements.txt", data, {WHEEL_NAME})
    except archive.InvalidSubmission as exc:
        assert str(exc).isprintable()
        return
    for raw in data.decode("utf-8", errors="surrogatepass").splitlines():
        kept = without_comment(raw)
        if not kept or kept == WHEEL_NAME:
            continue
        requirement = Requirement(kept)
        assert requirement.url is None and requirement.marker is None, kept
        assert not kept.startswith("-") and not any(c in kept for c in "/\\@$~"), kept


@settings(max_examples=150, deadline=None)
@given(
    name=st.one_of(st.text(max_size=40).map(lambda t: t + ".whl"), st.just(WHEEL_NAME)),
    payload=st.one_of(st.binary(max_size=200), st.just(make_wheel()[1])),
    cut=st.integers(0, 400),
)
def test_random_wheel_names_and_bytes_raise_only_invalid_submission(name, payload, cut):
    entries = {name: payload[: cut if cut < len(payload) else None]} if "\x00" not in name else {}
    try:
        data = submission(entries)
    except (ValueError, UnicodeEncodeError):  # names zipfile itself cannot write
        return
    try:
        archive.check(data, RULES)
    except archive.InvalidSubmission as exc:
        assert str(exc).isprintable()
