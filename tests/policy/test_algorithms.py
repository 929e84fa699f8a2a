"""Every supported SB3 / sb3-contrib algorithm: a freshly built model, saved as SB3
saves it, loads through autoquant and acts exactly like SB3's own predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoquant.policy import load_policy, make_env
from tests.conftest import assert_same_actions


def _model(name: str):  # type: ignore[no-untyped-def]
    import stable_baselines3 as sb3

    if name in ("QRDQN", "TQC"):
        import sb3_contrib

        cls = getattr(sb3_contrib, name)
    else:
        cls = getattr(sb3, name)
    env_id = "CartPole-v1" if name in ("DQN", "QRDQN", "PPO", "A2C") else "Pendulum-v1"
    kwargs = {"policy_kwargs": {"net_arch": [32, 32]}} if name != "PPO" else {}
    if name == "SAC":
        kwargs = {"use_sde": True, "policy_kwargs": {"net_arch": [32, 32], "log_std_init": -2}}
    if name == "A2C":
        kwargs = {"policy_kwargs": {"net_arch": [16], "activation_fn": __import__("torch").nn.ReLU}}
    return cls("MlpPolicy", make_env(env_id), seed=0, device="cpu", **kwargs), env_id


@pytest.mark.parametrize("name", ["DQN", "QRDQN", "PPO", "A2C", "SAC", "TD3", "TQC"])
def test_algorithm_round_trip(name: str, tmp_path: Path) -> None:
    model, env_id = _model(name)
    path = tmp_path / f"{name.lower()}.zip"
    model.save(path)
    bundle = load_policy(path, env_id=env_id)
    assert bundle.algo == name.lower()
    env = make_env(env_id)
    obs = np.stack([env.observation_space.sample() for _ in range(64)])
    env.close()
    want, _ = model.predict(obs, deterministic=True)
    assert_same_actions(bundle, bundle.predict(obs), want)
