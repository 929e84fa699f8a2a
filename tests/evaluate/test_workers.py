"""Envs stepped in worker processes play the same episodes as envs stepped in this one."""

from __future__ import annotations

import pytest

from autoquant.compress import export_reference
from autoquant.errors import EnvMismatchError
from autoquant.evaluate import onnx_actor, play_episodes
from autoquant.evaluate._workers import close_pools, default_workers, pool
from autoquant.policy import resolve_protocol


@pytest.fixture(autouse=True)
def _no_workers_left():  # type: ignore[no-untyped-def]
    yield
    close_pools()


@pytest.mark.slow
def test_pong_in_workers_plays_the_same_games(pong) -> None:  # type: ignore[no-untyped-def]
    act = onnx_actor(pong, export_reference(pong))
    # sticky actions: each env's generator is seeded by its reset, in whichever process steps it
    for protocol, seeds in ((resolve_protocol("PongNoFrameskip-v4", 0.25), [11, 12, 13, 14, 15]),):
        here = play_episodes(act, "PongNoFrameskip-v4", seeds, protocol=protocol, n_envs=3, max_steps=150,
                             workers=0)
        there = play_episodes(act, "PongNoFrameskip-v4", seeds, protocol=protocol, n_envs=3, max_steps=150,
                              workers=2)
        assert (there.seeds, there.rewards, there.lengths, there.labels) == \
            (here.seeds, here.rewards, here.lengths, here.labels)
    # the workers are kept for the next call with the same envs, and started again once closed
    kept = pool("PongNoFrameskip-v4", resolve_protocol("PongNoFrameskip-v4", 0.25), 3, 2)
    assert kept.alive and pool("PongNoFrameskip-v4", resolve_protocol("PongNoFrameskip-v4", 0.25), 3, 2) is kept
    close_pools()
    assert not kept.alive


def test_cartpole_in_workers_and_a_stop(cartpole_dqn) -> None:  # type: ignore[no-untyped-def]
    act = onnx_actor(cartpole_dqn, export_reference(cartpole_dqn))
    seeds = [1, 2, 3, 4, 5]
    here = play_episodes(act, "CartPole-v1", seeds, n_envs=2, max_steps=60, workers=0)
    there = play_episodes(act, "CartPole-v1", seeds, n_envs=2, max_steps=60, workers=2)
    assert there.rewards == here.rewards and there.seeds == here.seeds
    stopped = play_episodes(act, "CartPole-v1", seeds, n_envs=2, max_steps=60, workers=2,
                            stop=lambda played: len(played.seeds) >= 2)
    assert len(stopped.seeds) == 2 and stopped.rewards == here.rewards[:2]


def test_a_worker_that_cannot_make_its_env_is_one_line(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EnvMismatchError, match="an env worker of Nope-v0 failed: EnvMismatchError: unknown"):
        play_episodes(lambda obs: obs, "Nope-v0", [1], workers=1)
    monkeypatch.setenv("AUTOQUANT_ENV_WORKERS", "3")
    assert default_workers() == 3
    for bad in ("-1", "65", "many"):
        monkeypatch.setenv("AUTOQUANT_ENV_WORKERS", bad)
        with pytest.raises(EnvMismatchError, match="AUTOQUANT_ENV_WORKERS must be a whole number"):
            default_workers()
