"""Builders and checks shared by the report tests: trial records as the search writes them, PNG checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image

FLOOR = 0.95
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def trial(number: int, latency: float | None, retention: float | None, size: float | None = 0.3, *,
          state: str = "COMPLETE", summary: str | None = None, agent: str = "tpe",
          error: str | None = None) -> dict[str, Any]:
    """One trial record as the search writes it."""
    played = retention is not None and state == "COMPLETE"
    return {
        "number": number, "state": state, "summary": summary or f"plan {number}", "plan": {"layers": {}},
        "latency_ratio": latency, "retention": retention, "size_ratio": size,
        "played": played, "feasible": (retention >= FLOOR) if played else None,  # type: ignore[operator]
        "agent": agent, "wall_s": 1.0, "error": error,
    }


def assert_png(path: Path, min_width: int = 400) -> None:
    """A real PNG file: signature bytes, nonzero size, and an image matplotlib can read."""
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = matplotlib.image.imread(path).shape
    assert width >= min_width and height > 200 and channels in (3, 4)
