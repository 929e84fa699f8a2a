"""Settling: under a protocol with finitely many starts, a plan the sequential test leaves
undecided on a mean at or above the floor plays every start, and the exact retention decides."""

from __future__ import annotations

import pytest

from autoquant.compress import CompressionPlan, LayerSpec
from autoquant.evaluate import episode_seeds, onnx_actor, play_episodes, random_actor
from autoquant.policy import Protocol
from autoquant.search import ProblemSettings, SearchProblem

STARTS = 5  # a finite protocol of 5 starts; the run's seeds play 3 of them
PLAN = CompressionPlan({"fc1": LayerSpec(8, 8), "fc2": LayerSpec(8, 8), "fc3": LayerSpec(8, 8)})


def _problem(base: SearchProblem, **settings: object) -> SearchProblem:
    protocol = Protocol(starts=STARTS)
    bundle = base.bundle
    seeds = episode_seeds(0, 3, protocol)
    fp32 = play_episodes(onnx_actor(bundle, base.reference_onnx), bundle.env_id, seeds, protocol=protocol)
    return SearchProblem(
        bundle, base.table, base.target, states=base.states, held_out=base.held_out,
        reference_onnx=base.reference_onnx, settings=ProblemSettings(episodes=3, **settings),  # type: ignore[arg-type]
        episode_seeds=seeds, fp32_episodes=fp32,
        random_episodes=play_episodes(random_actor(bundle.action_space, 0), bundle.env_id, seeds, protocol=protocol),
        target_fingerprint="host-test")


def _play(problem: SearchProblem):  # type: ignore[no-untyped-def]
    return problem.evaluate(PLAN, lambda ratio, proxy: (True, None))


def test_an_undecided_plan_above_the_floor_is_judged_on_every_start(cartpole_problem) -> None:  # type: ignore[no-untyped-def]
    """CartPole's games under a finite protocol: every full-length game is one game, so the
    run's 3 seeds are too few distinct pairs to decide, and the plan's mean (1.0) would make
    it feasible. Settled, it plays all 5 starts and is decided on the exact retention."""
    problem = _problem(cartpole_problem)
    result = _play(problem)
    test, settled = result.reward["test"], result.reward["settled"]
    assert settled["search_test"]["episodes"] == 3 and settled["episodes"] == STARTS
    assert settled["search_test"]["retention"] >= problem.settings.min_retention
    assert test["exact"] and test["decision"] in ("above", "below") and test["low"] == test["high"]
    assert result.reward["episodes"] == STARTS and result.reward["exact"]
    seeds, fp32, random_play = problem.all_starts()
    assert seeds == episode_seeds(1, STARTS) and problem.all_starts()[1] is fp32  # played once
    assert result.retention == pytest.approx(test["retention"])
    assert result.feasible(problem.settings.min_retention) is (test["decision"] == "above")
    from autoquant.search._record import _settled

    assert _settled(result) == {"settled_from": settled["search_test"]["retention"], "settled_episodes": 3}
    # on the run's seeds alone it was undecided: its interval reached below the floor
    assert settled["search_test"]["low"] < problem.settings.min_retention <= settled["search_test"]["high"]


def test_a_plan_below_the_floor_and_an_infinite_protocol_do_not_settle(cartpole_problem) -> None:  # type: ignore[no-untyped-def]
    """An undecided mean below the floor is rejected on it (no episodes spent); seeded starts
    have no exact retention to settle on."""
    high = _problem(cartpole_problem, min_retention=1.5)  # no plan keeps 1.5
    result = _play(high)
    assert result.reward["test"]["decision"] != "above" and "settled" not in result.reward
    assert high.store.all_starts is None and result.reward["episodes"] == 3
    off = _play(_problem(cartpole_problem, settle=False))  # the old rule: undecided, judged on its mean
    assert off.reward["test"]["decision"] == "undecided" and "settled" not in off.reward
    plain = _play(cartpole_problem)  # seeded starts: each seed a game of its own
    assert "settled" not in plain.reward


def test_runs_made_before_settling_keep_their_rule() -> None:
    assert ProblemSettings.from_json({"episodes": 3}).settle is False
    assert ProblemSettings.from_json(ProblemSettings().to_json()).settle is True
    with pytest.raises(Exception, match="settle must be true or false"):
        ProblemSettings(settle="yes")  # type: ignore[arg-type]
