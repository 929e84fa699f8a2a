"""Files written so that a reader never sees half of one: every artifact autoquant
writes goes through here."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from autoquant.errors import UsageError

__all__ = ["atomic_write", "check_output_file", "check_output_folder", "sha256_file", "write_json"]


def _inside(path: Path, folder: Path) -> None:
    """``path``'s folder is ``folder`` or lies under it once links are resolved, and no folder
    between them is a symlink: a planted link never steers a write out of a run folder."""
    root = folder.resolve()
    parent = path.parent
    if parent.resolve() != root and root not in parent.resolve().parents:
        raise UsageError(f"{path}: its folder resolves outside {folder} (a symlink?): refusing to write there; "
                         "remove the link")
    probe = parent
    while probe.resolve() != root and probe != probe.parent:
        if probe.is_symlink():
            raise UsageError(f"{probe} is a symlink inside {folder}: refusing to write through it; remove the link")
        probe = probe.parent


def atomic_write(path: str | Path, data: bytes, *, inside: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` through a new sibling temporary file renamed into place.

    The temporary file is created exclusively and without following symlinks, and the
    rename replaces a symlink at ``path`` instead of writing through it: nothing planted
    next to ``path`` can redirect the write. With ``inside``, ``path`` must also lie inside
    that folder. A failed write (a full disk) leaves nothing behind and says so in one line."""
    path = Path(path)
    if inside is not None:
        _inside(path, Path(inside))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror}): choose a folder you can write in") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise UsageError(f"no space left on the device writing {path}: nothing was written; free some space "
                             "and run the command again") from None
        raise UsageError(f"cannot write {path} ({exc.strerror})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, data: Any, *, inside: str | Path | None = None) -> Path:
    """``data`` as indented JSON (values JSON does not know written as strings), atomically."""
    return atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode(), inside=inside)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Bytes that autoquant adds to the name of what it writes: a temporary sibling
# (".NAME.partial-PID", ".NAME.PID.HEX.partial") beside an output, and the files a run
# folder holds (models/KEY.onnx written through its own temporary name) under it.
_SIBLING_ROOM = 40
_CONTENT_ROOM = 128


def _show(path: str | os.PathLike[str]) -> str:
    """A path for a one-line message: its bytes as text (undecodable ones escaped), cut to 80 characters."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return text if len(text) <= 80 else f"{text[:38]}...{text[-38:]}"


def _lexists(path: Path) -> bool:
    """Whether something is at ``path``; a name too long to look up is not there."""
    try:
        os.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError, AttributeError):  # not POSIX, or the file system does not say
        return default


def _check_name(path: Path, option: str, content_room: int) -> Path:
    """``path`` is UTF-8 text whose names and length fit the file system, with room for what
    autoquant puts beside and under it; returns the nearest existing ancestor."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option} {_show(path)}: the name is not UTF-8 text (byte 0x{raw[exc.start]:02x}): "
                         "run.json, the study's database URL and the reports record it as text; choose a UTF-8 "
                         "name") from None
    ancestor = path
    while not _lexists(ancestor) and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    name_max = _limit(ancestor if ancestor.is_dir() else ancestor.parent, "PC_NAME_MAX", 255) - _SIBLING_ROOM
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise UsageError(f"{option} {_show(path)}: the name {_show(part)} is {len(os.fsencode(part))} bytes long; "
                             f"names there may be at most {name_max} bytes (the file system's "
                             f"{name_max + _SIBLING_ROOM}, less room for temporary names): choose a shorter name")
    path_max = _limit(ancestor if ancestor.is_dir() else ancestor.parent, "PC_PATH_MAX", 4096) - content_room
    length = len(os.fsencode(os.path.abspath(path)))
    if length > path_max:
        raise UsageError(f"{option} {_show(path)}: the path is {length:,} bytes long; paths there may be at most "
                         f"{path_max:,} bytes (the file system's {path_max + content_room:,}, less room for what "
                         "autoquant writes under it): choose a shorter path")
    return ancestor


def _writable_dir(ancestor: Path, option: str, path: Path) -> None:
    """The nearest existing ancestor of an output must be a folder in which something can be
    created: tried for real (and removed), since root passes every permission check and
    /proc or /sys refuse only when asked."""
    if not ancestor.is_dir():
        raise UsageError(f"{option} {_show(path)}: {_show(ancestor)} is a file, not a folder: choose a path under a "
                         "folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {_show(path)}: cannot write in {_show(ancestor)} (permission denied): choose "
                         "another path")
    try:
        probe = tempfile.mkdtemp(prefix=".autoquant-probe-", dir=ancestor)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UsageError(f"{option} {_show(path)}: no space left on the device of {_show(ancestor)}: free some "
                             "space or choose another path") from None
        raise UsageError(f"{option} {_show(path)}: nothing can be created in {_show(ancestor)} ({exc.strerror}): it "
                         "is read-only, or a pseudo file system such as /proc or /sys; choose another path") from None
    with contextlib.suppress(OSError):
        os.rmdir(probe)


def check_output_folder(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created: a name
    that is not UTF-8 or too long for the file system, a folder nothing can be written in."""
    path = Path(path)
    ancestor = _check_name(path, option, _CONTENT_ROOM)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {_show(path)} is an existing file, not a folder: choose another path")
    _writable_dir(ancestor, option, path)


def check_output_file(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output file that is a folder or cannot be written (see
    ``check_output_folder``)."""
    path = Path(path)
    ancestor = _check_name(path, option, _SIBLING_ROOM)
    if path.is_dir():
        raise UsageError(f"{option} {_show(path)} is a folder: give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {_show(path)}: the file is not writable: choose another path")
    _writable_dir(ancestor if ancestor != path else path.parent, option, path)
