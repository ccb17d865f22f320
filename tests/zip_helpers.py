"""Zips written byte by byte, for tests that need what no zip library writes: any name bytes (NUL,
controls, non-UTF-8), declared sizes and CRCs that lie, and any End Of Central Directory field."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

UTF8_FLAG = 0x800
REGULAR = 0o100644 << 16


@dataclass
class Raw:
    name: bytes | str
    data: bytes = b""
    method: int | None = None  # 0 stored, 8 deflated (default: deflated, a folder stored)
    flags: int | None = None  # default: the UTF-8 flag when the name is not ASCII
    file_size: int | None = None  # declared uncompressed size (default: the true one)
    crc: int | None = None
    external_attr: int = REGULAR
    local_name: bytes | None = None  # a different name in the local header
    payload: bytes | None = None  # the stored bytes as given (default: `data` compressed by `method`)
    extra: bytes = field(default=b"")

    def encoded_name(self) -> bytes:
        return self.name.encode() if isinstance(self.name, str) else self.name


def _compress(data: bytes, method: int) -> bytes:
    if method == 0:
        return data
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def raw_zip(
    entries: list[Raw],
    *,
    comment: bytes = b"",
    entries_declared: int | None = None,
    entries_on_disk: int | None = None,
    cd_size: int | None = None,
    cd_offset: int | None = None,
    disk: int = 0,
    comment_length: int | None = None,
    trailing: bytes = b"",
    prefix: bytes = b"",
) -> bytes:
    out = bytearray(prefix)
    central = bytearray()
    for entry in entries:
        name = entry.encoded_name()
        method = entry.method if entry.method is not None else (0 if name.endswith(b"/") else 8)
        flags = entry.flags if entry.flags is not None else (0 if name.isascii() else UTF8_FLAG)
        payload = entry.payload if entry.payload is not None else _compress(entry.data, method)
        crc = entry.crc if entry.crc is not None else zlib.crc32(entry.data)
        size = entry.file_size if entry.file_size is not None else len(entry.data)
        offset = len(out) - len(prefix)
        local_name = entry.local_name if entry.local_name is not None else name
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0x21, crc, len(payload), size,
            len(local_name), 0,
        )  # fmt: skip
        out += local_name + payload
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", (3 << 8) | 20, 20, flags, method, 0, 0x21, crc,
            len(payload), size, len(name), len(entry.extra), 0, 0, 0, entry.external_attr, offset,
        )  # fmt: skip
        central += name + entry.extra
    start = len(out) - len(prefix)
    out += central
    count = len(entries)
    out += struct.pack(
        "<4s4H2LH",
        b"PK\x05\x06",
        disk,
        disk,
        count if entries_on_disk is None else entries_on_disk,
        count if entries_declared is None else entries_declared,
        len(central) if cd_size is None else cd_size,
        start if cd_offset is None else cd_offset,
        len(comment) if comment_length is None else comment_length,
    )
    return bytes(out) + comment + trailing
