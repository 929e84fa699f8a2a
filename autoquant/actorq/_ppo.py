"""The on-policy learner of ``autoquant actorq run``: an fp32 SB3 PPO fed by quantized actors.

Each iteration the learner broadcasts its weights; every actor steps its envs ``n_steps``
times, sampling actions from its own (quantized) policy's softmax, and ships each
action's log-probability under that behaviour policy. The learner fills SB3's rollout
buffer (values, and the log-probabilities of its own policy at broadcast time), computes
GAE and trains with ``PPO.train``.

Actors that act with a quantized copy are slightly off-policy: the samples come from
mu, the quantized policy, not from pi_old, the learner's. ``correction="tis"`` applies
truncated importance sampling (as FlashRL does for quantized rollouts): each sample's
advantage, normalized over the rollout, is multiplied by ``min(pi_old / mu, C)``, which
is exactly the clipped surrogate loss weighted per sample; ``"none"`` trusts the actors.
``PPO.train`` is used as it is, with its per-minibatch normalization off (the weights
would be undone by it); returns for the value loss are GAE's, unweighted.

``PPO_LEARNER`` is its entry in the learner registry (``_learners``): the loop drives it
synchronously, one iteration per broadcast.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant._limits import MAX_ACTORS, MAX_BATCH_SIZE, MAX_ENVS, MAX_STEPS, check_integer
from autoquant.actorq._actors import hidden_activation
from autoquant.actorq._bundle import ActorBundle
from autoquant.actorq._learners import NON_RELU_ACTIVATIONS, LearnerEntry, LearnerOption
from autoquant.errors import EnvMismatchError, NetworkMismatchError, UsageError

__all__ = ["CORRECTIONS", "PPO_LEARNER", "PPO_PRESETS", "PPOConfig", "PPOLearner", "make_ppo_learner", "ppo_preset",
           "ppo_policy_kwargs"]

CORRECTIONS = ("tis", "none")


@dataclass(frozen=True)
class PPOConfig:
    """The learner's PPO hyperparameters (SB3's names; ``n_steps`` per env). ``linear_schedule``
    anneals the learning rate and clip range linearly to 0, as rl-zoo3's ``lin_`` values do."""

    learning_rate: float = 3e-4
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    linear_schedule: bool = False
    n_envs: int = 1  # envs of the preset's run (actors x envs per actor should match it)

    def __post_init__(self) -> None:
        for name, high in (("n_steps", MAX_STEPS), ("batch_size", MAX_BATCH_SIZE), ("n_epochs", 1000),
                           ("n_envs", MAX_ACTORS * MAX_ENVS)):
            check_integer(getattr(self, name), f"PPO {name}", 1, high)
        if not self.learning_rate > 0:
            raise UsageError(f"PPO learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("gamma", "gae_lambda", "clip_range"):
            value = float(getattr(self, name))
            if not 0.0 < value <= 1.0:
                raise UsageError(f"PPO {name} must be in (0, 1], got {value!r}")
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            if float(getattr(self, name)) < 0:
                raise UsageError(f"PPO {name} must be >= 0, got {getattr(self, name)!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# rl-zoo3's PPO hyperparameters (hyperparams/ppo.yml); other envs get SB3's PPO defaults.
PPO_PRESETS: dict[str, PPOConfig] = {
    "CartPole-v1": PPOConfig(learning_rate=1e-3, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98,
                             gae_lambda=0.8, clip_range=0.2, ent_coef=0.0, linear_schedule=True, n_envs=8),
    "LunarLander-v3": PPOConfig(learning_rate=3e-4, n_steps=1024, batch_size=64, n_epochs=4, gamma=0.999,
                                gae_lambda=0.98, clip_range=0.2, ent_coef=0.01, n_envs=16),
}


def ppo_preset(env_id: str) -> tuple[str, PPOConfig]:
    """(where the values come from, the hyperparameters) for ``env_id``."""
    from autoquant.policy import canonical_env_id

    env_id = canonical_env_id(env_id)
    if env_id in PPO_PRESETS:
        return f"rl-zoo3 ppo.yml {env_id}", PPO_PRESETS[env_id]
    return "stable-baselines3 PPO defaults", PPOConfig()


def ppo_policy_kwargs(bundle: ActorBundle, activation: str) -> dict[str, Any]:
    """SB3 ``MlpPolicy`` kwargs whose policy network is the bundle's (the value network mirrors it)."""
    import torch

    layers = bundle.manifest["fingerprint"]["layers"]
    keys = [layer["weight_key"] for layer in layers]
    hidden = [int(layer["weight_shape"][0]) for layer in layers[:-1]]
    want = [f"mlp_extractor.policy_net.{2 * i}.weight" for i in range(len(hidden))] + ["action_net.weight"]
    if any(layer["type"] != "linear" for layer in layers) or keys != want:
        raise NetworkMismatchError(f"the bundle's network {keys} is not an SB3 PPO MlpPolicy's policy network "
                                   f"({want}): the PPO learner supports MLP policies exported from SB3 PPO")
    return {"net_arch": {"pi": hidden, "vf": hidden},
            "activation_fn": {"Tanh": torch.nn.Tanh, "Relu": torch.nn.ReLU}[activation]}


def make_ppo_learner(bundle: ActorBundle, env_id: str, hyper: PPOConfig, *, activation: str, seed: int) -> Any:
    """An SB3 PPO with the bundle's policy network and a silent logger, its layers checked."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    from autoquant.policy import make_env

    if bundle.manifest["policy"]["action"]["kind"] != "argmax":
        raise UsageError("the PPO learner supports discrete actions; the bundle's policy is continuous")
    kwargs = ppo_policy_kwargs(bundle, activation)
    env = make_env(env_id)
    if tuple(env.observation_space.shape) != bundle.input_shape:
        raise EnvMismatchError(f"{env_id} observations have shape {tuple(env.observation_space.shape)}, the "
                               f"bundle's network takes {bundle.input_shape}: pass the env the bundle was made for")
    head = int(bundle.manifest["fingerprint"]["layers"][-1]["weight_shape"][0])
    if int(getattr(env.action_space, "n", -1)) != head:
        raise EnvMismatchError(f"{env_id} has action space {env.action_space}, the bundle's network outputs {head} "
                               "logits: pass the env the bundle was made for")

    def schedule(value: float) -> Any:
        return (lambda progress: progress * value) if hyper.linear_schedule else value

    model = PPO("MlpPolicy", env, learning_rate=schedule(hyper.learning_rate), n_steps=hyper.n_steps,
                batch_size=hyper.batch_size, n_epochs=hyper.n_epochs, gamma=hyper.gamma, gae_lambda=hyper.gae_lambda,
                clip_range=schedule(hyper.clip_range), ent_coef=hyper.ent_coef, vf_coef=hyper.vf_coef,
                max_grad_norm=hyper.max_grad_norm, normalize_advantage=False, policy_kwargs=kwargs, seed=seed,
                device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    state = model.policy.state_dict()
    for layer in bundle.manifest["fingerprint"]["layers"]:
        got = tuple(state[layer["weight_key"]].shape)
        if got != tuple(layer["weight_shape"]):
            raise NetworkMismatchError(f"SB3's PPO {layer['weight_key']} has shape {got}, the bundle's "
                                       f"{tuple(layer['weight_shape'])}: export a bundle of this network")
    return model


class SampledPolicyLearner:
    """What a learner whose actors sample from their own softmax shares (PPO, IMPALA): the
    bundle's keys, the steps per request, the broadcast weights and the learner's log pi.
    ``model`` (an SB3 actor-critic), ``hyper`` (with ``n_steps``) and ``keys`` are set by
    the subclass."""

    model: Any
    hyper: Any
    keys: list[str]

    epsilon = None  # actors sample from their own policy (ActorWorker.collect's on-policy behaviour)
    init = None  # it starts from scratch

    @property
    def rounds(self) -> int:
        """Steps each env of each actor takes per request."""
        return int(self.hyper.n_steps)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The policy network's weights under the bundle's keys (what each broadcast sends)."""
        state = self.model.policy.state_dict()
        return {key: state[key].detach().cpu().numpy().copy() for key in self.keys}

    def log_probs(self, states: np.ndarray) -> np.ndarray:
        """log pi(.|x) of the learner's policy for a batch of states, (N, actions)."""
        import torch

        with torch.no_grad():
            dist = self.model.policy.get_distribution(torch.as_tensor(np.asarray(states, dtype=np.float32)))
            return dist.distribution.logits.numpy().astype(np.float64)  # torch's Categorical: normalized

    def network_facts(self) -> dict[str, Any]:
        """The report's description of the learner's network."""
        kwargs = {k: (v.__name__ if isinstance(v, type) else v) for k, v in self.model.policy_kwargs.items()}
        return {"policy": "MlpPolicy", "policy_kwargs": kwargs}


def policy_weights(learner: SampledPolicyLearner, bundle: ActorBundle) -> dict[str, np.ndarray]:
    """What a broadcast of a sampled-policy learner sends (a registry entry's ``weights``)."""
    return learner.state_dict()


def bundle_keys(bundle: ActorBundle) -> list[str]:
    """The state-dict keys of the bundle's layers, weights and biases, in order."""
    return [key for layer in bundle.manifest["fingerprint"]["layers"]
            for key in (layer["weight_key"], layer["bias_key"]) if key is not None]


class PPOLearner(SampledPolicyLearner):
    """One PPO iteration per broadcast: the actors' rollouts in, ``PPO.train`` on them."""

    def __init__(self, model: Any, hyper: PPOConfig, bundle: ActorBundle, total_steps: int, *, n_envs: int,
                 correction: str, truncation: float) -> None:
        from stable_baselines3.common.buffers import RolloutBuffer

        if correction not in CORRECTIONS:
            raise UsageError(f"--correction {correction!r} is not one of {', '.join(CORRECTIONS)}")
        if not truncation >= 1.0:
            raise UsageError(f"--is-truncation must be >= 1 (the largest importance weight), got {truncation!r}")
        self.model = model
        self.hyper = hyper
        self.keys = bundle_keys(bundle)
        self.total = total_steps
        self.n_envs = n_envs
        self.correction = correction
        self.truncation = float(truncation)
        model.rollout_buffer = RolloutBuffer(hyper.n_steps, model.observation_space, model.action_space,
                                             device=model.device, gamma=hyper.gamma, gae_lambda=hyper.gae_lambda,
                                             n_envs=n_envs)
        self.updates = 0
        self.iterations = 0
        self.train_s = 0.0
        self.ingest_s = 0.0
        self.weights: list[dict[str, float]] = []  # per iteration: importance-weight statistics

    def iterate(self, rollouts: Sequence[Mapping[str, Any]]) -> None:
        """One PPO update from one rollout per actor (arrays shaped (n_steps, envs, ...))."""
        import torch

        model, hyper, buffer = self.model, self.hyper, self.model.rollout_buffer
        start = time.perf_counter()

        def cat(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(r[key]) for r in rollouts], axis=1)

        obs, actions, rewards = cat("obs"), cat("actions"), cat("rewards").astype(np.float32)
        terminated, truncated, starts = cat("terminated"), cat("truncated"), cat("episode_starts")
        behaviour = cat("log_probs")
        steps, envs = actions.shape
        if envs != self.n_envs or steps != hyper.n_steps:
            raise UsageError(f"a PPO rollout of {steps} x {envs} does not fill the buffer ({hyper.n_steps} steps x "
                             f"{self.n_envs} envs)")
        policy = model.policy
        policy.set_training_mode(False)
        with torch.no_grad():
            flat_obs = torch.as_tensor(obs.reshape(steps * envs, *obs.shape[2:]), dtype=torch.float32)
            flat_actions = torch.as_tensor(actions.reshape(-1))
            values, log_probs, _ = policy.evaluate_actions(flat_obs, flat_actions)
            values = values.reshape(steps, envs)
            log_probs = log_probs.reshape(steps, envs)
            # Time limits: bootstrap from the value of the state the episode was cut at (as SB3 does).
            cut = truncated & ~terminated
            if cut.any():
                final = torch.as_tensor(cat("next_obs")[cut], dtype=torch.float32)
                rewards[cut] += hyper.gamma * policy.predict_values(final).flatten().numpy()
            last = torch.as_tensor(np.concatenate([np.asarray(r["last_obs"]) for r in rollouts]),
                                   dtype=torch.float32)
            last_values = policy.predict_values(last).flatten()
        buffer.reset()
        for t in range(steps):
            buffer.add(obs[t], actions[t][:, None], rewards[t], starts[t], values[t], log_probs[t])
        buffer.compute_returns_and_advantage(last_values=last_values, dones=terminated[-1] | truncated[-1])
        rho = np.exp(log_probs.numpy().astype(np.float64) - behaviour)
        advantages = buffer.advantages
        advantages[:] = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        weight = np.minimum(rho, self.truncation) if self.correction == "tis" else np.ones_like(rho)
        advantages *= weight.astype(advantages.dtype)
        self.weights.append({"rho_mean": float(rho.mean()), "rho_min": float(rho.min()),
                             "rho_max": float(rho.max()), "truncated": float(np.mean(rho > self.truncation)),
                             "kl_behaviour": float(np.mean(behaviour - log_probs.numpy()))})
        model.num_timesteps += steps * envs
        model._update_current_progress_remaining(model.num_timesteps, self.total)
        self.ingest_s += time.perf_counter() - start
        start = time.perf_counter()
        model.train()
        policy.set_training_mode(False)
        self.train_s += time.perf_counter() - start
        batches = -(-steps * envs // hyper.batch_size)
        self.updates += hyper.n_epochs * batches
        self.iterations += 1


# --- its entry in the learner registry ---------------------------------------------------


def _make(bundle: ActorBundle, env_id: str, hyper: PPOConfig, run: Any) -> PPOLearner:
    """The PPO learner of an ``actorq run`` (``run``: its ActorRunConfig): one rollout buffer
    column per env of every actor."""
    if run.init_from_policy:
        raise UsageError("actorq run: --init-from-policy starts a DQN learner; the PPO learner starts "
                         "from scratch")
    correction = run.correction or "tis"
    if correction not in CORRECTIONS:
        raise UsageError(f"actorq run: --correction {correction} is not the PPO learner's: it corrects with "
                         f"{' or '.join(CORRECTIONS)}")
    model = make_ppo_learner(bundle, env_id, hyper, activation=hidden_activation(bundle), seed=run.seed)
    return PPOLearner(model, hyper, bundle, run.steps, n_envs=run.actors * run.envs_per_actor,
                      correction=correction, truncation=run.is_truncation)


def _drive(loop: Any) -> dict[str, Any]:
    return loop.run_sync("every PPO iteration")  # type: ignore[no-any-return]


def _facts(learner: PPOLearner, bundle: ActorBundle, run: Any) -> dict[str, Any]:
    return {"algo": "PPO", **learner.network_facts(),
            "correction": learner.correction if not run.fp32_actors else "none (fp32 actors)",
            "is_truncation": run.is_truncation, "iterations": learner.iterations,
            "importance_weights": _weight_summary(learner.weights)}


def _weight_summary(weights: Sequence[Mapping[str, float]]) -> dict[str, Any] | None:
    """Importance weights pi_old / mu over the run: mean of the per-iteration means, extremes,
    the share above the truncation, and the mean log-ratio (KL of the actors' policy from the learner's)."""
    if not weights:
        return None
    return {"rho_mean": float(np.mean([w["rho_mean"] for w in weights])),
            "rho_min": float(min(w["rho_min"] for w in weights)),
            "rho_max": float(max(w["rho_max"] for w in weights)),
            "truncated_share": float(np.mean([w["truncated"] for w in weights])),
            "kl_behaviour": float(np.mean([w["kl_behaviour"] for w in weights])),
            "iterations": len(weights)}


def check_policy_network(bundle: ActorBundle, ops: set[str]) -> None:
    """Refuse a bundle whose network a sampled-policy learner cannot build (ReLU or Tanh only)."""
    other = sorted(op for op in ops & NON_RELU_ACTIVATIONS if op != "Tanh")
    if other:
        raise NetworkMismatchError(f"the bundle's network uses {other}; the PPO learner builds ReLU or Tanh "
                                   "networks: export a bundle of one")


PPO_LEARNER = LearnerEntry(
    name="ppo",
    help="SB3 PPO, for discrete policies: one iteration per broadcast, corrected for quantized actors (--correction)",
    config=PPOConfig,
    preset=ppo_preset,
    make=_make,
    drive=_drive,
    weights=policy_weights,
    facts=_facts,
    behaviour="softmax samples with log-probs",
    trains="discrete policies",
    outputs="policy logits",
    natural=("ppo", "a2c"),
    check_network=check_policy_network,
    options=(
        LearnerOption("--learning-rate", "learning_rate", float, "Adam learning rate"),
        LearnerOption("--batch-size", "batch_size", int, f"minibatch size, at most {MAX_BATCH_SIZE:,}",
                      1, MAX_BATCH_SIZE),
        LearnerOption("--gamma", "gamma", float, "discount"),
        LearnerOption("--n-steps", "n_steps", int, "steps per env per iteration", 1, MAX_STEPS),
        LearnerOption("--n-epochs", "n_epochs", int, "epochs over each rollout, at most 1000", 1, 1000),
        LearnerOption("--gae-lambda", "gae_lambda", float, "GAE lambda"),
        LearnerOption("--clip-range", "clip_range", float, "clip range"),
        LearnerOption("--ent-coef", "ent_coef", float, "entropy coefficient"),
    ),
)
