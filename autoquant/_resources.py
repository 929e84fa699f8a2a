"""Where the shipped TOML folders (hw_targets/, search_spaces/) are: the checkout
this package runs from, or the share/ folder a wheel installs them into."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["resource_dir"]


def resource_dir(name: str) -> Path:
    checkout = Path(__file__).resolve().parents[1] / name
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "autoquant" / name
