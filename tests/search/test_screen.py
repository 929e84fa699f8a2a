"""The screen that decides which trials play: learnt from the run's own played trials."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant.search import SearchRunner, TrialResult, load_space, open_study
from autoquant.search._study import ScreenFit


def _result(key: str, proxy: float | None, retention: float | None = None, latency: float = 0.5) -> TrialResult:
    played = retention is not None
    return TrialResult(key=key, summary=key, latency_ratio=latency, latency={}, size_bytes=1, size_ratio=0.5,
                       macs_ratio=1.0, fidelity={}, fidelity_score=0.5, kernels={}, played=played,
                       retention=retention, proxy=proxy)


@pytest.fixture
def runner(cartpole_problem, tmp_path: Path) -> SearchRunner:  # type: ignore[no-untyped-def]
    space = load_space("joint", cartpole_problem.table)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", "single", None)
    return SearchRunner(study, space, cartpole_problem, n_trials=10, agent="tpe")


def test_until_five_played_trials_the_floor_screens(runner) -> None:  # type: ignore[no-untyped-def]
    floor = runner.settings.fidelity_floor
    assert runner.screen(floor - 0.01)[0] is False
    assert runner.screen(floor)[0] is True
    for i, (proxy, retention) in enumerate([(0.6, 0.1), (0.7, 0.3), (0.8, 0.5), (0.9, 0.8)]):
        runner._remember(_result(f"p{i}", proxy, retention, latency=0.9))
    assert runner.screen_fit() is None  # four played trials: not yet


def test_the_fit_screens_what_it_predicts_below_the_floor(runner) -> None:  # type: ignore[no-untyped-def]
    pairs = [(0.55, 0.0), (0.6, 0.15), (0.7, 0.4), (0.8, 0.65), (0.9, 0.9), (0.95, 1.0)]
    for i, (proxy, retention) in enumerate(pairs):
        runner._remember(_result(f"p{i}", proxy, retention, latency=0.9))
    fit = runner.screen_fit()
    assert fit is not None and fit.n == 6 and fit.slope > 0
    play, reason = runner.screen(0.58)
    assert play is False and "predicts retention at most" in reason  # type: ignore[operator]
    assert runner.screen(0.93)[0] is True  # near the top of what played: the interval reaches the floor
    assert runner.screen(0.99)[0] is True  # above every proxy played: always tried
    floor = runner.settings.min_retention
    for proxy in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95):
        assert runner.screen(proxy)[0] is (fit.upper(proxy) >= floor)
    # a trial screened out by the fit gets its predicted shortfall as the constraint
    low = _result("q", 0.58)
    assert runner._violation(low) == pytest.approx(runner.settings.min_retention - (fit.intercept + fit.slope * 0.58))
    assert runner._violation(_result("r", None)) == 0.5  # skipped for latency, proxy never measured


def test_a_fit_without_a_positive_slope_is_not_used(runner) -> None:  # type: ignore[no-untyped-def]
    for i, proxy in enumerate([0.6, 0.65, 0.7, 0.75, 0.8]):
        runner._remember(_result(f"p{i}", proxy, 0.0, latency=0.9))  # every played trial failed alike
    assert runner.screen_fit() is None
    assert runner.screen(0.9)[0] is True  # back to the floor: nothing learnt says 0.9 fails


def test_prediction_interval_widens_away_from_the_data() -> None:
    fit = ScreenFit.of([(0.5, 0.1), (0.6, 0.3), (0.7, 0.4), (0.8, 0.7), (0.9, 0.8)])
    assert fit is not None
    centre = fit.intercept + fit.slope * fit.mean_x
    assert fit.upper(fit.mean_x) - centre < fit.upper(0.2) - (fit.intercept + fit.slope * 0.2)
    assert ScreenFit.of([(0.7, 0.1)] * 5) is None  # no spread in the proxy
