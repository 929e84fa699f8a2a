"""Readers for bytes that come from outside: JSON, zip archives and ``.npz`` arrays with
caps on size, nesting and inflation, and files named by a manifest kept inside their
folder, so that a hostile file costs a bounded amount of memory and time and ends in
one typed error instead of RecursionError, MemoryError or a read outside the folder.

Standard library only at import (numpy loads when ``load_npz`` is called): the device
side uses it too.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from autoquant.errors import AutoquantError, first_line

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MAX_JSON_DEPTH",
    "ZipLimits",
    "check_zip",
    "json_depth_exceeds",
    "load_npz",
    "loads_json",
    "open_zip",
    "read_file_in",
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


# --- files a manifest names --------------------------------------------------------------


def read_file_in(folder: str | os.PathLike[str], name: Any, *, what: str, error: type[AutoquantError],
                 max_bytes: int) -> bytes:
    """The bytes of the regular file ``name`` directly inside ``folder``, at most ``max_bytes``.
    ``name`` comes from an untrusted manifest: it must be a plain file name (no folder, no
    ``..``, not absolute) and the file must not be a symlink (opened with O_NOFOLLOW), a
    FIFO or a device; anything else raises ``error`` naming ``what``."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or len(name) > 255 or os.path.isabs(name)):
        raise error(f"{what} names the file {short_repr(name)}: only a plain file name inside the folder is "
                    "allowed (no folders, '..' or absolute paths); the manifest is not one autoquant wrote")
    path = Path(folder) / name
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():  # pragma: no cover - Windows
        raise error(f"{what}: {path} is a symlink; a bundle's files are regular files inside its folder")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what}: {path} is missing; export it again") from None
    except OSError as exc:
        if path.is_symlink():
            raise error(f"{what}: {path} is a symlink; a bundle's files are regular files inside its "
                        "folder (copy the file in place of the link)") from None
        raise error(f"{what}: cannot open {path} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what}: {path} is not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{what}: {path} is {info.st_size:,} bytes, over the cap of {max_bytes:,}: it is not a "
                        "file autoquant writes")
        data = f.read(info.st_size + 1)  # read(n) allocates n at once: the size, not the cap
    if len(data) > info.st_size:
        raise error(f"{what}: {path} grew while it was read; read the bundle when nothing writes to it")
    return data


# --- .npz arrays --------------------------------------------------------------------------


def load_npz(data: bytes, *, where: str, error: type[AutoquantError],
             limits: ZipLimits = ZipLimits(max_members=4096, max_member_bytes=256 << 20, max_total_bytes=512 << 20),
             ) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (``np.savez``) held in ``data``, with no pickles: the zip
    directory's declared sizes are checked against ``limits`` before anything is inflated,
    every member is inflated to at most its cap, and each ``.npy`` header's dtype and
    shape must describe exactly the bytes that follow it. Anything else raises ``error``."""
    import numpy as np

    archive = open_zip(io.BytesIO(data), where=where, error=error)
    with archive:
        names = check_zip(archive, where=where, error=error, limits=limits)
        if len(set(names)) != len(names):
            raise error(f"{where} names a member twice: not an archive numpy writes")
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            if not name.endswith(".npy"):
                raise error(f"{where}: member {short_repr(name)} is not a .npy array")
            raw = read_zip_member(archive, name, max_bytes=limits.max_member_bytes, where=where, error=error)
            arrays[name[:-4]] = _npy(raw, where=f"{where}: member {short_repr(name)}", error=error)
    return arrays


def _npy(raw: bytes, *, where: str, error: type[AutoquantError]) -> np.ndarray:
    """One ``.npy`` array whose header must account for every byte, never an object array."""
    import numpy as np
    from numpy.lib import format as npformat

    stream = io.BytesIO(raw)
    try:
        version = npformat.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(stream, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(stream, max_header_size=10_000)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, TypeError, SyntaxError, struct.error, EOFError) as exc:
        raise error(f"{where} is not a .npy array ({first_line(exc)})") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise error(f"{where} holds {dtype} values: only plain numeric arrays are read (no pickles)")
    count = 1
    for n in shape:
        count *= int(n)
    body = len(raw) - stream.tell()
    if count * dtype.itemsize != body:
        raise error(f"{where} declares shape {short_repr(shape)} of {dtype} ({count * dtype.itemsize:,} bytes) "
                    f"over {body:,} bytes: the file is corrupt")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=stream.tell())
    array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    return array.copy()
