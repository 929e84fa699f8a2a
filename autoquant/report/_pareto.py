"""Non-dominated trials over two or more objectives."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autoquant.report._records import is_complete, value

__all__ = ["DEFAULT_OBJECTIVES", "pareto_front"]

DEFAULT_OBJECTIVES: tuple[tuple[str, str], ...] = (("latency_ratio", "min"), ("retention", "max"))


def check_objectives(objectives: Sequence[tuple[str, str]]) -> None:
    """Raise ValueError unless every objective is a (key, "min"|"max") pair."""
    if not objectives:
        raise ValueError("objectives is empty: give at least one (key, 'min'|'max') pair")
    for objective in objectives:
        if len(objective) != 2 or objective[1] not in ("min", "max"):
            raise ValueError(f"objective {objective!r} is not a (key, 'min'|'max') pair")


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(
    records: Iterable[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
) -> list[dict[str, Any]]:
    """The COMPLETE records, with every objective value present, that no other such record
    dominates; sorted by the first objective's value (ascending), then trial number.

    Records with identical objective values are all kept.
    """
    check_objectives(objectives)
    candidates: list[tuple[tuple[float, ...], Mapping[str, Any]]] = []
    for record in records:
        if not is_complete(record):
            continue
        values = [value(record, key) for key, _ in objectives]
        if any(v is None for v in values):
            continue
        signed = tuple(v if direction == "min" else -v  # type: ignore[operator]
                       for v, (_, direction) in zip(values, objectives))
        candidates.append((signed, record))
    front = [record for point, record in candidates
             if not any(_dominates(other, point) for other, _ in candidates)]

    def order(record: Mapping[str, Any]) -> tuple[float, float]:
        number = value(record, "number")
        first = value(record, objectives[0][0])
        return (first, number if number is not None else math.inf)  # type: ignore[return-value]

    return [dict(record) for record in sorted(front, key=order)]
