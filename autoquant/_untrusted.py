"""Readers for bytes that come from outside: JSON and zip archives with caps on size,
nesting and inflation, so that a hostile file costs a bounded amount of memory and
time and ends in one typed error instead of RecursionError or MemoryError.

Standard library only: the device side uses it too.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Any

from autoquant.errors import AutoquantError, first_line

__all__ = [
    "MAX_JSON_DEPTH",
    "ZipLimits",
    "check_zip",
    "json_depth_exceeds",
    "loads_json",
    "open_zip",
    "read_zip_member",
    "short_repr",
]

MAX_JSON_DEPTH = 64  # every file autoquant reads nests far less

# A JSON string (escapes included) and the brackets outside strings.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``max_depth`` (brackets inside
    strings do not count). Linear in the length, no recursion."""
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def loads_json(data: bytes | str, *, what: str, error: type[AutoquantError],
               max_bytes: int = 16 << 20, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted input: at most ``max_bytes`` and ``max_depth`` levels;
    anything else raises ``error`` naming ``what``."""
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data):,} bytes, over the cap of {max_bytes:,}: it is not a file "
                    "autoquant writes or reads")
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
        except (UnicodeDecodeError, LookupError) as exc:
            raise error(f"{what} is not JSON text ({first_line(exc)})") from None
    else:
        text = data
    if json_depth_exceeds(text, max_depth):
        raise error(f"{what} nests deeper than {max_depth} levels: it is not a file autoquant writes or reads")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. an integer of 5000 digits
        raise error(f"{what} is not JSON autoquant can read ({first_line(exc)})") from None


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: untrusted values go into one-line errors."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _zip_read_errors() -> tuple[type[BaseException], ...]:
    # RuntimeError: encrypted member; NotImplementedError: unknown compression method.
    errors: list[type[BaseException]] = [zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                                         NotImplementedError, RuntimeError]
    try:
        import lzma

        errors.append(lzma.LZMAError)
    except ImportError:  # pragma: no cover - Python built without lzma
        pass
    return tuple(errors)


_ZIP_READ_ERRORS = _zip_read_errors()


@dataclass(frozen=True)
class ZipLimits:
    """Caps on a zip archive, checked on its directory before anything is inflated.

    A member (or the whole archive) that inflates to more than ``ratio_floor`` bytes
    must not inflate more than ``max_ratio`` times: weights do not compress like that,
    zip bombs do.
    """

    max_members: int = 10_000
    max_member_bytes: int = 2 << 30
    max_total_bytes: int = 4 << 30
    max_ratio: float = 100.0
    ratio_floor: int = 16 << 20


def _inflation_error(size: int, packed: int, limits: ZipLimits) -> bool:
    return size > limits.ratio_floor and size > limits.max_ratio * max(packed, 1)


def open_zip(source: str | os.PathLike[str] | IO[bytes], *, where: str,
             error: type[AutoquantError]) -> zipfile.ZipFile:
    """``zipfile.ZipFile(source)``; an unreadable archive raises ``error``."""
    try:
        return zipfile.ZipFile(source)
    except (*_ZIP_READ_ERRORS, struct.error) as exc:
        raise error(f"{where} is not a readable zip archive ({first_line(exc)}); is it truncated?") from None


def check_zip(archive: zipfile.ZipFile, *, where: str, error: type[AutoquantError],
              limits: ZipLimits = ZipLimits(), test_crc: bool = False) -> list[str]:
    """The member names of ``archive``, after checking the sizes its directory declares
    against ``limits`` (nothing is inflated before that); with ``test_crc``, then every
    member's checksum (inflating each, within the caps just checked)."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise error(f"{where} holds {len(infos):,} members, over the cap of {limits.max_members:,}: "
                    "not a policy archive")
    total = packed = 0
    for info in infos:
        if info.file_size > limits.max_member_bytes or _inflation_error(info.file_size, info.compress_size,
                                                                        limits):
            raise error(f"{where}: member {info.filename!r} inflates from {info.compress_size:,} to "
                        f"{info.file_size:,} bytes, beyond the caps on size ({limits.max_member_bytes:,}) "
                        f"or ratio ({limits.max_ratio:.0f}x): refused as a zip bomb")
        total += info.file_size
        packed += info.compress_size
    if total > limits.max_total_bytes or _inflation_error(total, packed, limits):
        raise error(f"{where} inflates from {packed:,} to {total:,} bytes, beyond the caps on size "
                    f"({limits.max_total_bytes:,}) or ratio ({limits.max_ratio:.0f}x): refused as a zip bomb")
    if test_crc:
        try:
            bad = archive.testzip()
        except _ZIP_READ_ERRORS as exc:
            raise error(f"{where} cannot be read ({first_line(exc)}); the file is corrupt") from None
        if bad is not None:
            raise error(f"{where}: member {bad!r} fails its CRC check; the file is corrupt")
    return [info.filename for info in infos]


def read_zip_member(archive: zipfile.ZipFile, name: str, *, max_bytes: int, where: str,
                    error: type[AutoquantError]) -> bytes:
    """Member ``name``, inflated to at most ``max_bytes`` whatever its directory entry
    declares; a missing, oversized, corrupt or encrypted member raises ``error``."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise error(f"{where} has no member {name!r}") from None
    if info.file_size > max_bytes:
        raise error(f"{where}: member {name!r} is {info.file_size:,} bytes, over the cap of {max_bytes:,}")
    try:
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)
    except _ZIP_READ_ERRORS as exc:
        raise error(f"{where}: member {name!r} cannot be read ({first_line(exc)}); the file is corrupt") from None
    if len(data) > max_bytes:
        raise error(f"{where}: member {name!r} inflates past the cap of {max_bytes:,} bytes")
    return data
