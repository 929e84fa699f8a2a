"""A real search problem on the zoo's CartPole DQN, shared by the search tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cartpole_problem(cartpole_dqn):  # type: ignore[no-untyped-def]
    from autoquant.compress import export_reference
    from autoquant.evaluate import episode_seeds, onnx_actor, play_episodes, random_actor, record_states
    from autoquant.policy import analyse
    from autoquant.search import ProblemSettings, SearchProblem
    from autoquant.targets import HostTarget, MeasureProtocol

    bundle = cartpole_dqn
    states = record_states(bundle, n=512).states
    held = record_states(bundle, n=256, seed=7919).states
    reference = export_reference(bundle)
    seeds = episode_seeds(0, 3)
    return SearchProblem(
        bundle, analyse(bundle), HostTarget(protocol=MeasureProtocol(warmup=10, calls=100)),
        states=states, held_out=held, reference_onnx=reference, settings=ProblemSettings(episodes=3),
        episode_seeds=seeds, fp32_episodes=play_episodes(onnx_actor(bundle, reference), bundle.env_id, seeds),
        random_episodes=play_episodes(random_actor(bundle.action_space, 0), bundle.env_id, seeds),
        target_fingerprint="host-test",
    )
