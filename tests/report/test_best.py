"""Best feasible trial, its progress, and trials to a target."""

from __future__ import annotations

from autoquant.report import best_feasible, best_so_far, trials_to_reach
from tests.report.helpers import trial


def test_best_feasible_is_the_fastest_trial_that_met_the_floor(records) -> None:  # type: ignore[no-untyped-def]
    best = best_feasible(records)
    assert best is not None and best["number"] == 6     # 0.50, 0.40 and 0.60 are faster but infeasible / unplayed


def test_ties_go_to_higher_retention_then_smaller_size() -> None:
    records = [trial(0, 0.7, 0.96, 0.3), trial(1, 0.7, 0.99, 0.3), trial(2, 0.7, 0.99, 0.2), trial(3, 0.8, 1.0, 0.1)]
    assert best_feasible(records)["number"] == 2  # type: ignore[index]


def test_no_feasible_trial_gives_none() -> None:
    records = [trial(0, 0.5, 0.5), trial(1, 0.4, None), trial(2, None, None, state="FAIL")]
    assert best_feasible(records) is None
    assert best_so_far(records) == [None, None, None]
    assert trials_to_reach(records, 10.0) is None


def test_best_so_far_follows_trial_number_order(records) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(reversed(records))
    assert best_so_far(shuffled) == [0.90, 0.70, 0.70, 0.70, 0.70, 0.70, 0.65, 0.65, 0.65, 0.65, 0.65]


def test_trials_to_reach_counts_every_trial_in_number_order(records) -> None:  # type: ignore[no-untyped-def]
    assert trials_to_reach(records, 0.9) == 1
    assert trials_to_reach(records, 0.70) == 2
    assert trials_to_reach(records, 0.66) == 7          # trial 6 is the 7th record, failures counted
    assert trials_to_reach(records, 0.64) is None


def test_a_plan_slower_than_fp32_is_never_the_best() -> None:
    """fp32 is always a candidate: a feasible plan at or above its latency loses to it."""
    records = [trial(0, 1.16, 1.0), trial(1, 1.0, 0.99)]
    assert best_feasible(records) is None
    assert best_so_far(records) == [None, None]
    assert best_feasible([*records, trial(2, 0.97, 0.99)])["number"] == 2  # type: ignore[index]
