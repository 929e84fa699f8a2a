"""Meta-RL agents: a gymnasium ``CompressionEnv`` and stable-baselines3 DDPG, TD3, SAC, PPO.

One episode is one plan. The env takes one step per compressible layer that has a
free choice (layers with a single choice of bits and ratio are applied silently, but
their cost and position still count in the features and the budget). The agent
(``RLAgent``) plays its episodes against the surrogate (``SurrogateEnv``: the target's
latency model and the summed sensitivities, ``_surrogate``) and sends only its
proposals to real trials (``CompressionEnv``'s episodes, which the replay buffer takes in).

Observation (float32, bounded in [-1, 1]; layout ``OBS_VERSION`` 2), per step: the
layer's position (index/L), is-conv, log2 of its input and output channels, kernel
area and stride (each relative to the network's largest), the share of fp32 latency
the layer can save on the target (1 - its fastest option's ratio in the latency
model), its share of the MACs, its largest sensitivity against the current bound
(``relative_to_bound``: log10(s / bound) / 4), the previous layer's executed action
(the centres of its chosen bins), the summed sensitivity of the layers already decided
against the bound, and their MAC fraction. Nothing in it names the network's size or
scale, so a policy trained on other networks' surrogates reads a new one the same way
(``_pretrain``).

Action: ``Box(-1, 1, (2,))``, (bits, prune), each mapped by equal bins onto the layer's
choices: bit widths from float (most precise) to the fewest bits, pruning ratios
ascending. With a budget in the space (``max_size_ratio`` / ``max_macs_ratio``) each
choice is clipped, as in HAQ / AMC, to the least aggressive one that still lets the
plan meet the budget if every later layer took its most aggressive choice (the most
aggressive one when none does). Costs are estimated from the LayerTable
(``plan_cost``), never by compressing.

Reward, 0 on every step but the last. On the surrogate: ``surrogate_reward``. On the
last step of a real trial, with ``ratio`` its measured latency ratio to fp32:

- failed trial (no result): -2
- played, retention >= min_retention: ``-log(ratio)``; in pareto mode
  ``- 0.25 * log(size_ratio)`` is added
- played, retention below the floor: ``-log(ratio) - 1 - 10 * (min_retention - retention)``
- not played, failed the fidelity screen:
  ``-log(ratio) - 1 - 5 * max(0, fidelity_floor - fidelity_score)``
- not played, cannot beat the best feasible latency: ``-log(ratio) - 0.5``

Unlike Galen's reward, being faster than a target is never punished: there is no
target, only "faster, while the policy still plays".

Off-policy agents (DDPG, TD3, SAC) learn after every step (one gradient step each),
after a few random warm-up episodes; DDPG and TD3 explore with Gaussian noise whose
scale decays per episode to a floor, so exploration never vanishes. When a study is
resumed their replay buffer is first filled with the study's finished trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import optuna
from stable_baselines3.common.noise import ActionNoise

from autoquant._io import write_json
from autoquant.compress import FLOAT
from autoquant.errors import UsageError
from autoquant.policy import LayerTable
from autoquant.search import (AgentContext, ProblemSettings, ProposalSampler, SearchRunner, SearchSpace, TrialRecord,
                              TrialResult)
from autoquant.agents._cost import layer_costs
from autoquant.agents._surrogate import Choice, Surrogate, latency_model, layer_choices, plan_of, sensitivities
from autoquant.agents._weights import load_weights

__all__ = [
    "OBS_DIM",
    "OBS_VERSION",
    "CompressionEnv",
    "DecayingNormalNoise",
    "RLAgent",
    "bin_centre",
    "bin_index",
    "layer_features",
    "relative_to_bound",
    "sb3_model",
    "surrogate_reward",
    "trial_reward",
    "warm_start",
]

OBS_DIM = 13
OBS_VERSION = 2  # the observation layout (module docstring); pretrained weights name the one they were made for
OFF_POLICY = ("ddpg", "td3", "sac")
_EPS = 1e-9


# --- bins ----------------------------------------------------------------------------


def bin_index(value: float, n: int) -> int:
    """Which of ``n`` equal bins of [-1, 1] holds ``value`` (clipped into the range)."""
    v = float(np.clip(np.nan_to_num(value), -1.0, 1.0))
    return min(n - 1, math.floor((v + 1.0) / 2.0 * n))


def bin_centre(index: int, n: int) -> float:
    """The centre of bin ``index`` of ``n`` equal bins of [-1, 1]."""
    return -1.0 + (2 * index + 1) / n


# --- reward --------------------------------------------------------------------------


def trial_reward(result: TrialResult | None, settings: ProblemSettings) -> float:
    """The episode's reward for a trial outcome (see the module docstring)."""
    if result is None:
        return -2.0
    speed = -math.log(max(result.latency_ratio, _EPS))
    if result.played:
        retention = result.retention if result.retention is not None else 0.0
        if retention >= settings.min_retention:
            bonus = -0.25 * math.log(max(result.size_ratio, _EPS)) if settings.mode == "pareto" else 0.0
            return speed + bonus
        return speed - 1.0 - 10.0 * (settings.min_retention - retention)
    if result.fidelity_score < settings.fidelity_floor:
        return speed - 1.0 - 5.0 * max(0.0, settings.fidelity_floor - result.fidelity_score)
    return speed - 0.5  # screened out: it cannot beat the best feasible latency


# --- costs and features --------------------------------------------------------------


def _geometry(layer: Any, net: Any) -> tuple[float, float]:
    """(kernel area, stride) of a layer; 1, 1 for Linear."""
    if layer.type != "conv":
        return 1.0, 1.0
    module = dict(net.named_children()).get(layer.name) if net is not None else None
    if module is not None and hasattr(module, "kernel_size"):
        kh, kw = module.kernel_size
        return float(kh * kw), float(module.stride[0])
    out_numel = float(np.prod(layer.out_shape))
    area = layer.macs / max(out_numel * layer.in_shape[0], 1.0)
    stride = round(layer.in_shape[1] / layer.out_shape[1]) if len(layer.out_shape) > 1 else 1
    return float(area), float(max(stride, 1))


def layer_features(table: LayerTable, net: Any = None, latency_share: Sequence[float] | None = None) -> np.ndarray:
    """The static part of each layer's observation, shape (layers, 8), values in [0, 1]:
    index/L, is-conv, log2 in / out channels, kernel area, stride (each relative to the
    network's largest), the share of fp32 latency the layer can save (from the target's
    latency model: 1 - its fastest option's ratio; 0 without a model), MACs share."""
    n = len(table)
    log_in = [math.log2(max(layer.in_shape[0], 1)) for layer in table]
    log_out = [math.log2(max(layer.out_shape[0], 1)) for layer in table]
    top_log = max(max(log_in), max(log_out), 1.0)
    geometry = [_geometry(layer, net) for layer in table]
    top_area = max(g[0] for g in geometry)
    top_stride = max(g[1] for g in geometry)
    share = list(latency_share) if latency_share is not None else [0.0] * n
    rows = []
    for i, layer in enumerate(table):
        rows.append([
            i / n, float(layer.type == "conv"), log_in[i] / top_log, log_out[i] / top_log,
            geometry[i][0] / top_area, geometry[i][1] / top_stride,
            float(np.clip(share[i], 0.0, 1.0)), layer.macs / table.total_macs,
        ])
    return np.asarray(rows, dtype=np.float32)


def relative_to_bound(value: float, bound: float) -> float:
    """A sensitivity against the bound, in [-1, 1]: log10(value / bound) / 4, so 0 is at
    the bound and +-1 four decades away (0 and below count as far below)."""
    if not math.isfinite(value):
        return 1.0
    if not math.isfinite(bound):
        return -1.0
    return float(np.clip(math.log10(max(value, 1e-12) / max(bound, 1e-12)) / 4.0, -1.0, 1.0))


@dataclass(frozen=True)
class _Choices:
    """One layer's choices, ordered from least to most aggressive."""

    name: str
    bits: tuple[str, ...]  # trial values: "float", "8", ...
    ratios: tuple[float, ...]
    bits_param: str | None  # the trial parameter, when the choice is free
    prune_param: str | None

    @property
    def free(self) -> bool:
        return len(self.bits) > 1 or len(self.ratios) > 1

    def weight_bits(self, index: int) -> int | None:
        return None if self.bits[index] == FLOAT else int(self.bits[index])


def _choices(space: SearchSpace, table: LayerTable) -> list[_Choices]:
    by_name = {layer.name: layer for layer in space.layers}
    dists = space.distributions()
    out = []
    for info in table:
        layer = by_name.get(info.name)
        if layer is None:
            out.append(_Choices(info.name, (FLOAT,), (0.0,), None, None))
            continue
        bits = tuple(sorted(layer.bits_choices(), key=lambda b: (0, 0) if b == FLOAT else (1, -int(b))))
        out.append(_Choices(layer.name, bits, tuple(sorted(layer.prune_ratios)),
                            layer.bits_param if layer.bits_param in dists else None,
                            layer.prune_param if layer.prune_param in dists else None))
    return out


# --- the environment -----------------------------------------------------------------


class CompressionEnv(gym.Env):  # type: ignore[misc]
    """One episode = one plan = one trial through ``runner.run_trial``.

    ``exhausted`` turns true when the runner says the budget is used; the episode
    then ends with reward 0 and no trial.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, runner: SearchRunner, *, surrogate: Surrogate | None = None) -> None:
        super().__init__()
        self.runner = runner
        self.space: SearchSpace = runner.space
        self.settings: ProblemSettings = runner.settings
        self.table: LayerTable = runner.problem.table
        self.layers = _choices(self.space, self.table)
        self.decisions = [i for i, c in enumerate(self.layers) if c.free]
        if not self.decisions:
            raise UsageError(f"search space {self.space.name!r} leaves no free choice on any layer: "
                             "give some layer more than one weight_bits or prune_ratios entry")
        self.surrogate = surrogate
        # the bound the sensitivities are observed against: the surrogate's, kept current by the agent
        self.bound = surrogate.boundary.bound() if surrogate is not None else 1.0
        self._sens = self._choice_sensitivities(surrogate)
        self._layer_sens = [max((v for v in s.values()), default=0.0) for s in self._sens]
        share = None
        if surrogate is not None:
            share = [1.0 - min(singles.values()) for singles in surrogate.model.singles]
        self._static = layer_features(self.table, getattr(runner.problem.bundle, "net", None), share)
        self._fp32_size = 4.0 * self.table.total_params
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.exhausted = False
        self.last_outcome: Any = None
        self._choice: list[tuple[int, int]] = [(0, 0)] * len(self.layers)
        self._t = 0

    def _choice_sensitivities(self, surrogate: Surrogate | None) -> list[dict[tuple[int, int], float]]:
        """Per table layer: the surrogate's sensitivity of each (bits index, ratio index)."""
        by_name = {layer.name: sens for layer, sens in zip(self.space.layers, surrogate.sens)} \
            if surrogate is not None else {}
        out = []
        for layer in self.layers:
            sens = by_name.get(layer.name, {})
            out.append({(b, r): float(sens.get(Choice(layer.weight_bits(b), float(layer.ratios[r])), 0.0))
                        for b in range(len(layer.bits)) for r in range(len(layer.ratios))})
        return out

    @property
    def steps_per_episode(self) -> int:
        return len(self.decisions)

    # --- gymnasium API ---

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._choice = [(0, 0)] * len(self.layers)
        self._t = 0
        return self._observation(0, self._choice), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= len(self.decisions):
            raise RuntimeError("the episode has ended: call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        i = self.decisions[self._t]
        layer = self.layers[i]
        wanted = (bin_index(a[0], len(layer.bits)), bin_index(a[1], len(layer.ratios)))
        self._choice[i] = self._clip(i, wanted, self._choice)
        self._t += 1
        obs = self._observation(self._t, self._choice)
        if self._t < len(self.decisions):
            return obs, 0.0, False, False, {}
        reward, info = self._finish(self.params(self._choice))
        return obs, reward, True, False, info

    def _finish(self, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """The episode's last step: the plan runs as a real trial."""
        outcome = self.runner.run_trial(params)
        self.last_outcome = outcome
        if outcome is None:
            self.exhausted = True
            return 0.0, {"params": params, "budget_used": True}
        return trial_reward(outcome.result, self.settings), {"params": params, "trial": outcome.number}

    # --- plans, costs, clipping ---

    def params(self, choice: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """Trial parameters of a full choice (bits index, ratio index per layer)."""
        out: dict[str, Any] = {}
        for layer, (b, r) in zip(self.layers, choice):
            if layer.bits_param:
                out[layer.bits_param] = layer.bits[b]
            if layer.prune_param:
                out[layer.prune_param] = layer.ratios[r]
        return out

    def choice_of(self, params: Mapping[str, Any]) -> list[tuple[int, int]] | None:
        """The inverse of ``params``; None when they do not fit this space."""
        out = []
        for layer in self.layers:
            try:
                b = layer.bits.index(str(params[layer.bits_param])) if layer.bits_param else 0
                r = layer.ratios.index(float(params[layer.prune_param])) if layer.prune_param else 0
            except (KeyError, ValueError, TypeError):
                return None
            out.append((b, r))
        return out

    def _costs(self, choice: Sequence[tuple[int, int]]) -> list[tuple[float, float]]:
        return layer_costs(self.table, [c.weight_bits(b) for c, (b, _) in zip(self.layers, choice)],
                            [c.ratios[r] for c, (_, r) in zip(self.layers, choice)], self.space.channel_multiple)

    def _fits(self, choice: Sequence[tuple[int, int]]) -> bool:
        costs = self._costs(choice)
        size = sum(c[0] for c in costs) / self._fp32_size
        macs = sum(c[1] for c in costs) / self.table.total_macs
        return ((self.space.max_size_ratio is None or size <= self.space.max_size_ratio + _EPS)
                and (self.space.max_macs_ratio is None or macs <= self.space.max_macs_ratio + _EPS))

    def _clip(self, i: int, wanted: tuple[int, int], choice: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The least aggressive choice at or beyond ``wanted`` that can still meet the budget."""
        if self.space.max_size_ratio is None and self.space.max_macs_ratio is None:
            return wanted
        layer = self.layers[i]
        nb, nr = len(layer.bits), len(layer.ratios)
        trial = list(choice)
        for j in range(i + 1, len(self.layers)):
            trial[j] = (len(self.layers[j].bits) - 1, len(self.layers[j].ratios) - 1)
        candidates = sorted(((b, r) for b in range(wanted[0], nb) for r in range(wanted[1], nr)),
                            key=lambda c: (c[0] - wanted[0] + c[1] - wanted[1], c[1]))
        for candidate in candidates:
            trial[i] = candidate
            if self._fits(trial):
                return candidate
        return nb - 1, nr - 1

    # --- observations ---

    def _observation(self, t: int, choice: Sequence[tuple[int, int]]) -> np.ndarray:
        """Observation before decision ``t`` (``t == steps_per_episode``: after the last)."""
        obs = np.zeros(OBS_DIM, dtype=np.float32)
        i = self.decisions[t] if t < len(self.decisions) else len(self.layers)
        if t < len(self.decisions):
            obs[:8] = self._static[i]
            obs[8] = relative_to_bound(self._layer_sens[i], self.bound)
        else:
            obs[0] = 1.0
        if i > 0:
            prev = self.layers[i - 1]
            b, r = choice[i - 1]
            obs[9] = bin_centre(b, len(prev.bits))
            obs[10] = bin_centre(r, len(prev.ratios))
            obs[11] = relative_to_bound(sum(self._sens[j][choice[j]] for j in range(i)), self.bound)
            obs[12] = sum(c[1] for c in self._costs(choice)[:i]) / self.table.total_macs
        else:
            obs[11] = -1.0  # nothing used yet
        return np.clip(obs, -1.0, 1.0)

    def replay(self, params: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """(observation, action, next observation) per step of the episode that proposes
        ``params``, actions at the centres of the chosen bins; None if they do not fit."""
        full = self.choice_of(params)
        if full is None:
            return None
        choice = [(0, 0)] * len(self.layers)
        for i, layer in enumerate(self.layers):
            if not layer.free:
                choice[i] = full[i]
        steps = []
        for t, i in enumerate(self.decisions):
            obs = self._observation(t, choice)
            layer = self.layers[i]
            action = np.array([bin_centre(full[i][0], len(layer.bits)), bin_centre(full[i][1], len(layer.ratios))],
                              dtype=np.float32)
            choice[i] = full[i]
            steps.append((obs, action, self._observation(t + 1, choice)))
        return steps


def surrogate_reward(latency: float, loss: float, bound: float) -> float:
    """An inner episode's reward: ``-log(predicted latency ratio)`` when the summed
    sensitivity keeps within the bound (the surrogate's stand-in for the retention floor);
    beyond it ``-1 - log(loss / bound)`` (at least -5), whatever the speed, so every plan
    within the bound outranks every plan beyond it, as a feasible trial outranks an
    infeasible one."""
    if loss <= bound:
        return -math.log(max(latency, _EPS))
    if not math.isfinite(loss) or bound <= 0.0:
        return -5.0
    return -1.0 - min(4.0, math.log(loss / bound))


class SurrogateEnv(CompressionEnv):
    """The same episodes as ``CompressionEnv``, scored by the surrogate (predicted latency
    and summed sensitivity against the boundary's current bound): milliseconds each, no
    trial. Every plan it scores is remembered, for proposals."""

    def __init__(self, runner: SearchRunner, surrogate: Surrogate) -> None:
        super().__init__(runner, surrogate=surrogate)
        self.surrogate: Surrogate = surrogate
        self.seen: set[tuple[Choice, ...]] = set()
        index = {layer.name: i for i, layer in enumerate(self.layers)}
        self._space_index = [index[layer.name] for layer in self.space.layers]

    def picks(self, choice: Sequence[tuple[int, int]]) -> tuple[Choice, ...]:
        """The space's choices (``_surrogate.Choice``, in the space's layer order) of an env choice."""
        out = []
        for i in self._space_index:
            layer, (b, r) = self.layers[i], choice[i]
            out.append(Choice(layer.weight_bits(b), float(layer.ratios[r])))
        return tuple(out)

    def score(self, picks: Sequence[Choice]) -> float:
        return surrogate_reward(self.surrogate.latency(picks), self.surrogate.loss(picks), self.bound)

    def _finish(self, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        picks = self.picks(self._choice)
        self.seen.add(picks)
        return self.score(picks), {"params": params, "surrogate": True}


# --- exploration, stopping, warm start -------------------------------------------------


class DecayingNormalNoise(ActionNoise):  # type: ignore[misc]
    """Gaussian action noise whose scale shrinks by ``decay`` each episode, down to ``floor``."""

    def __init__(self, size: int, *, sigma: float = 0.5, decay: float = 0.97, floor: float = 0.15) -> None:
        super().__init__()
        self.size = size
        self.sigma = sigma
        self.decay = decay
        self.floor = floor

    def __call__(self) -> np.ndarray:
        return np.random.normal(0.0, self.sigma, self.size).astype(np.float32)

    def reset(self) -> None:  # SB3 calls this at the end of every episode
        self.sigma = max(self.floor, self.sigma * self.decay)

    def __repr__(self) -> str:
        return f"DecayingNormalNoise(sigma={self.sigma:.3f}, decay={self.decay}, floor={self.floor})"


def warm_start(model: Any, env: CompressionEnv, study: Any) -> int:
    """Fill an off-policy model's replay buffer with the study's finished trials (each
    COMPLETE trial with a result, replayed through ``env``); returns how many."""
    n = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        record = TrialRecord.from_trial(trial)
        steps = env.replay(record.params) if record.result is not None else None
        if not steps:
            continue
        _add_steps(model, steps, trial_reward(record.result, env.settings))
        n += 1
    return n


# --- agents ----------------------------------------------------------------------------


def sb3_model(algo: str, env: gym.Env, *, seed: int, steps: int, buffer_size: Callable[[], int] | int,
              noise_decay: float = 0.97) -> Any:
    """The stable-baselines3 model of a meta-RL agent (``ddpg``, ``td3``, ``sac``, ``ppo``) on
    ``env``, as the search and pretraining both build it: a 64-64 MLP, undiscounted episodes.

    ``steps`` is an episode's length: PPO's rollout is 4 episodes, off-policy agents act
    randomly for ``WARMUP_EPISODES`` episodes before they learn. ``buffer_size`` (a number,
    or a function asked only for off-policy agents) sizes their replay buffer; DDPG and TD3
    explore with ``DecayingNormalNoise`` decaying by ``noise_decay`` per episode."""
    from stable_baselines3 import DDPG, PPO, SAC, TD3

    common: dict[str, Any] = {"seed": seed, "device": "cpu", "verbose": 0, "gamma": 1.0,
                              "policy_kwargs": {"net_arch": [64, 64]}}
    if algo == "ppo":
        return PPO("MlpPolicy", env, n_steps=steps * 4, batch_size=steps * 4, **common)
    if algo not in OFF_POLICY:
        raise ValueError(f"the meta-RL agents are {', '.join((*OFF_POLICY, 'ppo'))}, not {algo!r}")
    off = {"learning_starts": steps * WARMUP_EPISODES, "train_freq": (1, "step"), "gradient_steps": 1,
           "batch_size": 64, "buffer_size": buffer_size() if callable(buffer_size) else buffer_size}
    if algo == "sac":
        return SAC("MlpPolicy", env, **off, **common)
    cls = DDPG if algo == "ddpg" else TD3
    return cls("MlpPolicy", env, action_noise=DecayingNormalNoise(2, decay=noise_decay), **off, **common)


def _build(algo: str, env: CompressionEnv, runner: SearchRunner, seed: int) -> Any:
    """The search's model: its replay buffer holds the warm start, the inner episodes and the real trials."""
    steps = env.steps_per_episode

    def buffer_size() -> int:
        history = len(runner.study.get_trials(deepcopy=False))
        return min(200_000, max(10_000, steps * (INNER_FIRST + (INNER_EACH + 1) * runner.n_trials + history + 2)))

    return sb3_model(algo, env, seed=seed, steps=steps, buffer_size=buffer_size)


WARMUP_EPISODES = 50  # random surrogate episodes before an off-policy agent learns
INNER_FIRST = 400  # surrogate episodes before the first proposal
INNER_EACH = 100  # surrogate episodes between proposals


@dataclass
class RLAgent:
    """A stable-baselines3 agent trained where training is cheap.

    Its episodes run against the surrogate (``SurrogateEnv``: the target's measured latency
    model and the per-layer sensitivities, milliseconds an episode): ``INNER_FIRST`` of them
    before the first proposal and ``INNER_EACH`` between proposals. Only its proposals
    become real trials: the plan its policy picks greedily, or, if that plan was tried
    already, the best untried plan its training visited by the surrogate's score. Every real
    trial corrects the latency model and moves the boundary (where the floor lies on
    summed sensitivity), and off-policy agents take it into their replay buffer with its
    real reward. The settings are the same for every network.

    After ``run``: ``model`` is the trained SB3 model, ``warm_started`` the number of
    earlier trials its replay buffer was filled with, and ``surrogate`` what it learnt.
    """

    name: str
    context: AgentContext
    model: Any = field(default=None, repr=False)
    warm_started: int = 0
    surrogate: Surrogate | None = field(default=None, repr=False)
    proposals: list[str] = field(default_factory=list)  # how each proposal was chosen
    pretrained: dict[str, Any] | None = None  # the metadata of the pretrained weights it started from
    warm_bound: float = 1.0  # the bound the replayed earlier trials were observed against

    def sampler(self) -> Any:
        return ProposalSampler()

    def run(self, runner: SearchRunner) -> None:
        if runner.remaining() <= 0:
            return
        space, problem = self.context.space, runner.problem
        self.surrogate = surrogate = Surrogate(space, problem.table, latency_model(problem, space),
                                               sensitivities(problem.output_loss_of, space,
                                                             folder=self.context.folder))
        real = CompressionEnv(runner, surrogate=surrogate)
        env = SurrogateEnv(runner, surrogate)
        probe = SurrogateEnv(runner, surrogate)  # greedy rollouts, apart from the env SB3 steps
        probe.seen = env.seen
        tried = self._history(runner, env, surrogate)
        envs = (real, env, probe)
        for e in envs:
            e.bound = surrogate.boundary.bound()
        self.warm_bound = real.bound
        self.model = model = _build(self.name, env, runner, self.context.run_seed)
        self.pretrained = self._load_pretrained(model)
        pretrained = bool(self.pretrained and self.pretrained.get("used"))
        if self.name in OFF_POLICY:
            self.warm_started = warm_start(model, real, runner.study)
        rng = np.random.default_rng(self.context.run_seed)
        # Pretrained weights propose once before any fine-tuning (zero-shot), then fine-tune.
        episodes = 0 if pretrained else INNER_FIRST
        first = True
        try:
            while runner.remaining() > 0:
                for e in envs:
                    e.bound = surrogate.boundary.bound()
                if episodes:
                    model.learn(total_timesteps=env.steps_per_episode * episodes, reset_num_timesteps=first,
                                progress_bar=False)
                    first = False
                episodes = INNER_FIRST if first and not pretrained else INNER_EACH
                picks = self._propose(model, probe, tried, rng, allow_random=not first)
                if picks is None:  # the pretrained policy's own plan breaks the bound: fine-tune first
                    model.learn(total_timesteps=env.steps_per_episode * INNER_FIRST, reset_num_timesteps=True,
                                progress_bar=False)
                    first, episodes = False, INNER_EACH
                    picks = self._propose(model, probe, tried, rng)
                assert picks is not None
                outcome = runner.run_trial(space.params(plan_of(space, picks)))
                if outcome is None:
                    break
                tried.add(picks)
                surrogate.observe(picks, outcome.result, runner.settings.min_retention, cached=outcome.cached)
                if self.name in OFF_POLICY and outcome.result is not None:
                    _add_episode(model, real, outcome.params, trial_reward(outcome.result, runner.settings))
        finally:
            if self.context.folder is not None:
                write_json(self.context.folder / f"{self.name}_surrogate.json",
                           {**surrogate.report(), "proposals": self.proposals, "pretrained": self.pretrained})

    def _load_pretrained(self, model: Any) -> dict[str, Any] | None:
        """The shipped pretrained weights for this algorithm, loaded into ``model`` (None when
        there are none, or when they were made for another observation layout)."""
        loaded = load_weights(self.name, model, obs_version=OBS_VERSION, obs_dim=OBS_DIM)
        if loaded is None or not loaded["used"]:
            return loaded
        if self.name in OFF_POLICY:
            model.learning_starts = 0  # the policy is already trained: fine-tune from the first step
            if isinstance(model.action_noise, DecayingNormalNoise):
                model.action_noise.sigma = model.action_noise.floor
        return loaded

    def _history(self, runner: SearchRunner, env: SurrogateEnv, surrogate: Surrogate) -> set[tuple[Choice, ...]]:
        """Plans the study measured already (a resumed or shared search) correct the surrogate."""
        tried: set[tuple[Choice, ...]] = set()
        for trial in runner.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            record = TrialRecord.from_trial(trial)
            choice = env.choice_of(record.params)
            if choice is None or record.result is None:
                continue
            picks = env.picks(choice)
            tried.add(picks)
            surrogate.observe(picks, record.result, runner.settings.min_retention, cached=record.repeat)
        return tried

    def _propose(self, model: Any, env: SurrogateEnv, tried: set[tuple[Choice, ...]],
                 rng: np.random.Generator, *, allow_random: bool = True) -> tuple[Choice, ...] | None:
        """The next plan to try for real: the policy's greedy plan if it keeps within the bound
        and is new, else the fastest new plan its training visited within the bound. Failing
        both: None when ``allow_random`` is off (the policy has not trained on this network
        yet), else the least sensitive visited plan, else a random one."""
        obs, _ = env.reset()
        for _ in range(env.steps_per_episode):
            action, _ = model.predict(obs, deterministic=True)
            obs, *_ = env.step(action)
        greedy = env.picks(env._choice)
        surrogate = env.surrogate
        if greedy not in tried and not plan_of(env.space, greedy).is_identity \
                and surrogate.loss(greedy) <= env.bound:
            zero_shot = bool(self.pretrained and self.pretrained.get("used")) and not self.proposals
            self.proposals.append("zero-shot" if zero_shot else "greedy")
            return greedy
        fresh = [p for p in env.seen if p not in tried and not plan_of(env.space, p).is_identity]
        within = [p for p in fresh if surrogate.loss(p) <= env.bound]
        if within:  # the fastest plan its training visited that keeps within the bound
            self.proposals.append("visited")
            return min(within, key=lambda p: (surrogate.latency(p), surrogate.loss(p), repr(p)))
        if not allow_random:  # nothing the policy knows keeps within the bound: it must learn first
            return None
        if fresh:  # none keeps within: the least sensitive one
            self.proposals.append("visited")
            return min(fresh, key=lambda p: (surrogate.loss(p), surrogate.latency(p), repr(p)))
        self.proposals.append("random")
        return tuple(layer[int(rng.integers(len(layer)))] for layer in layer_choices(env.space))


def _add_episode(model: Any, env: CompressionEnv, params: Mapping[str, Any], reward: float) -> None:
    """A real trial's episode into an off-policy model's replay buffer."""
    _add_steps(model, env.replay(params) or [], reward)


def _add_steps(model: Any, steps: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], reward: float) -> None:
    """One episode's (observation, action, next observation) steps into the replay buffer,
    the reward on its last step."""
    for k, (obs, action, nxt) in enumerate(steps):
        last = k == len(steps) - 1
        model.replay_buffer.add(obs[None], nxt[None], action[None], np.array([reward if last else 0.0]),
                                np.array([last]), [{}])
