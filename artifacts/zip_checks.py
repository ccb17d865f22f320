"""A zip's bytes from a team, checked before anything trusts them: the submission archive and every wheel
bundled in it go through `inspect`.

Bounded before parsing: the End Of Central Directory record (and the zip64 one) is read by hand first, and
its declared entry count, central directory size and offsets must be consistent and within the limits
before `zipfile` parses a byte of the central directory. Then every entry is checked positively:

- its name: valid UTF-8, printable (no NUL, controls or invisible format characters), no backslash, not
  absolute or a drive, no empty, `.` or `..` component, each component at most 255 bytes, the whole at most
  MAX_PATH_BYTES, at most MAX_DEPTH components;
- across entries: no two names equal after Unicode normalisation (NFC) and case folding, and no name that
  is both a file and a folder (`pkg` beside `pkg/m.py`, in either order);
- its kind (regular file or folder, never a link or device), no encryption, stored or deflated only, the
  sizes its local header and data can hold (no two entries' bytes overlap: the overlapping-entries zip
  bomb), a compression ratio below MAX_RATIO, and the total unpacked size under the limit;
- with `verify=True`, its data: decompressed in bounded chunks, exactly the declared size, CRC checked.

Anything else zipfile raises while parsing bytes held in memory is the team's: `InvalidSubmission`, whose
message is safe to show (names echoed through `safe_text`).
"""

from __future__ import annotations

import io
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from artifacts.errors import InvalidSubmission  # noqa: F401 - re-exported for callers
from queue_schema.untrusted import safe_text

MIB = 1024 * 1024
MAX_RATIO = 200  # uncompressed / compressed, per entry past RATIO_FLOOR: a bomb, not source code
RATIO_FLOOR = MIB
MAX_COMPONENT_BYTES = 255  # NAME_MAX of every Linux file system
# PATH_MAX is 4096 including the folder we extract into (the worker's state folder, the sandbox cache):
# 1024 for the archive's own part leaves room for both, and no real package comes near it.
MAX_PATH_BYTES = 1024
MAX_DEPTH = 32
# A central directory record is 46 fixed bytes, the name (at most MAX_PATH_BYTES), an extra field and a
# comment. Real tools' extra fields hold timestamps (9 to 36 bytes), Unix ids (11), zip64 sizes (up to 32)
# and Info-ZIP's Unicode path (9 bytes plus the name again): 46 + 1024 + (1024 + 128) + a short comment
# fits in 4 KiB. So a central directory larger than entries x 4 KiB is not one any tool wrote, and with
# max_files = 2000 the most zipfile is ever asked to parse is 8 MiB.
MAX_CD_RECORD = 4096
CHUNK = 64 * 1024
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_FLAG_ENCRYPTED = 0x1
_FLAG_PATCHED = 0x20
_FLAG_STRONG_ENCRYPTION = 0x40
_FLAG_UTF8 = 0x800

_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, disk of the CD, entries here, entries, CD size, offset
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sLQL")  # signature, disk of the zip64 record, its offset, number of disks
_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here, entries, size, offset
_EOCD64_SIG = b"PK\x06\x06"
_LOCAL = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, lengths
_LOCAL_SIG = b"PK\x03\x04"


@dataclass(frozen=True)
class EndRecord:
    entries: int
    cd_size: int
    cd_offset: int
    zip64: bool


@dataclass(frozen=True)
class Entry:
    name: str  # the canonical name: UTF-8, "/"-separated, no trailing slash
    parts: tuple[str, ...]
    is_dir: bool
    info: zipfile.ZipInfo

    @property
    def size(self) -> int:
        return self.info.file_size


@dataclass
class Listing:
    """A checked archive: its entries in archive order, and the open ZipFile to read them from."""

    archive: zipfile.ZipFile
    entries: list[Entry]
    unpacked_bytes: int

    def files(self) -> Iterator[Entry]:
        return (e for e in self.entries if not e.is_dir)

    def file(self, name: str) -> Entry | None:
        return next((e for e in self.files() if e.name == name), None)

    def read(self, entry: Entry, what: str = "archive") -> bytes:
        """The entry's bytes, at most its declared size (checked), read in bounded chunks."""
        return b"".join(read_chunks(self.archive, entry, what))


def shown(name: str, limit: int = 120) -> str:
    """An entry name as it may be echoed back: controls made visible, cut, quoted."""
    return repr(safe_text(name, limit=limit))


def read_end_record(data: bytes, max_entries: int, what: str = "archive") -> EndRecord:
    """The End Of Central Directory record (and zip64's), read by hand and checked for consistency and
    against `max_entries` before anything parses the central directory it points to. The record chosen
    is the one zipfile will use (the last signature in the final 64 KiB + 22 bytes)."""
    size = len(data)
    if size < _EOCD.size:
        raise InvalidSubmission(f"not a readable zip {what}: {size} bytes is too short for a zip")
    tail = data[-_EOCD.size :]
    if tail[:4] == _EOCD_SIG and tail[-2:] == b"\0\0":
        position = size - _EOCD.size
    else:
        start = max(0, size - (1 << 16) - _EOCD.size)
        found = data.rfind(_EOCD_SIG, start)
        if found < 0 or found + _EOCD.size > size:
            raise InvalidSubmission(f"not a readable zip {what}: no end of central directory record")
        position = found
    _, disk, cd_disk, here, entries, cd_size, cd_offset, comment = _EOCD.unpack_from(data, position)
    if position + _EOCD.size + comment != size:
        raise InvalidSubmission(
            f"not a readable zip {what}: its end record's comment length does not match the bytes after it"
        )
    cd_end = position
    zip64 = position >= _LOCATOR.size and data[position - _LOCATOR.size : position - 16] == _LOCATOR_SIG
    if zip64:
        _, z64_disk, z64_offset, disks = _LOCATOR.unpack_from(data, position - _LOCATOR.size)
        record = position - _LOCATOR.size - _EOCD64.size
        if z64_disk != 0 or disks > 1:
            raise InvalidSubmission(f"not a readable zip {what}: archives spanning several disks are refused")
        if record < 0 or data[record : record + 4] != _EOCD64_SIG or z64_offset != record:
            raise InvalidSubmission(
                f"not a readable zip {what}: its zip64 end record is missing or misplaced"
            )
        _, length, _, _, disk64, cd_disk64, here64, entries64, cd_size64, cd_offset64 = _EOCD64.unpack_from(
            data, record
        )
        if length != _EOCD64.size - 12:
            raise InvalidSubmission(f"not a readable zip {what}: its zip64 end record has extensible data")
        # The 16- and 32-bit fields of the classic record are the true values, or capped at their maximum.
        for small, big, cap in (
            (disk, disk64, 0xFFFF),
            (cd_disk, cd_disk64, 0xFFFF),
            (here, here64, 0xFFFF),
            (entries, entries64, 0xFFFF),
            (cd_size, cd_size64, 0xFFFFFFFF),
            (cd_offset, cd_offset64, 0xFFFFFFFF),
        ):
            if small not in (big, cap) and small != min(big, cap):
                raise InvalidSubmission(f"not a readable zip {what}: its two end records disagree")
        disk, cd_disk, here, entries, cd_size, cd_offset = (
            disk64,
            cd_disk64,
            here64,
            entries64,
            cd_size64,
            cd_offset64,
        )
        cd_end = record
    elif 0xFFFF in (here, entries) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise InvalidSubmission(
            f"not a readable zip {what}: its end record points to a zip64 record it lacks"
        )
    if max(here, entries) > max_entries:
        raise InvalidSubmission(f"{what} has {max(here, entries)} entries; the limit is {max_entries}")
    if disk != 0 or cd_disk != 0 or here != entries:
        raise InvalidSubmission(f"not a readable zip {what}: archives spanning several disks are refused")
    if cd_size > entries * MAX_CD_RECORD or cd_size < entries * 46:
        raise InvalidSubmission(
            f"not a readable zip {what}: a central directory of {cd_size} bytes for {entries} entries"
        )
    if cd_offset + cd_size != cd_end:
        raise InvalidSubmission(
            f"not a readable zip {what}: its central directory is not where its end record says "
            "(data before or inside the archive)"
        )
    return EndRecord(entries=entries, cd_size=cd_size, cd_offset=cd_offset, zip64=zip64)


def raw_name(info: zipfile.ZipInfo) -> bytes:
    """The name's bytes as stored: zipfile decodes UTF-8 when the flag says so, else cp437 (a bijection)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & _FLAG_UTF8 else "cp437")


def _printable(char: str) -> bool:
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return False
    return unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def canonical(info: zipfile.ZipInfo, what: str = "archive") -> Entry:
    """The entry with its name checked positively (module docstring); raises InvalidSubmission."""
    raw = raw_name(info)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        shown_name = shown(raw.decode("utf-8", errors="replace"))
        raise InvalidSubmission(f"{what} entry {shown_name} has a name that is not valid UTF-8") from None
    label = f"{what} entry {shown(name)}"
    if not name:
        raise InvalidSubmission(f"{what} has an entry with an empty name")
    if len(raw) > MAX_PATH_BYTES:
        raise InvalidSubmission(f"{label} has a name of {len(raw)} bytes; the limit is {MAX_PATH_BYTES}")
    if not all(_printable(c) for c in name):
        raise InvalidSubmission(f"{label} has control or invisible characters in its name")
    if "\\" in name:
        raise InvalidSubmission(f"{label} has a backslash in its name (zip paths use '/')")
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":" and name[0].isalpha()):
        raise InvalidSubmission(f"{label} has an absolute path")
    is_dir = name.endswith("/")
    parts = tuple((name[:-1] if is_dir else name).split("/"))
    if ".." in parts:
        raise InvalidSubmission(f"{label} points outside the archive")
    if any(part in ("", ".") for part in parts):
        raise InvalidSubmission(f"{label} has an empty or '.' path component")
    if len(parts) > MAX_DEPTH:
        raise InvalidSubmission(f"{label} is nested {len(parts)} folders deep; the limit is {MAX_DEPTH}")
    longest = max(len(part.encode()) for part in parts)
    if longest > MAX_COMPONENT_BYTES:
        raise InvalidSubmission(
            f"{label} has a path component of {longest} bytes; the limit is {MAX_COMPONENT_BYTES}"
        )
    return Entry(name="/".join(parts), parts=parts, is_dir=is_dir, info=info)


def _check_kind(entry: Entry, label: str) -> None:
    info = entry.info
    # Zip tools that write no file type leave these bits zero; only a declared non-regular type is refused.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        raise InvalidSubmission(f"{label} is a link or device, not a regular file")
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
        raise InvalidSubmission(f"{label} is encrypted")
    if info.flag_bits & _FLAG_PATCHED:
        raise InvalidSubmission(f"{label} is compressed patched data, which is not supported")
    if info.compress_type not in METHODS:
        raise InvalidSubmission(
            f"{label} uses compression method {info.compress_type}; only stored and deflated are accepted"
        )
    if entry.is_dir and (info.file_size or info.compress_size):
        raise InvalidSubmission(f"{label} is a folder with content")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise InvalidSubmission(f"{label} is stored uncompressed but declares two different sizes")
    if (
        info.compress_size
        and info.file_size / info.compress_size > MAX_RATIO
        and info.file_size > RATIO_FLOOR
    ):
        raise InvalidSubmission(f"{label} has a suspicious compression ratio")


def _check_layout(data: bytes, entries: list[Entry], cd_offset: int, what: str) -> dict[str, range]:
    """Every local header where the central directory says, naming the same entry, and no two entries'
    bytes overlapping (many entries pointing at one compressed blob is the overlapping-entries bomb).
    Returns each entry's compressed bytes (a range of `data`) by name."""
    spans: dict[str, range] = {}
    previous_end = 0
    for entry in sorted(entries, key=lambda e: e.info.header_offset):
        info = entry.info
        label = f"{what} entry {shown(entry.name)}"
        offset = info.header_offset
        if offset < previous_end:
            raise InvalidSubmission(f"{label} overlaps another entry's bytes")
        if offset + _LOCAL.size > cd_offset:
            raise InvalidSubmission(f"{label} points past the archive's data")
        sig, _, flags, _, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack_from(data, offset)
        if sig != _LOCAL_SIG:
            raise InvalidSubmission(f"{label} has no local header where the directory says")
        start = offset + _LOCAL.size + name_len + extra_len
        end = start + info.compress_size
        if end > cd_offset:
            raise InvalidSubmission(f"{label} claims more bytes than the archive holds")
        local = data[offset + _LOCAL.size : offset + _LOCAL.size + name_len]
        try:
            local_name = local.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
        except UnicodeDecodeError:
            local_name = None
        if local_name != info.orig_filename:
            raise InvalidSubmission(f"{label} has a different name in its local header")
        if flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION | _FLAG_PATCHED):
            raise InvalidSubmission(f"{label} is encrypted or patched in its local header")
        previous_end = end
        spans[entry.name] = range(start, end)
    return spans


def _verify(data: bytes, entry: Entry, span: range, what: str) -> None:
    """The entry's compressed bytes inflate to exactly its declared size and CRC, and end there: a
    stream longer than declared (zipfile would stop at the declared size and never tell) is refused.
    Inflated in chunks of at most CHUNK bytes, so a lie costs no memory."""
    label = f"{what} entry {shown(entry.name)}"
    info = entry.info
    payload = memoryview(data)[span.start : span.stop]
    if info.compress_type == zipfile.ZIP_STORED or (not payload and not info.file_size):
        produced, crc = len(payload), zlib.crc32(payload)
    else:
        inflater = zlib.decompressobj(-15)
        produced = crc = 0
        try:
            for position in range(0, len(payload), CHUNK):
                pending = payload[position : position + CHUNK]
                while pending and not inflater.eof:
                    out = inflater.decompress(pending, CHUNK)
                    produced += len(out)
                    if produced > info.file_size:
                        raise InvalidSubmission(f"{label} is larger than it claims")
                    crc = zlib.crc32(out, crc)
                    pending = inflater.unconsumed_tail
                if inflater.eof:
                    if pending or position + CHUNK < len(payload) or inflater.unused_data:
                        raise InvalidSubmission(f"{label} has bytes after its compressed data")
                    break
        except zlib.error as exc:
            raise InvalidSubmission(f"{label} cannot be read: {safe_text(exc, limit=200)}") from None
        if not inflater.eof:
            raise InvalidSubmission(f"{label} cannot be read: its compressed data is truncated")
    if produced != info.file_size:
        raise InvalidSubmission(f"{label} is {produced} bytes, not the {info.file_size} it claims")
    if crc != info.CRC:
        raise InvalidSubmission(f"{label} cannot be read: its CRC does not match its data")


def _check_names(entries: list[Entry], what: str) -> None:
    """No duplicates after NFC and case folding, no name that is both a file and a folder."""
    seen: dict[tuple[str, ...], Entry] = {}
    folders: dict[tuple[str, ...], Entry] = {}  # every folder an entry implies, with one entry implying it
    for entry in entries:
        key = tuple(unicodedata.normalize("NFC", part).casefold() for part in entry.parts)
        other = seen.get(key)
        if other is not None:
            if other.name == entry.name and other.is_dir == entry.is_dir:
                raise InvalidSubmission(f"{what} entry {shown(entry.name)} appears twice")
            raise InvalidSubmission(
                f"{what} entries {shown(other.name)} and {shown(entry.name)} collide "
                "(the same name up to case, Unicode normalisation or a trailing '/')"
            )
        seen[key] = entry
        for depth in range(1, len(key)):
            folders.setdefault(key[:depth], entry)
    for key, entry in seen.items():
        if not entry.is_dir and key in folders:
            inside = folders[key]
            raise InvalidSubmission(
                f"{what} entry {shown(entry.name)} is a file, and {shown(inside.name)} uses it as a folder"
            )


def inspect(
    data: bytes,
    *,
    max_files: int,
    max_unpacked: int,
    verify: bool,
    what: str = "archive",
) -> Listing:
    """The archive's entries, every rule of the module docstring checked; raises InvalidSubmission.
    `max_unpacked` is in bytes; `verify` also decompresses every entry (bounded chunks) and checks its
    size and CRC, so that a later extraction meets no corrupt data."""
    end = read_end_record(data, max_files, what)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except MemoryError:
        raise
    except Exception as exc:  # parsing bytes in memory: whatever fails is the bytes' doing
        raise InvalidSubmission(f"not a readable zip {what}: {safe_text(exc, limit=200)}") from None
    if len(infos) != end.entries:
        raise InvalidSubmission(
            f"not a readable zip {what}: its end record declares {end.entries} entries, "
            f"its directory holds {len(infos)}"
        )
    entries = [canonical(info, what) for info in infos]
    total = 0
    for entry in entries:
        _check_kind(entry, f"{what} entry {shown(entry.name)}")
        total += entry.size
        if total > max_unpacked:
            raise InvalidSubmission(f"{what} unpacks to more than {max_unpacked / MIB:g} MiB")
    _check_names(entries, what)
    spans = _check_layout(data, entries, end.cd_offset, what)
    listing = Listing(archive=archive, entries=entries, unpacked_bytes=total)
    if verify:
        for entry in listing.files():
            _verify(data, entry, spans[entry.name], what)
    return listing


def read_chunks(archive: zipfile.ZipFile, entry: Entry, what: str = "archive") -> Iterator[bytes]:
    """The entry's data in chunks of at most CHUNK bytes, never more than its declared size (zipfile
    then checks the CRC). Never `ZipExtFile.read()` without a size: it inflates all the compressed bytes
    in one call, however small the declared size. Corrupt data is InvalidSubmission."""
    label = f"{what} entry {shown(entry.name)}"
    remaining = entry.size
    try:
        with archive.open(entry.info) as source:
            while chunk := source.read(CHUNK):
                remaining -= len(chunk)
                if remaining < 0:
                    raise InvalidSubmission(f"{label} is larger than it claims")
                yield chunk
    except InvalidSubmission:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # bad CRC, truncated or garbled deflate data, a lying header
        raise InvalidSubmission(f"{label} cannot be read: {safe_text(exc, limit=200)}") from None
    if remaining:
        raise InvalidSubmission(f"{label} is shorter than it claims")
