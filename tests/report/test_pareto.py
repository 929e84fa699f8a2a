"""Pareto fronts over two and three objectives."""

from __future__ import annotations

import pytest

from autoquant.report import pareto_front
from tests.report.helpers import trial


def test_front_keeps_non_dominated_played_trials_sorted_by_latency(records) -> None:  # type: ignore[no-untyped-def]
    front = pareto_front(records)
    assert [r["number"] for r in front] == [10, 3, 6, 1, 8, 0]
    assert 2 not in [r["number"] for r in front]         # 0.75/0.97 is beaten by 0.70/0.98
    assert 5 not in [r["number"] for r in front]         # not played: no retention
    assert [r["latency_ratio"] for r in front] == sorted(r["latency_ratio"] for r in front)


def test_failed_and_running_trials_never_enter_the_front() -> None:
    records = [trial(0, 0.9, 0.99), trial(1, 0.1, 1.5, state="FAIL"), trial(2, 0.1, 1.5, state="RUNNING")]
    assert [r["number"] for r in pareto_front(records)] == [0]


def test_three_objectives_keep_a_trial_that_only_wins_on_size() -> None:
    records = [trial(0, 0.70, 0.98, 0.30), trial(1, 0.75, 0.97, 0.10), trial(2, 0.75, 0.97, 0.35),
               trial(3, 0.50, 0.90, 0.40), trial(4, 0.80, 0.96, None)]
    two = pareto_front(records)
    three = pareto_front(records, (("latency_ratio", "min"), ("retention", "max"), ("size_ratio", "min")))
    assert [r["number"] for r in two] == [3, 0]
    assert [r["number"] for r in three] == [3, 0, 1]     # 1 is smaller; 2 is dominated by 1; 4 has no size


def test_equal_points_are_both_kept_and_order_follows_the_first_objective() -> None:
    records = [trial(5, 0.6, 0.97), trial(2, 0.6, 0.97), trial(3, 0.9, 0.99)]
    front = pareto_front(records, (("retention", "max"), ("latency_ratio", "min")))
    assert [r["number"] for r in front] == [2, 5, 3]


def test_bad_direction_is_refused() -> None:
    with pytest.raises(ValueError, match="min"):
        pareto_front([], (("latency_ratio", "down"),))
