"""The sequential retention test: real CartPole episodes, stopped as soon as the answer is clear."""

from __future__ import annotations

import math

import pytest

from autoquant.compress import CompressionPlan, LayerSpec, compress, export_reference
from autoquant.evaluate import (
    ABOVE,
    BELOW,
    MIN_DISTINCT,
    UNDECIDED,
    EpisodeStats,
    RetentionTest,
    episode_seeds,
    onnx_actor,
    paired_comparison,
    play_episodes,
    random_actor,
)
from autoquant.policy import Protocol

BROKEN = CompressionPlan({"fc1": LayerSpec(2, 8, 0.75), "fc2": LayerSpec(2, 8, 0.75), "fc3": LayerSpec(2, 8)})
KEPT = CompressionPlan({"fc1": LayerSpec(8, 8), "fc2": LayerSpec(8, 8), "fc3": LayerSpec(8, 8)})  # GPTQ int8: 500 a game


@pytest.fixture(scope="module")
def cartpole_test(cartpole_dqn):  # type: ignore[no-untyped-def]
    seeds = episode_seeds(0, 10)
    fp32 = play_episodes(onnx_actor(cartpole_dqn, export_reference(cartpole_dqn)), "CartPole-v1", seeds)
    floor = play_episodes(random_actor(cartpole_dqn.action_space, 0), "CartPole-v1", seeds)
    return seeds, RetentionTest(fp32, floor, 0.95)


def _play(bundle, states, plan, seeds, test):  # type: ignore[no-untyped-def]
    model = compress(bundle, plan, states, verify_kernels=False).onnx
    return play_episodes(onnx_actor(bundle, model), "CartPole-v1", seeds, n_envs=2, stop=test.stop)


def test_a_plan_that_clearly_fails_stops_after_three_games(cartpole_dqn, cartpole_states, cartpole_test) -> None:  # type: ignore[no-untyped-def]
    seeds, test = cartpole_test
    episodes = _play(cartpole_dqn, cartpole_states.states, BROKEN, seeds, test)
    decided = test.result(episodes)
    assert decided["decision"] == BELOW
    assert decided["episodes"] == len(episodes.seeds) == MIN_DISTINCT == 3  # of a budget of 10
    assert decided["distinct_pairs"] == 3 and not decided["exact"]  # CartPole: every seed a start of its own
    assert decided["high"] < 0.95 and decided["retention"] < 0.1


@pytest.mark.slow
def test_a_plan_that_clearly_passes_stops_after_three_games(cartpole_dqn, cartpole_states, cartpole_test) -> None:  # type: ignore[no-untyped-def]
    seeds, test = cartpole_test
    episodes = _play(cartpole_dqn, cartpole_states.states, KEPT, seeds, test)
    decided = test.result(episodes)
    assert decided["decision"] == ABOVE
    assert decided["episodes"] == 3
    assert decided["low"] >= 0.95


def test_without_a_stop_every_seed_is_played_and_retention_is_the_paired_one(cartpole_dqn, cartpole_states, cartpole_test) -> None:  # type: ignore[no-untyped-def]
    seeds, test = cartpole_test
    model = compress(cartpole_dqn, BROKEN, cartpole_states.states, verify_kernels=False).onnx
    episodes = play_episodes(onnx_actor(cartpole_dqn, model), "CartPole-v1", seeds, n_envs=2)
    assert episodes.seeds == tuple(seeds)
    decided = test.result(episodes)
    assert decided["episodes"] == 10
    assert decided["retention"] == pytest.approx(paired_comparison(episodes, test.reference, test.random)["retention"])


def _stats(rewards: list[float], games: list[int] | None = None, protocol: Protocol = Protocol()) -> EpisodeStats:
    return EpisodeStats(seeds=tuple(range(len(rewards))), rewards=tuple(rewards), lengths=(1,) * len(rewards),
                        steps_per_s=1.0, games=tuple(games) if games is not None else None, protocol=protocol)


def test_noisy_differences_stay_undecided_and_the_interval_is_bonferroni_wide() -> None:
    fp32, random = _stats([10.0] * 6), _stats([0.0] * 6)
    test = RetentionTest(fp32, random, 0.9, confidence=0.95)
    assert test.looks == 5  # episodes 2..6
    played = _stats([12.0, 6.0, 11.0, 7.0, 10.0, 9.0])  # differences 2, -4, 1, -3, 0, -1
    assert test.decide(played) is None
    found = test.interval(played)
    assert found["retention"] == pytest.approx(1.0 - 5 / 60)
    from scipy.stats import t

    half = t.ppf(1 - 0.05 / 5 / 2, 5) * 2.316606713852541 / math.sqrt(6) / 10
    assert found["low"] == pytest.approx(found["retention"] - half)
    assert test.result(played)["decision"] == UNDECIDED
    assert test.decide(_stats([12.0])) is None  # one episode gives no interval


def test_copies_of_one_game_never_decide() -> None:
    """Ten seeds that replayed two games (a deterministic env) are two pieces of evidence: no
    decision, however equal their differences; the old test decided "above" after two."""
    fp32, random = _stats([10.0] * 10, [0] * 10), _stats([0.0] * 10)
    test = RetentionTest(fp32, random, 0.9)
    same = _stats([11.0, 11.0, 11.0, 11.0, 11.0, 11.0, 2.0, 2.0, 2.0, 2.0], [0] * 6 + [1] * 4)
    found = test.interval(same)
    assert found["distinct_pairs"] == 2 and found["episodes"] == 10
    assert found["low"] == -math.inf and test.decide(same) is None
    assert test.result(same)["decision"] == UNDECIDED
    # the same with three distinct games behind it decides
    three = _stats([11.0] * 10, [0, 1, 2] * 3 + [0])
    assert test.interval(three)["distinct_pairs"] == 3 and test.decide(three) == ABOVE


def test_every_start_of_a_finite_protocol_played_is_exact() -> None:
    """Under finite starts the protocol's mean is known once every start was played: the
    interval has no width and decides, even on two distinct games."""
    protocol = Protocol(starts=4)
    fp32, random = _stats([10.0] * 4, [0, 1, 0, 1], protocol), _stats([0.0] * 4, None, protocol)
    test = RetentionTest(fp32, random, 0.95)
    played = _stats([10.0, 9.0, 10.0, 9.0], [0, 1, 0, 1], protocol)
    found = test.interval(played)
    assert found["exact"] and found["low"] == found["high"] == pytest.approx(0.95)
    assert test.decide(played) == ABOVE
    part = _stats([10.0, 9.0, 10.0], [0, 1, 0], protocol)
    assert not test.interval(part)["exact"] and test.decide(part) is None  # 3 of 4 starts, 2 games
