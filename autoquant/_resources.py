"""Where the shipped TOML folders (hw_targets/, search_spaces/) are: the checkout
this package runs from, or the share/ folder a wheel installs them into."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["find_toml", "resource_dir", "shipped_tomls"]


def resource_dir(name: str) -> Path:
    checkout = Path(__file__).resolve().parents[1] / name
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "autoquant" / name


def shipped_tomls(name: str) -> dict[str, Path]:
    """The TOML files of a shipped folder, by stem."""
    folder = resource_dir(name)
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def find_toml(name_or_path: str, folder: str, *, what: str) -> Path:
    """A TOML file named in the shipped ``folder``, or given as a path; ``ValueError``
    (with the known names) otherwise. Callers raise it as their own error."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    known = shipped_tomls(folder)
    if name_or_path not in known:
        raise ValueError(f"unknown {what} {name_or_path!r}: use one of {sorted(known)} or a .toml path")
    return known[name_or_path]
