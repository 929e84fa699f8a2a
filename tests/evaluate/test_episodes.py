"""Episodes with the ONNX network in the loop, paired on seeds."""

from __future__ import annotations

import pytest

from autoquant.compress import CompressionPlan, compress, export_reference
from autoquant.evaluate import EpisodeStats, episode_seeds, onnx_actor, paired_comparison, play_episodes, random_actor
from autoquant.policy import analyse


@pytest.mark.slow
def test_int8_cartpole_dqn_keeps_500_on_10_seeds(cartpole_dqn, cartpole_states) -> None:  # type: ignore[no-untyped-def]
    compressed = compress(cartpole_dqn, CompressionPlan.uniform(analyse(cartpole_dqn)), cartpole_states.states)
    assert compressed.kernels.integer_layers() == ["fc1", "fc2", "fc3"]
    seeds = episode_seeds(0, 10)
    result = play_episodes(onnx_actor(cartpole_dqn, compressed.onnx), "CartPole-v1", seeds)
    assert result.rewards == (500.0,) * 10


def test_episodes_depend_only_on_seed_and_policy(cartpole_dqn) -> None:  # type: ignore[no-untyped-def]
    act = onnx_actor(cartpole_dqn, export_reference(cartpole_dqn))
    random = random_actor(cartpole_dqn.action_space, 0)
    seeds = [5, 6, 7, 8, 9]
    a = play_episodes(random, "CartPole-v1", seeds, n_envs=2)
    b = play_episodes(random_actor(cartpole_dqn.action_space, 0), "CartPole-v1", seeds, n_envs=2)
    assert a.rewards == b.rewards
    one = play_episodes(act, "CartPole-v1", seeds[:3], n_envs=1, max_steps=50)
    three = play_episodes(act, "CartPole-v1", seeds[:3], n_envs=3, max_steps=50)
    assert one.rewards == three.rewards == (50.0, 50.0, 50.0)


def test_retention_is_measured_from_the_random_floor() -> None:
    def stats(rewards: tuple[float, ...]) -> EpisodeStats:
        return EpisodeStats(seeds=(1, 2, 3), rewards=rewards, lengths=(1, 1, 1), steps_per_s=1.0)

    ref, floor = stats((-9.0, -9.0, -9.0)), stats((-21.0, -21.0, -21.0))
    paired = paired_comparison(stats((-12.0, -12.0, -12.0)), ref, floor)
    assert paired["retention"] == pytest.approx(0.75)  # 9 of the 12 points gained over random
    assert paired["mean_diff"] == pytest.approx(-3.0)
    with pytest.raises(ValueError):
        paired_comparison(EpisodeStats((4,), (1.0,), (1,), 1.0), ref)
