"""Files written so that a reader never sees half of one: every artifact autoquant
writes goes through here."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "sha256_file", "write_json"]


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
