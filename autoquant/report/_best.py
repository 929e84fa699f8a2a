"""The best feasible trial, its progress over the search, and when a target was reached."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from autoquant.report._records import by_number, is_feasible, value

__all__ = ["FP32_RATIO", "best_feasible", "best_so_far", "trials_to_reach"]

FP32_RATIO = 1.0  # the uncompressed policy's latency (and size) ratio: the point every plan must beat


def best_feasible(records: Iterable[Mapping[str, Any]], key: str = "latency_ratio") -> dict[str, Any] | None:
    """The COMPLETE, played, feasible record with the lowest ``key``; ties go to higher
    retention, then smaller size ratio, then the earlier trial. None when no record qualifies.

    ``key`` is a ratio to fp32, and fp32 itself (ratio 1) is always a candidate: a plan at or
    above 1 never wins, and when nothing beats fp32 the answer is None (keep fp32)."""
    candidates = [r for r in records if is_feasible(r) and value(r, key) is not None
                  and value(r, key) < FP32_RATIO]  # type: ignore[operator]
    if not candidates:
        return None

    def order(record: Mapping[str, Any]) -> tuple[float, float, float, float]:
        retention = value(record, "retention")
        size = value(record, "size_ratio")
        number = value(record, "number")
        return (value(record, key),  # type: ignore[return-value]
                -retention if retention is not None else math.inf,
                size if size is not None else math.inf,
                number if number is not None else math.inf)

    return dict(min(candidates, key=order))


def best_so_far(records: Iterable[Mapping[str, Any]], key: str = "latency_ratio") -> list[float | None]:
    """One entry per counted record in trial-number order: the lowest feasible ``key`` seen up
    to and including that trial, None before the first feasible one. Records that used no
    budget (``"counted": false``: repeats of a plan measured before, interrupted trials)
    are left out: they are not trials a search spent."""
    best: float | None = None
    out: list[float | None] = []
    for record in by_number(records):
        if record.get("counted") is False:
            continue
        current = value(record, key)
        if is_feasible(record) and current is not None and current < FP32_RATIO and (best is None or current < best):
            best = current
        out.append(best)
    return out


def trials_to_reach(records: Iterable[Mapping[str, Any]], target_ratio: float, *,
                    key: str = "latency_ratio") -> int | None:
    """How many trials, counted 1-based in trial-number order (failed ones included, repeats
    and interrupted ones not: they used no budget), until the best feasible ``key`` is <=
    ``target_ratio``; None if it never gets there."""
    for count, best in enumerate(best_so_far(records, key), start=1):
        if best is not None and best <= target_ratio:
            return count
    return None
