"""Exact hypervolume of a point set with respect to a reference point."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["hypervolume"]


def hypervolume(
    points: Iterable[Sequence[float]],
    reference: Sequence[float],
    directions: Sequence[str],
) -> float:
    """Volume of the region that the points dominate and that dominates ``reference``.

    ``directions`` holds "min" or "max" per objective. A point that does not strictly
    beat the reference in every objective contributes nothing. Exact for any number of
    objectives (2-D sweep, higher dimensions sliced along the last axis); the cost grows
    as n**(d-1) log n, which is what 2 and 3 objectives over a few thousand trials need.
    """
    if not directions or any(d not in ("min", "max") for d in directions):
        raise ValueError(f"directions must be a non-empty sequence of 'min'/'max', got {list(directions)!r}")
    dims = len(directions)
    signs = [1.0 if d == "min" else -1.0 for d in directions]
    ref = _signed(reference, signs, dims, "reference")
    inside = []
    for point in points:
        signed = _signed(point, signs, dims, "point")
        if all(p < r for p, r in zip(signed, ref)):
            inside.append(signed)
    return _volume(inside, ref)


def _signed(point: Sequence[float], signs: Sequence[float], dims: int, what: str) -> tuple[float, ...]:
    if len(point) != dims:
        raise ValueError(f"{what} {tuple(point)!r} has {len(point)} values, expected {dims} (one per direction)")
    try:
        signed = tuple(s * float(v) for s, v in zip(signs, point))
    except (TypeError, ValueError):
        raise ValueError(f"{what} {tuple(point)!r} holds a value that is not a number") from None
    if not all(math.isfinite(v) for v in signed):
        raise ValueError(f"{what} {tuple(point)!r} holds a value that is not finite")
    return signed


def _volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Hypervolume of minimised points that all strictly dominate ``ref``."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        return _area(points, ref)
    ordered = sorted(points, key=lambda p: p[-1])
    total = 0.0
    for i, point in enumerate(ordered):
        upper = ordered[i + 1][-1] if i + 1 < len(ordered) else ref[-1]
        if upper > point[-1]:
            total += (upper - point[-1]) * _volume([p[:-1] for p in ordered[: i + 1]], ref[:-1])
    return total


def _area(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """2-D: sweep in x, each point adds the strip between its y and the best y so far."""
    area, bound = 0.0, ref[1]
    for x, y in sorted(points):
        if y < bound:
            area += (ref[0] - x) * (bound - y)
            bound = y
    return area
