"""Fixtures the ActorQ tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import policy_path

CARTPOLE_BOUNDS = ([-2.4, -3.0, -0.21, -3.5], [2.4, 3.0, 0.21, 3.5])  # x, v, theta (termination), omega


@pytest.fixture(scope="session")
def ppo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference CartPole PPO policy (64-64 Tanh) with every layer in int8, calibrated wide."""
    from autoquant.actorq import write_bundle
    from autoquant.compress import CompressionPlan, compress
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy

    policy = load_policy(policy_path("ppo-CartPole-v1", "CartPole-v1.zip"), env_id="CartPole-v1")
    states = record_states(policy, n=1024, seed=0).states
    spread = np.random.default_rng(0).uniform(*CARTPOLE_BOUNDS, size=(1024, 4)).astype(np.float32)
    plan = CompressionPlan.uniform(analyse(policy), weight_bits=8, act_bits=8)
    compressed = compress(policy, plan, np.concatenate([states, spread]), rounding="nearest")
    out = tmp_path_factory.mktemp("actorq_ppo") / "bundle"
    write_bundle(compressed, out)
    return out
