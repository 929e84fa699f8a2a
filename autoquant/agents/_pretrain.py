"""Pretraining the meta-RL agent across networks, and the weights the package ships.

The agent's observation is network-agnostic by design (``_rl``: shapes relative to the
network's largest, the share of latency a layer can save on the target, its
sensitivity and the sensitivity used so far relative to the bound), so one policy can
be trained on many networks' surrogates and fine-tuned on a new one. Pretraining needs
no episodes of any environment: each network of the corpus gets a surrogate (its
latency model measured on the target, its sensitivities on recorded or generated
inputs), and every pretraining episode draws a network and a bound (log-uniform between
its smallest and its largest summed sensitivity), so the policy learns to be as fast
as the bound allows for any bound.

The weights are written and read by ``_weights``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from autoquant.search import ProblemSettings, SearchSpace
from autoquant.agents._surrogate import Surrogate

__all__ = ["CorpusEntry", "PretrainEnv", "generated_networks", "pretrain", "surrogate_of"]


# --- the corpus ----------------------------------------------------------------------------


@dataclass
class CorpusEntry:
    """One network of the corpus, its surrogate on one target, and how it was made."""

    name: str
    family: str
    surrogate: Surrogate
    table: Any
    space: SearchSpace
    bundle: Any
    seconds: float


class _OfflineTask:
    """What ``CompressionEnv`` reads from a runner, for a network that runs no trials."""

    def __init__(self, entry: CorpusEntry) -> None:
        self.space = entry.space
        self.settings = ProblemSettings()
        self.problem = SimpleNamespace(table=entry.table, bundle=entry.bundle)

    def run_trial(self, params: Any) -> Any:
        raise RuntimeError("an offline pretraining task runs no trials")


def surrogate_of(name: str, family: str, bundle: Any, states: np.ndarray, held: np.ndarray, target: Any, *,
                 fingerprint: str, seed: int = 0, cache: Path | None = None,
                 log: Callable[[str], None] = lambda s: None) -> CorpusEntry:
    """Measure a network's surrogate on ``target``: its latency model (cached like a
    search's, in ``cache`` if given) and its sensitivities on ``held`` (round-to-nearest weights)."""
    from autoquant.compress import ActivationCache, compress, export_reference
    from autoquant.evaluate import fidelity
    from autoquant.policy import analyse
    from autoquant.agents._latency import LatencyModel
    from autoquant.search import load_space
    from autoquant.agents._surrogate import sensitivities
    from autoquant.runtimes import OrtRunner

    start = time.perf_counter()
    table = analyse(bundle)
    space = load_space("joint", table)
    states = np.asarray(states, dtype=np.float32)
    reference = export_reference(bundle)
    ref_out = OrtRunner(reference)(held)
    activations = ActivationCache(bundle.net, states)

    def build(plan: Any) -> bytes:
        return compress(bundle, plan, states, seed=seed, cache=activations, rounding="nearest",
                        verify_kernels=False).onnx

    def ratio_of(plan: Any) -> float:
        result = target.measure(build(plan), reference, held[:1])
        return float(result.ratio)

    def output_loss_of(plan: Any) -> float:
        return float(fidelity(ref_out, OrtRunner(build(plan))(held), bundle.action)["output_mse"])

    model = LatencyModel.load_or_measure(table, space, ratio_of,
                                         policy_sha256=hashlib.sha256(reference).hexdigest(),
                                         target_fingerprint=fingerprint, folder=cache)
    sens = sensitivities(output_loss_of, space)
    seconds = time.perf_counter() - start
    log(f"{name}: {len(table)} layers, {model.probes} latency probes, {seconds:.0f} s")
    return CorpusEntry(name, family, Surrogate(space, table, model, sens), table, space, bundle, seconds)


def generated_networks(count: int, seed: int) -> list[tuple[str, str, Any, np.ndarray, np.ndarray]]:
    """Random Conv and MLP Q-networks (torch's default initialisation) of varied depth and
    width, with Gaussian inputs: (name, family, bundle, states, held-out states). Their
    convolutions use 3x3 and 5x5 kernels on 32-64 pixel inputs, so no Nature CNN is among them."""
    import torch

    from autoquant.policy import ActionSpec, Block, PolicyBundle, build_chain

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    out = []
    for k in range(count):
        blocks = []
        if k % 2 == 0:
            family = "generated-mlp"
            width_in = int(rng.choice([4, 8, 16, 32]))
            shape: tuple[int, ...] = (width_in,)
            prev = width_in
            for _ in range(int(rng.integers(2, 5))):
                width = int(rng.choice([32, 64, 128, 256]))
                blocks.append(_block(torch.nn.Linear(prev, width), "relu"))
                prev = width
        else:
            family = "generated-cnn"
            channels, size = int(rng.choice([1, 2, 3])), int(rng.choice([32, 48, 64]))
            shape = (channels, size, size)
            prev, side = channels, size
            for _ in range(int(rng.integers(2, 4))):
                width, kernel = int(rng.choice([8, 16, 32, 64])), int(rng.choice([3, 5]))
                stride = int(rng.choice([1, 2])) if side > 16 else 1
                blocks.append(_block(torch.nn.Conv2d(prev, width, kernel, stride=stride), "relu", stride))
                prev, side = width, (side - kernel) // stride + 1
            hidden = int(rng.choice([64, 128, 256]))
            blocks.append(_block(torch.nn.Linear(prev * side * side, hidden), "relu"))
            prev = hidden
        actions = int(rng.integers(2, 9))
        blocks.append(_block(torch.nn.Linear(prev, actions), None))
        net, sources = build_chain([Block(f"layer{i}", w, b, act, stride)
                                    for i, (w, b, act, stride) in enumerate(blocks)])
        bundle = PolicyBundle(net=net.eval(), input_shape=shape, action=ActionSpec("argmax", n_actions=actions),
                              algo="generated", source=Path(f"generated/{family}-{k}"), layer_sources=sources)
        states = rng.normal(size=(256, *shape)).astype(np.float32)
        held = rng.normal(size=(128, *shape)).astype(np.float32)
        out.append((f"{family}-{k}", family, bundle, states, held))
    return out


def _block(layer: Any, activation: str | None, stride: int = 1) -> tuple[Any, Any, str | None, tuple[int, int]]:
    return layer.weight.detach().clone(), layer.bias.detach().clone(), activation, (stride, stride)


# --- training ------------------------------------------------------------------------------


class PretrainEnv(gym.Env):  # type: ignore[misc]
    """Surrogate episodes over a corpus: each reset draws a network and a bound."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, corpus: Sequence[CorpusEntry], seed: int = 0) -> None:
        from autoquant.agents._rl import OBS_DIM, SurrogateEnv

        super().__init__()
        if not corpus:
            raise ValueError("pretraining needs at least one network")
        self.envs = [SurrogateEnv(_OfflineTask(e), e.surrogate) for e in corpus]  # type: ignore[arg-type]
        self.ranges = []
        for e in corpus:
            values = [v for s in e.surrogate.sens for v in s.values() if 0.0 < v < math.inf]
            low = max(min(values, default=1e-6), 1e-6)
            self.ranges.append((math.log(low), math.log(max(e.surrogate.top, low * 10.0))))
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.rng = np.random.default_rng(seed)
        self.current = self.envs[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        k = int(self.rng.integers(len(self.envs)))
        self.current = self.envs[k]
        low, high = self.ranges[k]
        self.current.bound = float(math.exp(self.rng.uniform(low, high)))
        return self.current.reset()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self.current.step(action)  # type: ignore[no-any-return]


@dataclass
class PretrainResult:
    model: Any
    episodes: int
    seconds: float
    corpus: list[dict[str, Any]] = field(default_factory=list)


def pretrain(algo: str, corpus: Sequence[CorpusEntry], *, episodes: int, seed: int = 0) -> PretrainResult:
    """Train ``algo`` (as the agent builds it, ``sb3_model``) on surrogate episodes over
    ``corpus``: its warm-up as long as the longest network's, a 200,000-transition replay
    buffer, and exploration noise that decays slowly over the many episodes."""
    from autoquant.agents._rl import OFF_POLICY, sb3_model

    env = PretrainEnv(corpus, seed=seed)
    steps = max(e.steps_per_episode for e in env.envs)
    if algo not in OFF_POLICY:
        raise ValueError(f"pretraining supports ddpg, td3 and sac, not {algo!r}")
    model = sb3_model(algo, env, seed=seed, steps=steps, buffer_size=200_000, noise_decay=0.999)
    start = time.perf_counter()
    mean_steps = float(np.mean([e.steps_per_episode for e in env.envs]))
    model.learn(total_timesteps=int(episodes * mean_steps), progress_bar=False)
    corpus_info = [{"name": e.name, "family": e.family, "layers": len(e.table), "probes": e.surrogate.model.probes,
                    "seconds": round(e.seconds, 1)} for e in corpus]
    return PretrainResult(model, episodes, time.perf_counter() - start, corpus_info)


def zero_shot(model: Any, entry: CorpusEntry, bounds: int = 8) -> dict[str, Any]:
    """How close the policy's greedy plan comes to the surrogate's optimum (the ILP's plan)
    on ``entry``, over ``bounds`` bounds spaced geometrically across its range: the mean
    surrogate reward of each, and how many of the policy's plans keep within the bound."""
    from autoquant.agents._ilp import solve
    from autoquant.agents._rl import SurrogateEnv, surrogate_reward

    env = SurrogateEnv(_OfflineTask(entry), entry.surrogate)  # type: ignore[arg-type]
    surrogate = entry.surrogate
    values = sorted(v for s in surrogate.sens for v in s.values() if 0.0 < v < math.inf)
    grid = np.geomspace(values[0], max(surrogate.top, values[0] * 10.0), bounds) if values else [1.0]
    agent, best, within = [], [], 0
    for bound in grid:
        env.bound = float(bound)
        obs, _ = env.reset()
        reward = 0.0
        for _ in range(env.steps_per_episode):
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, *_ = env.step(action)
        agent.append(float(reward))
        within += int(surrogate.loss(env.picks(env._choice)) <= bound)
        picks = solve(entry.space, entry.table, surrogate.model, surrogate.sens, float(bound))
        best.append(surrogate_reward(surrogate.latency(picks), surrogate.loss(picks), float(bound))
                    if picks is not None else 0.0)
    return {"network": entry.name, "family": entry.family, "bounds": len(grid), "agent": float(np.mean(agent)),
            "optimum": float(np.mean(best)), "within_bound": within}
