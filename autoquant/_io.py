"""Files written so that a reader never sees half of one: every artifact autoquant
writes goes through here."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
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


def _writable_dir(folder: Path, option: str, path: Path) -> None:
    """The nearest existing ancestor of ``folder`` must be a folder we may write in."""
    ancestor = folder
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, not a folder: choose a path under a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {ancestor} (permission denied): choose another path")


def check_output_folder(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is an existing file, not a folder: choose another path")
    _writable_dir(path, option, path)


def check_output_file(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output file that is a folder or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: the file is not writable: choose another path")
    _writable_dir(path.parent, option, path)
