"""The sequential retention test: real CartPole episodes, stopped as soon as the answer is clear."""

from __future__ import annotations

import math

import pytest

from autoquant.compress import CompressionPlan, LayerSpec, compress, export_reference
from autoquant.evaluate import (
    ABOVE,
    BELOW,
    UNDECIDED,
    EpisodeStats,
    RetentionTest,
    episode_seeds,
    onnx_actor,
    paired_comparison,
    play_episodes,
    random_actor,
)

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


def test_a_plan_that_clearly_fails_stops_after_two_episodes(cartpole_dqn, cartpole_states, cartpole_test) -> None:  # type: ignore[no-untyped-def]
    seeds, test = cartpole_test
    episodes = _play(cartpole_dqn, cartpole_states.states, BROKEN, seeds, test)
    decided = test.result(episodes)
    assert decided["decision"] == BELOW
    assert decided["episodes"] == len(episodes.seeds) == 2  # of a budget of 10
    assert decided["high"] < 0.95 and decided["retention"] < 0.1


def test_a_plan_that_clearly_passes_stops_after_two_episodes(cartpole_dqn, cartpole_states, cartpole_test) -> None:  # type: ignore[no-untyped-def]
    seeds, test = cartpole_test
    episodes = _play(cartpole_dqn, cartpole_states.states, KEPT, seeds, test)
    decided = test.result(episodes)
    assert decided["decision"] == ABOVE
    assert decided["episodes"] == 2
    assert decided["low"] >= 0.95


def test_without_a_stop_every_seed_is_played_and_retention_is_the_paired_one(cartpole_dqn, cartpole_states, cartpole_test) -> None:  # type: ignore[no-untyped-def]
    seeds, test = cartpole_test
    model = compress(cartpole_dqn, BROKEN, cartpole_states.states, verify_kernels=False).onnx
    episodes = play_episodes(onnx_actor(cartpole_dqn, model), "CartPole-v1", seeds, n_envs=2)
    assert episodes.seeds == tuple(seeds)
    decided = test.result(episodes)
    assert decided["episodes"] == 10
    assert decided["retention"] == pytest.approx(paired_comparison(episodes, test.reference, test.random)["retention"])


def _stats(rewards: list[float]) -> EpisodeStats:
    return EpisodeStats(seeds=tuple(range(len(rewards))), rewards=tuple(rewards), lengths=(1,) * len(rewards),
                        steps_per_s=1.0)


def test_noisy_differences_stay_undecided_and_the_interval_is_bonferroni_wide() -> None:
    fp32, random = _stats([10.0] * 6), _stats([0.0] * 6)
    test = RetentionTest(fp32, random, 0.9, confidence=0.95)
    assert test.looks == 5  # episodes 2..6
    rewards = {0: 12.0, 1: 6.0, 2: 11.0, 3: 7.0, 4: 10.0, 5: 9.0}  # differences 2, -4, 1, -3, 0, -1
    assert test.decide(rewards) is None
    found = test.interval(rewards)
    assert found["retention"] == pytest.approx(1.0 - 5 / 60)
    from scipy.stats import t

    half = t.ppf(1 - 0.05 / 5 / 2, 5) * 2.316606713852541 / math.sqrt(6) / 10
    assert found["low"] == pytest.approx(found["retention"] - half)
    assert test.result(_stats([12.0, 6.0, 11.0, 7.0, 10.0, 9.0]))["decision"] == UNDECIDED
    assert test.decide({0: 12.0}) is None  # one episode gives no interval
