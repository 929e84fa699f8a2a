"""Exact hypervolume against hand-computed cases and a brute-force grid count."""

from __future__ import annotations

import numpy as np
import pytest

from autoquant.report import hypervolume


def grid_estimate(points: np.ndarray, reference: np.ndarray, cells: int) -> float:
    """Midpoint count over a regular grid between the ideal corner and the reference (all minimised)."""
    low = points.min(axis=0)
    axes = [np.linspace(lo, hi, cells, endpoint=False) + (hi - lo) / (2 * cells) for lo, hi in zip(low, reference)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(reference))
    covered = np.zeros(len(mesh), dtype=bool)
    for p in points:
        covered |= np.all(mesh >= p, axis=1)
    return float(covered.mean() * np.prod(reference - low))


def test_two_points_min_max_by_hand() -> None:
    # union of [0.5, 1.5] x [0.85, 1.0] and [0.8, 1.5] x [0.85, 1.2] = 0.15 + 0.245 - 0.105
    assert hypervolume([(0.5, 1.0), (0.8, 1.2)], (1.5, 0.85), ("min", "max")) == pytest.approx(0.29)


def test_points_that_do_not_beat_the_reference_add_nothing() -> None:
    base = hypervolume([(0.5, 1.0)], (1.5, 0.85), ("min", "max"))
    assert base == pytest.approx(0.15)
    more = [(0.5, 1.0), (1.5, 2.0), (1.6, 2.0), (0.1, 0.85), (0.1, 0.5), (0.6, 0.99)]  # on/behind ref or dominated
    assert hypervolume(more, (1.5, 0.85), ("min", "max")) == pytest.approx(base)
    assert hypervolume([], (1.5, 0.85), ("min", "max")) == 0.0


def test_three_dimensions_by_hand() -> None:
    assert hypervolume([(1, 1, 1)], (2, 3, 4), ("min", "min", "min")) == pytest.approx(6.0)
    # boxes [0,2]x[1,2]x[0,2] (4) and [1,2]x[0,2]x[1,2] (2) overlap in [1,2]x[1,2]x[1,2] (1)
    assert hypervolume([(0, 1, 0), (1, 0, 1)], (2, 2, 2), ("min", "min", "min")) == pytest.approx(5.0)
    # same with the middle objective maximised
    assert hypervolume([(0, -1, 0), (1, 0, 1)], (2, -2, 2), ("min", "max", "min")) == pytest.approx(5.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_three_dimensions_agree_with_a_grid_within_one_percent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.uniform(0.0, 1.0, size=(12, 3))
    reference = np.array([1.1, 1.2, 1.05])
    exact = hypervolume(points, reference, ("min", "min", "min"))
    assert exact == pytest.approx(grid_estimate(points, reference, 128), rel=0.01)
    # the same set as (latency min, retention max, size min)
    flipped = points * np.array([1, -1, 1])
    assert hypervolume(flipped, reference * np.array([1, -1, 1]), ("min", "max", "min")) == pytest.approx(exact)


def test_points_on_a_grid_are_counted_exactly() -> None:
    rng = np.random.default_rng(7)
    points = rng.integers(0, 10, size=(15, 3)) / 10       # corners on a 0.1 grid
    reference = np.array([1.0, 1.0, 1.0])
    low = points.min(axis=0)
    cells = np.rint((reference - low) * 10).astype(int)
    axes = [lo + (np.arange(n) + 0.5) / 10 for lo, n in zip(low, cells)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    covered = np.zeros(len(mesh), dtype=bool)
    for p in points:
        covered |= np.all(mesh >= p, axis=1)
    assert hypervolume(points, reference, ("min",) * 3) == pytest.approx(covered.sum() * 1e-3, abs=1e-9)


def test_two_dimensions_agree_with_a_grid() -> None:
    rng = np.random.default_rng(11)
    points = rng.uniform(0.0, 1.0, size=(30, 2))
    reference = np.array([1.0, 1.0])
    assert hypervolume(points, reference, ("min", "min")) == pytest.approx(
        grid_estimate(points, reference, 500), rel=0.005)


def test_wrong_shapes_and_directions_are_refused() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        hypervolume([(0.1, 0.2, 0.3)], (1.0, 1.0), ("min", "max"))
    with pytest.raises(ValueError, match="min"):
        hypervolume([(0.1, 0.2)], (1.0, 1.0), ("min", "up"))
    with pytest.raises(ValueError, match="not a number"):
        hypervolume([(0.1, None)], (1.0, 1.0), ("min", "max"))  # type: ignore[list-item]
