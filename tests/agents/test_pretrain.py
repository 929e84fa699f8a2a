"""Pretraining the meta-RL agent on surrogates of generated networks, and the weights
file: what is saved loads back bit for bit, and what does not fit is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autoquant.agents._pretrain import PretrainEnv, _OfflineTask, generated_networks, pretrain, surrogate_of
from autoquant.agents._rl import OBS_DIM, OBS_VERSION, SurrogateEnv
from autoquant.agents._weights import load_weights, save_weights
from autoquant.targets import HostTarget, MeasureProtocol


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Surrogates of four generated networks (two MLPs, two CNNs), measured on this host."""
    target = HostTarget(protocol=MeasureProtocol(warmup=5, calls=50))
    cache = tmp_path_factory.mktemp("latency")
    return [surrogate_of(name, family, bundle, states, held, target, fingerprint="host-test", cache=cache)
            for name, family, bundle, states, held in generated_networks(4, seed=3)]


@pytest.fixture(scope="module")
def trained(corpus):  # type: ignore[no-untyped-def]
    return pretrain("ddpg", corpus[:3], episodes=800, seed=0)


def _greedy_score(model, env: SurrogateEnv, bound: float) -> float:  # type: ignore[no-untyped-def]
    env.bound = bound
    obs, _ = env.reset()
    reward = 0.0
    for _ in range(env.steps_per_episode):
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, *_ = env.step(action)
    return float(reward)


def test_generated_networks_are_varied_and_hold_no_nature_cnn() -> None:
    nets = generated_networks(6, seed=0)
    families = {family for _, family, *_ in nets}
    assert families == {"generated-mlp", "generated-cnn"}
    for _, _, bundle, states, held in nets:
        assert states.shape[1:] == bundle.input_shape and held.shape[1:] == bundle.input_shape
        kernels = {m.kernel_size for m in bundle.net.modules() if hasattr(m, "kernel_size")}
        assert not kernels & {(8, 8), (4, 4)}  # the Nature CNN's first two kernels


@pytest.mark.slow
def test_pretrain_env_draws_networks_and_bounds(corpus) -> None:  # type: ignore[no-untyped-def]
    env = PretrainEnv(corpus, seed=0)
    seen, bounds = set(), []
    for _ in range(40):
        obs, _ = env.reset()
        assert obs.shape == (OBS_DIM,) and env.observation_space.contains(obs)
        seen.add(id(env.current))
        bounds.append(env.current.bound)
        while True:
            obs, reward, done, _, _ = env.step(env.action_space.sample())
            if done:
                break
        assert math.isfinite(reward)
    assert len(seen) == len(corpus) and len(set(bounds)) == len(bounds)


@pytest.mark.slow
def test_pretrained_policy_beats_an_untrained_one_on_an_unseen_network(corpus, trained) -> None:  # type: ignore[no-untyped-def]
    """The fourth network was not in the corpus: over bounds across its range, the
    pretrained policy's greedy plan scores higher on its surrogate than an untrained
    policy's (same architecture, same seed)."""
    from stable_baselines3 import DDPG

    unseen = corpus[3]
    env = SurrogateEnv(_OfflineTask(unseen), unseen.surrogate)  # type: ignore[arg-type]
    fresh = DDPG("MlpPolicy", PretrainEnv([unseen]), seed=0, device="cpu", policy_kwargs={"net_arch": [64, 64]})
    values = sorted(v for s in unseen.surrogate.sens for v in s.values() if 0 < v < math.inf)
    bounds = np.geomspace(values[0], unseen.surrogate.top, 8)
    pretrained = np.mean([_greedy_score(trained.model, env, b) for b in bounds])
    untrained = np.mean([_greedy_score(fresh, env, b) for b in bounds])
    assert pretrained > untrained, (pretrained, untrained)


@pytest.mark.slow
def test_weights_round_trip_and_refusals(corpus, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from stable_baselines3 import DDPG

    path = save_weights("ddpg", trained.model, {"corpus": trained.corpus, "episodes": trained.episodes},
                        obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path)
    with np.load(path, allow_pickle=False) as data:  # plain arrays, no pickles
        assert all(data[k].dtype == np.float32 for k in data.files)

    def fresh():  # type: ignore[no-untyped-def]
        return DDPG("MlpPolicy", PretrainEnv(corpus[:1]), seed=1, device="cpu", policy_kwargs={"net_arch": [64, 64]})

    model = fresh()
    meta = load_weights("ddpg", model, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path)
    assert meta is not None and meta["used"] and meta["episodes"] == 800
    obs = np.random.default_rng(0).uniform(-1, 1, (16, OBS_DIM)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0],
                                  trained.model.predict(obs, deterministic=True)[0])

    assert load_weights("td3", fresh(), obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path) is None
    other = load_weights("ddpg", fresh(), obs_version=OBS_VERSION + 1, obs_dim=OBS_DIM, folder=tmp_path)
    assert other is not None and not other["used"] and "layout" in other["why"]
    meta_path = tmp_path / "ddpg.json"
    info = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**info, "sha256": "0" * 64}))
    untouched = fresh()
    before = untouched.predict(obs, deterministic=True)[0]
    refused = load_weights("ddpg", untouched, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path)
    assert refused is not None and not refused["used"] and "SHA-256" in refused["why"]
    np.testing.assert_array_equal(untouched.predict(obs, deterministic=True)[0], before)  # left as it was


def _small_ddpg(seed: int):  # type: ignore[no-untyped-def]
    from stable_baselines3 import DDPG

    return DDPG("MlpPolicy", "Pendulum-v1", seed=seed, device="cpu", policy_kwargs={"net_arch": [8]})


def test_weights_that_are_not_finite_are_refused_even_with_their_hash(tmp_path: Path) -> None:
    """NaN weights whose SHA-256 was recomputed to match were loaded silently."""
    from autoquant.agents._weights import _digest

    save_weights("ddpg", _small_ddpg(0), {}, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path)
    with np.load(tmp_path / "ddpg.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    first = sorted(arrays)[0]
    arrays[first] = np.full_like(arrays[first], np.nan)
    np.savez(tmp_path / "ddpg.npz", **arrays)
    info = json.loads((tmp_path / "ddpg.json").read_text())
    (tmp_path / "ddpg.json").write_text(json.dumps({**info, "sha256": _digest(arrays)}))
    model = _small_ddpg(1)
    before = {k: v.clone() for k, v in model.policy.actor.state_dict().items()}
    loaded = load_weights("ddpg", model, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path)
    assert loaded is not None and not loaded["used"], loaded
    assert "NaN or infinite" in loaded["why"] and first in loaded["why"] and "\n" not in loaded["why"]
    assert all((model.policy.actor.state_dict()[k] == v).all() for k, v in before.items())  # left as it was


def test_a_weights_file_that_inflates_past_its_cap_is_refused_before_inflating(tmp_path: Path) -> None:
    """A small npz that inflates to gigabytes was inflated before its hash was checked."""
    import tracemalloc
    import zipfile

    save_weights("ddpg", _small_ddpg(0), {}, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path)
    rows = 50_000_000  # 200 MB of float32 zeros, a few hundred kB deflated
    with zipfile.ZipFile(tmp_path / "ddpg.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("actor.mu.0.weight.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (rows,)})
            chunk = bytes(1 << 20)
            for _ in range(rows * 4 // len(chunk)):
                member.write(chunk)
    model = _small_ddpg(1)
    tracemalloc.start()
    try:
        loaded = load_weights("ddpg", model, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loaded is not None and not loaded["used"] and "zip bomb" in loaded["why"], loaded
    assert peak < 16 << 20, peak  # the 200 MB were never inflated
