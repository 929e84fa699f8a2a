"""Files written so that a reader never sees half of one: every artifact autoquant
writes goes through here."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from autoquant.errors import UsageError

__all__ = ["atomic_write", "check_output_file", "check_output_folder", "sha256_file", "write_json"]


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a sibling ``.partial`` file renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (values JSON does not know written as strings), atomically."""
    return atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


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
