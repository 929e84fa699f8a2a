"""Reading plain trial records: states, measured values, trial order."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["by_number", "is_complete", "is_feasible", "is_played", "value"]


def value(record: Mapping[str, Any], key: str) -> float | None:
    """``record[key]`` as a float, or None when missing, None, not a number or not finite."""
    raw = record.get(key)
    if raw is None or isinstance(raw, bool):
        return None
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def is_complete(record: Mapping[str, Any]) -> bool:
    """The trial finished (state COMPLETE)."""
    return str(record.get("state", "")).upper() == "COMPLETE"


def is_played(record: Mapping[str, Any]) -> bool:
    """The trial finished and its episodes were played (a retention was measured)."""
    return is_complete(record) and bool(record.get("played", True)) and value(record, "retention") is not None


def is_feasible(record: Mapping[str, Any]) -> bool:
    """The trial finished, was played, and its record says it met the retention floor."""
    return is_played(record) and record.get("feasible") is True


def by_number(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records in trial-number order; records without a number keep their place after the numbered ones."""
    indexed = list(enumerate(records))

    def order(item: tuple[int, Mapping[str, Any]]) -> tuple[float, int]:
        number = value(item[1], "number")
        return (number if number is not None else math.inf, item[0])

    return [record for _, record in sorted(indexed, key=order)]
