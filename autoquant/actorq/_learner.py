"""The learner of ``autoquant actorq run``: an fp32 stable-baselines3 DQN fed by actors.

The learner is a stable-baselines3 ``DQN`` with the bundle's network (``MlpPolicy`` with
the bundle's ``net_arch``, or ``CnnPolicy`` for the Nature CNN), trained from scratch
unless ``init_from_policy`` names a policy file. ``DQNLearner.ingest`` does what
``DQN.learn`` does per env step, for every transition an actor returns:
``num_timesteps``, progress remaining, ``_on_step`` (target network, exploration
schedule), and ``train(gradient_steps, batch_size)`` every ``train_freq`` steps past
``learning_starts``. Hyperparameters come from rl-zoo3's presets (``dqn_preset``).

``DQN_LEARNER`` is its entry in the learner registry (``_learners``): the loop drives it
asynchronously, ingesting each actor's chunk as it arrives.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant._limits import MAX_BATCH_SIZE, MAX_BUFFER_SIZE, MAX_STEPS, check_integer
from autoquant.actorq._bundle import ActorBundle, conv_strides
from autoquant.actorq._learners import NON_RELU_ACTIVATIONS, LearnerEntry, LearnerOption
from autoquant.errors import EnvMismatchError, NetworkMismatchError, UsageError

__all__ = [
    "DQN_LEARNER",
    "DQN_PRESETS",
    "DQNConfig",
    "DQNLearner",
    "dqn_preset",
    "init_from_policy",
    "learner_policy",
    "learner_weights",
    "make_learner",
]


@dataclass(frozen=True)
class DQNConfig:
    """The learner's DQN hyperparameters (SB3's names and meanings)."""

    learning_rate: float = 1e-4
    buffer_size: int = 1_000_000
    learning_starts: int = 100
    batch_size: int = 32
    gamma: float = 0.99
    train_freq: int = 4
    gradient_steps: int = 1
    target_update_interval: int = 10_000
    tau: float = 1.0
    exploration_fraction: float = 0.1
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05
    max_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        for name, low, high in (("buffer_size", 1, MAX_BUFFER_SIZE), ("batch_size", 1, MAX_BATCH_SIZE),
                                ("train_freq", 1, MAX_STEPS), ("gradient_steps", 1, 100_000),
                                ("target_update_interval", 1, MAX_STEPS), ("learning_starts", 0, MAX_STEPS)):
            check_integer(getattr(self, name), f"DQN {name}", low, high)
        if not self.learning_rate > 0:
            raise UsageError(f"DQN learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("gamma", "tau", "exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"DQN {name} must be in [0, 1], got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# rl-zoo3's DQN hyperparameters (hyperparams/dqn.yml); other envs get SB3's DQN defaults.
DQN_PRESETS: dict[str, DQNConfig] = {
    "CartPole-v1": DQNConfig(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000,
                             gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
                             exploration_fraction=0.16, exploration_final_eps=0.04),
    "LunarLander-v3": DQNConfig(learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0,
                                gamma=0.99, target_update_interval=250, train_freq=4,
                                gradient_steps=4,  # the zoo's -1: as many as the rollout's env steps
                                exploration_fraction=0.12, exploration_final_eps=0.1),
    "atari": DQNConfig(learning_rate=1e-4, batch_size=32, buffer_size=100_000, learning_starts=100_000,
                       gamma=0.99, target_update_interval=1000, train_freq=4, gradient_steps=1,
                       exploration_fraction=0.1, exploration_final_eps=0.01),
}


def dqn_preset(env_id: str) -> tuple[str, DQNConfig]:
    """(where the values come from, the hyperparameters) for ``env_id``."""
    from autoquant.policy import canonical_env_id, is_atari

    env_id = canonical_env_id(env_id)
    if env_id in DQN_PRESETS:
        return f"rl-zoo3 dqn.yml {env_id}", DQN_PRESETS[env_id]
    if is_atari(env_id):
        return "rl-zoo3 dqn.yml atari", DQN_PRESETS["atari"]
    return "stable-baselines3 DQN defaults", DQNConfig()


def _learner_layers(model: Any) -> list[Any]:
    import torch

    return [m for m in model.q_net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def learner_policy(bundle: ActorBundle) -> tuple[str, dict[str, Any]]:
    """SB3 DQN policy class and kwargs that build the bundle's network."""
    layers = bundle.manifest["fingerprint"]["layers"]
    if all(layer["type"] == "linear" for layer in layers):
        return "MlpPolicy", {"net_arch": [int(layer["weight_shape"][0]) for layer in layers[:-1]]}
    convs = [layer for layer in layers if layer["type"] == "conv"]
    linears = [layer for layer in layers if layer["type"] == "linear"]
    if len(convs) == 3 and len(linears) == 2 and layers[:3] == convs:
        return "CnnPolicy", {"net_arch": [], "features_extractor_kwargs": {
            "features_dim": int(linears[0]["weight_shape"][0])}}
    names = [f"{layer['name']}:{layer['type']}" for layer in layers]
    raise NetworkMismatchError(f"the bundle's network {names} is not one SB3's DQN builds (an MLP, or the "
                               "Nature CNN: 3 convs and 2 linear layers): actorq run cannot make its learner")


def make_learner(bundle: ActorBundle, env_id: str, hyper: DQNConfig, *, seed: int) -> Any:
    """An SB3 DQN with the bundle's network, a silent logger, and its layers checked."""
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.logger import Logger

    from autoquant.policy import make_env

    policy, kwargs = learner_policy(bundle)
    env = make_env(env_id)
    space = env.observation_space
    if tuple(space.shape) != bundle.input_shape:
        raise EnvMismatchError(f"{env_id} observations have shape {tuple(space.shape)}, the bundle's network takes "
                               f"{bundle.input_shape}: pass the env the bundle was made for")
    n_actions = getattr(env.action_space, "n", None)
    head = int(bundle.manifest["fingerprint"]["layers"][-1]["weight_shape"][0])
    if n_actions is None or int(n_actions) != head:
        raise EnvMismatchError(f"{env_id} has action space {env.action_space}, the bundle's network outputs {head} "
                               "Q-values: pass the env the bundle was made for")
    values = hyper.to_json()
    values.pop("exploration_initial_eps")
    model = DQN(policy, env, policy_kwargs=kwargs, exploration_initial_eps=hyper.exploration_initial_eps,
                seed=seed, device="cpu", verbose=0, **values)
    model.set_logger(Logger(folder=None, output_formats=[]))
    fingerprint = bundle.manifest["fingerprint"]["layers"]
    modules = _learner_layers(model)
    shapes = [tuple(m.weight.shape) for m in modules]
    wanted = [tuple(layer["weight_shape"]) for layer in fingerprint]
    if shapes != wanted:
        raise NetworkMismatchError(f"SB3's {policy} for {env_id} has layers {shapes}, the bundle's network "
                                   f"{wanted} (fingerprint {bundle.fingerprint_id}): export a bundle of this network")
    if policy == "CnnPolicy":  # the same strides too: the learner's convs against the bundle's shapes
        for module, layer in zip(modules, fingerprint):
            if isinstance(module, torch.nn.Conv2d) and list(module.stride) != conv_strides(layer):
                raise NetworkMismatchError(f"layer {layer['name']}: SB3's Nature CNN stride {list(module.stride)} "
                                           "does not give the bundle's shapes")
    return model


def learner_weights(model: Any, bundle: ActorBundle) -> dict[str, np.ndarray]:
    """The learner's q_net weights as numpy arrays under the bundle's state-dict keys (layers in order)."""
    out: dict[str, np.ndarray] = {}
    for module, layer in zip(_learner_layers(model), bundle.manifest["fingerprint"]["layers"]):
        out[layer["weight_key"]] = module.weight.detach().cpu().numpy().copy()
        if layer["bias_key"] is not None:
            out[layer["bias_key"]] = module.bias.detach().cpu().numpy().copy()
    return out


def init_from_policy(model: Any, path: str, env_id: str) -> dict[str, Any]:
    """Copy a policy file's network (any layout autoquant loads) into the learner, layer by layer."""
    import torch

    from autoquant.policy import load_policy

    source = load_policy(path, env_id=env_id)
    theirs = [m for m in source.net.children() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ours = _learner_layers(model)
    got = [tuple(m.weight.shape) for m in theirs]
    want = [tuple(m.weight.shape) for m in ours]
    if got != want:
        raise NetworkMismatchError(f"--init-from-policy {path} has layers {got}, the learner {want}: pass a policy "
                                   "of the bundle's network")
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.weight.copy_(b.weight)
            if a.bias is not None:
                a.bias.copy_(b.bias if b.bias is not None else torch.zeros_like(a.bias))
    model.q_net_target.load_state_dict(model.q_net.state_dict())
    return {"path": str(path), "algo": source.algo}


class DQNLearner:
    """What ``DQN.learn`` does per env step, for transitions that actors collected."""

    def __init__(self, model: Any, hyper: DQNConfig, total_steps: int, *, init: dict[str, Any] | None = None) -> None:
        self.model = model
        self.hyper = hyper
        self.total = total_steps
        self.init = init  # what init_from_policy copied in, or None: from scratch
        self.since_train = 0
        self.updates = 0
        self.train_s = 0.0
        self.ingest_s = 0.0

    @property
    def epsilon(self) -> float:
        """The exploration rate actors use now (1.0, random actions, before learning_starts)."""
        if self.model.num_timesteps < self.hyper.learning_starts:
            return 1.0
        return float(self.model.exploration_rate)

    def recent_states(self, n: int = 1000) -> np.ndarray | None:
        """The last ``n`` states of the replay buffer, newest first (None while it is empty)."""
        buffer = self.model.replay_buffer
        size = buffer.buffer_size if buffer.full else buffer.pos
        if size == 0:
            return None
        index = (buffer.pos - 1 - np.arange(min(n, size))) % buffer.buffer_size
        return buffer.observations[index, 0]

    def ingest(self, r: Mapping[str, Any]) -> None:
        """An actor's chunk, (rounds, envs) arrays, one transition at a time in step order."""
        model, buffer = self.model, self.model.replay_buffer
        start = time.perf_counter()
        flat = {key: np.asarray(r[key]).reshape(-1, *np.shape(r[key])[2:])
                for key in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")}
        for i in range(len(flat["actions"])):
            term, trunc = bool(flat["terminated"][i]), bool(flat["truncated"][i])
            buffer.add(flat["obs"][i:i + 1], flat["next_obs"][i:i + 1], flat["actions"][i:i + 1],
                       flat["rewards"][i:i + 1], np.array([term or trunc]), [{"TimeLimit.truncated": trunc and not term}])
            model.num_timesteps += 1
            model._update_current_progress_remaining(model.num_timesteps, self.total)
            model._on_step()
            self.since_train += 1
            if self.since_train >= self.hyper.train_freq:
                self.since_train = 0
                if model.num_timesteps > self.hyper.learning_starts:
                    self.ingest_s += time.perf_counter() - start
                    self._train()
                    start = time.perf_counter()
        self.ingest_s += time.perf_counter() - start

    def _train(self) -> None:
        start = time.perf_counter()
        self.model.train(gradient_steps=self.hyper.gradient_steps, batch_size=self.hyper.batch_size)
        self.model.policy.set_training_mode(False)
        self.train_s += time.perf_counter() - start
        self.updates += self.hyper.gradient_steps



# --- its entry in the learner registry ---------------------------------------------------


def _make(bundle: ActorBundle, env_id: str, hyper: DQNConfig, run: Any) -> DQNLearner:
    """The DQN learner of an ``actorq run`` (``run``: its ActorRunConfig), from
    ``run.init_from_policy``'s weights when it names a policy."""
    model = make_learner(bundle, env_id, hyper, seed=run.seed)
    init = init_from_policy(model, run.init_from_policy, env_id) if run.init_from_policy else None
    return DQNLearner(model, hyper, run.steps, init=init)


def _drive(loop: Any) -> dict[str, Any]:
    return loop.run_async()  # type: ignore[no-any-return]


def _weights(learner: DQNLearner, bundle: ActorBundle) -> dict[str, np.ndarray]:
    return learner_weights(learner.model, bundle)


def _facts(learner: DQNLearner, bundle: ActorBundle, run: Any) -> dict[str, Any]:
    policy, kwargs = learner_policy(bundle)
    return {"algo": "DQN", "policy": policy, "policy_kwargs": kwargs}


def _check_network(bundle: ActorBundle, ops: set[str]) -> None:
    other = sorted(ops & NON_RELU_ACTIVATIONS)
    if other:
        raise NetworkMismatchError(f"the bundle's network uses {other}; SB3's DQN learner uses ReLU: "
                                   "export a bundle of a ReLU network")


DQN_LEARNER = LearnerEntry(
    name="dqn",
    help="SB3 DQN, for Q-value networks: each actor's chunk is ingested as it arrives",
    config=DQNConfig,
    preset=dqn_preset,
    make=_make,
    drive=_drive,
    weights=_weights,
    facts=_facts,
    behaviour="epsilon-greedy with the learner's exploration rate",
    trains="Q-value networks",
    outputs="Q-values",
    natural=("dqn", "torch", "torchscript"),
    check_network=_check_network,
    options=(
        LearnerOption("--learning-rate", "learning_rate", float, "Adam learning rate"),
        LearnerOption("--batch-size", "batch_size", int, f"gradient step size, at most {MAX_BATCH_SIZE:,}",
                      1, MAX_BATCH_SIZE),
        LearnerOption("--gamma", "gamma", float, "discount"),
        LearnerOption("--buffer-size", "buffer_size", int, f"replay buffer transitions, at most {MAX_BUFFER_SIZE:,}",
                      1, MAX_BUFFER_SIZE),
        LearnerOption("--learning-starts", "learning_starts", int, "env steps of random actions before training",
                      0, MAX_STEPS),
        LearnerOption("--train-freq", "train_freq", int, "env steps between training rounds", 1, MAX_STEPS),
        LearnerOption("--gradient-steps", "gradient_steps", int,
                      "gradient steps per training round, at most 100,000", 1, 100_000),
        LearnerOption("--target-update-interval", "target_update_interval", int,
                      "env steps between target network updates", 1, MAX_STEPS),
        LearnerOption("--exploration-fraction", "exploration_fraction", float,
                      "share of the steps over which epsilon decays"),
        LearnerOption("--exploration-final-eps", "exploration_final_eps", float, "final epsilon"),
    ),
)
