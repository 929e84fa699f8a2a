"""Loading real SB3 zips and torch files; actions identical to the original policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoquant.policy import analyse, load_policy, make_env
from tests.conftest import assert_same_actions, policy_path


def _observations(env_id: str, n: int = 64, seed: int = 0) -> np.ndarray:
    """Real observations from random play, so inputs are in the policy's range."""
    env = make_env(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(out)


def _sb3_policy(algo: str, bundle, state: dict):  # type: ignore[no-untyped-def]
    """The original SB3 policy class, built from the same spaces, with the zip's weights."""
    kwargs: dict = {}
    if algo == "dqn":
        from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy

        cls = CnnPolicy if len(bundle.input_shape) == 3 else DQNPolicy
        if cls is DQNPolicy:
            kwargs["net_arch"] = [256, 256]
    elif algo == "ppo":
        from stable_baselines3.common.policies import ActorCriticPolicy as cls
    elif algo == "sac":
        from stable_baselines3.sac.policies import SACPolicy as cls

        kwargs = {"net_arch": [64, 64], "use_sde": True, "log_std_init": -2}
    policy = cls(bundle.observation_space, bundle.action_space, lambda _: 1e-3, **kwargs)
    policy.load_state_dict(state, strict=True)
    policy.set_training_mode(False)
    return policy


def _zip_state(path: Path) -> dict:
    import io
    import zipfile

    with zipfile.ZipFile(path) as z:
        return torch.load(io.BytesIO(z.read("policy.pth")), weights_only=True)


@pytest.mark.parametrize(
    ("folder", "file", "algo", "env_id"),
    [
        ("dqn-CartPole-v1", "CartPole-v1.zip", "dqn", "CartPole-v1"),
        ("ppo-CartPole-v1", "CartPole-v1.zip", "ppo", "CartPole-v1"),
        ("dqn-LunarLander-v2", "LunarLander-v2.zip", "dqn", "LunarLander-v3"),
        ("sac-Pendulum-v1", "Pendulum-v1.zip", "sac", "Pendulum-v1"),
        ("dqn-PongNoFrameskip-v4", "dqn_pong.zip", "dqn", "PongNoFrameskip-v4"),
    ],
)
def test_sb3_zip_reproduces_original_actions(folder: str, file: str, algo: str, env_id: str) -> None:
    path = policy_path(folder, file)
    bundle = load_policy(path, env_id=env_id if folder.startswith("dqn-Pong") else None)
    assert bundle.algo == algo
    assert bundle.env_id == env_id  # implied by args.yml / the file name, v2 -> v3 for LunarLander
    original = _sb3_policy(algo, bundle, _zip_state(path))
    obs = _observations(env_id, n=32 if algo == "dqn" and "Pong" in folder else 128)
    want, _ = original.predict(obs, deterministic=True)
    assert_same_actions(bundle, bundle.predict(obs), want)


def test_pong_state_dict_matches_the_zip(pong_pt_path: Path) -> None:
    from_pt = load_policy(pong_pt_path, env_id="PongNoFrameskip-v4")
    from_zip = load_policy(policy_path("dqn-PongNoFrameskip-v4", "dqn_pong.zip"), env_id="PongNoFrameskip-v4")
    obs = _observations("PongNoFrameskip-v4", n=16)
    np.testing.assert_allclose(from_pt.forward(from_pt.prepare(obs)), from_zip.forward(from_zip.prepare(obs)),
                               rtol=1e-5, atol=1e-5)
    assert from_pt.obs_scale == pytest.approx(1 / 255)
    table = analyse(from_pt)
    assert [layer.type for layer in table] == ["conv", "conv", "conv", "linear", "linear"]
    assert table["fc2"].action_head and not table["fc2"].prunable
    assert table.total_macs == 9_346_048  # the Nature CNN at 4x84x84


def test_state_dict_without_env_infers_the_nature_cnn_input(pong_pt_path: Path) -> None:
    bundle = load_policy(pong_pt_path)
    assert bundle.env_id is None
    assert bundle.input_shape == (4, 84, 84)


def test_sb3_key_names_in_a_pt_file(tmp_path: Path) -> None:
    state = _zip_state(policy_path("dqn-CartPole-v1", "CartPole-v1.zip"))
    pt = tmp_path / "q.pt"
    torch.save(state, pt)
    from_pt = load_policy(pt, env_id="CartPole-v1")
    from_zip = load_policy(policy_path("dqn-CartPole-v1", "CartPole-v1.zip"))
    obs = _observations("CartPole-v1")
    np.testing.assert_array_equal(from_pt.forward(obs), from_zip.forward(obs))


def test_torchscript_archive_loads_only_when_trusted(tmp_path: Path) -> None:
    from autoquant.errors import PolicyLoadError

    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    path = tmp_path / "ts.pt"
    torch.jit.script(net).save(str(path))
    with pytest.raises(PolicyLoadError, match="TorchScript is code.*--trust-pickle"):
        load_policy(path, env_id="CartPole-v1")
    bundle = load_policy(path, env_id="CartPole-v1", trust_pickle=True)
    x = torch.randn(8, 4)
    np.testing.assert_allclose(bundle.forward(x.numpy()), net(x).detach().numpy(), atol=1e-6)
    assert bundle.algo == "torchscript"


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    from autoquant.errors import PolicyLoadError

    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    path = tmp_path / "module.pt"
    torch.save(net, path)
    with pytest.raises(PolicyLoadError, match="--trust-pickle"):
        load_policy(path)
    bundle = load_policy(path, trust_pickle=True, env_id="CartPole-v1")
    x = torch.randn(4, 4)
    np.testing.assert_allclose(bundle.forward(x.numpy()), net(x).detach().numpy(), atol=1e-6)


def test_atari_env_gives_channels_first_stacks() -> None:
    env = make_env("PongNoFrameskip-v4")
    obs, _ = env.reset(seed=0)
    env.close()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert not obs[:3].any() and obs[3].any()  # zero padded at reset, newest frame last


def test_the_shipped_pong_example_is_the_network_its_metadata_describes() -> None:
    """examples/dqn_pong.pt loads safely as the Nature CNN, and examples/dqn_pong.json names
    its hash, its training and its score under both protocols with distinct-game counts."""
    import hashlib
    import json

    from autoquant.policy import analyse, load_policy
    from tests.conftest import EXAMPLES

    meta = json.loads((EXAMPLES / "dqn_pong.json").read_text())
    path = EXAMPLES / meta["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
    bundle = load_policy(path, env_id=meta["env_id"])
    assert [layer.name for layer in analyse(bundle).layers] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for protocol in ("deterministic", "sticky"):
        score = meta["score"][protocol]
        assert "sticky_actions" in score and score["distinct_games"] >= 1 and "mean_reward" in score
