"""The asynchronous learner of ``autoquant actorq run``: IMPALA's actor-critic, corrected with V-trace.

Actors act on their own schedule (``_Loop.run_stream``): each sends back an unroll of
``n_steps`` steps of each of its envs, sampled from its own (quantized) policy, with the
behaviour policy's logits and the broadcast version it acted with, and is asked for the
next one before the learner trains on this one. So the samples come from mu, an older
and quantized policy, not from pi, the learner's. V-trace (Espeholt et al. 2018, eq. 1)
corrects for both at once: with rho_t = min(rho_bar, pi(a_t|x_t) / mu(a_t|x_t)) and
c_t = min(c_bar, pi / mu),

    v_s = V(x_s) + sum_{t >= s} gamma^(t-s) (c_s ... c_{t-1}) rho_t (r_t + gamma V(x_{t+1}) - V(x_t))

is the value target, and rho_s (r_s + gamma v_{s+1} - V(x_s)) the policy-gradient
advantage. ``correction="none"`` sets every ratio to 1 (n-step returns on whatever the
actors sent).

The network is SB3's ``ActorCriticPolicy`` with the bundle's policy network (the value
network mirrors it), trained with A2C's optimizer (RMSprop) on loss
``pg + vf_coef * value + ent_coef * entropy``; one update per ``batch_chunks`` unrolls.
Each update records the importance weights, the policy lag of its unrolls (learner
updates and broadcasts since the weights they were acted with) and, per actor, KL(mu || pi)
over all actions of the states it sent.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant._limits import MAX_ACTORS, MAX_ENVS, MAX_STEPS, check_integer
from autoquant.actorq._actors import hidden_activation
from autoquant.actorq._bundle import ActorBundle
from autoquant.actorq._learners import LearnerEntry, LearnerOption
from autoquant.actorq._ppo import SampledPolicyLearner, bundle_keys, check_policy_network, policy_weights
from autoquant.errors import EnvMismatchError, NetworkMismatchError, UsageError

__all__ = ["IMPALA_LEARNER", "IMPALA_PRESETS", "ImpalaConfig", "ImpalaLearner", "impala_preset", "vtrace"]


@dataclass(frozen=True)
class ImpalaConfig:
    """The learner's hyperparameters. ``n_steps``: the unroll length (steps per env per
    request); ``batch_chunks``: unrolls per update; ``rho_bar`` and ``c_bar``: V-trace's clips."""

    learning_rate: float = 7e-4
    n_steps: int = 32
    batch_chunks: int = 2
    n_epochs: int = 1  # gradient steps per batch, V-trace recomputed for each (1: IMPALA; more: as RLlib's APPO)
    gamma: float = 0.99
    rho_bar: float = 1.0
    c_bar: float = 1.0
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    linear_schedule: bool = False
    n_envs: int = 8  # envs of the preset (actors x envs per actor should match it)

    def __post_init__(self) -> None:
        for name, high in (("n_steps", MAX_STEPS), ("batch_chunks", MAX_ACTORS), ("n_envs", MAX_ACTORS * MAX_ENVS),
                           ("n_epochs", 1000)):
            check_integer(getattr(self, name), f"IMPALA {name}", 1, high)
        if not self.learning_rate > 0:
            raise UsageError(f"IMPALA learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 < float(self.gamma) <= 1.0:
            raise UsageError(f"IMPALA gamma must be in (0, 1], got {self.gamma!r}")
        for name in ("rho_bar", "c_bar"):
            if not float(getattr(self, name)) >= 1.0:
                raise UsageError(f"IMPALA {name} must be >= 1 (V-trace clips the importance weights there), "
                                 f"got {getattr(self, name)!r}")
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            if float(getattr(self, name)) < 0:
                raise UsageError(f"IMPALA {name} must be >= 0, got {getattr(self, name)!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# CartPole: rl-zoo3's A2C hyperparameters (hyperparams/a2c.yml) with IMPALA's longer unrolls (32
# steps for 5). LunarLander: rl-zoo3's A2C values (gamma 0.995, 8.3e-4 annealed, one pass per
# batch) reached +9 in 1 M env steps with fp32 actors, 4 passes +83 and these (8 passes, 3e-4
# annealed to 0 over the run, entropy 0.01, gamma 0.999) +178, one seed each; the same without
# the annealing stayed under +100 over 1.5 M steps on two seeds. Other envs get the defaults.
IMPALA_PRESETS: dict[str, tuple[str, ImpalaConfig]] = {
    "CartPole-v1": ("rl-zoo3 a2c.yml CartPole-v1, unrolls of 32",
                    ImpalaConfig(learning_rate=7e-4, n_steps=32, batch_chunks=2, gamma=0.99, ent_coef=0.0, n_envs=8)),
    "LunarLander-v3": ("autoquant's, tried against rl-zoo3 a2c.yml LunarLander-v3 (see _impala.py)",
                       ImpalaConfig(learning_rate=3e-4, n_steps=32, batch_chunks=2, n_epochs=8, gamma=0.999,
                                    ent_coef=0.01, linear_schedule=True, n_envs=8)),
}


def impala_preset(env_id: str) -> tuple[str, ImpalaConfig]:
    """(where the values come from, the hyperparameters) for ``env_id``."""
    from autoquant.policy import canonical_env_id

    env_id = canonical_env_id(env_id)
    if env_id in IMPALA_PRESETS:
        return IMPALA_PRESETS[env_id]
    return "autoquant IMPALA defaults", ImpalaConfig()


def vtrace(log_rhos: np.ndarray, discounts: np.ndarray, rewards: np.ndarray, values: np.ndarray,
           bootstrap: np.ndarray, *, rho_bar: float = 1.0, c_bar: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """V-trace targets and policy-gradient advantages for unrolls shaped (T, B).

    ``log_rhos``: log pi(a_t|x_t) - log mu(a_t|x_t); ``discounts``: gamma, or 0 where the
    episode ended at t; ``values``: V(x_t); ``bootstrap``: V(x_T), shape (B,). Returns
    (v_s, rho_s (r_s + gamma_s v_{s+1} - V(x_s))), both (T, B), in float64."""
    rhos = np.exp(np.asarray(log_rhos, dtype=np.float64))
    clipped = np.minimum(rho_bar, rhos)
    cs = np.minimum(c_bar, rhos)
    values = np.asarray(values, dtype=np.float64)
    discounts = np.asarray(discounts, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    bootstrap = np.asarray(bootstrap, dtype=np.float64)
    next_values = np.concatenate([values[1:], bootstrap[None]])
    deltas = clipped * (rewards + discounts * next_values - values)
    corrections = np.empty_like(values)
    acc = np.zeros_like(bootstrap)
    for t in range(len(values) - 1, -1, -1):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        corrections[t] = acc
    vs = values + corrections
    next_vs = np.concatenate([vs[1:], bootstrap[None]])
    return vs, clipped * (rewards + discounts * next_vs - values)


def make_impala_model(bundle: ActorBundle, env_id: str, hyper: ImpalaConfig, *, seed: int) -> Any:
    """An SB3 A2C (its ActorCriticPolicy and RMSprop) with the bundle's policy network, checked."""
    from stable_baselines3 import A2C
    from stable_baselines3.common.logger import Logger

    from autoquant.actorq._ppo import ppo_policy_kwargs
    from autoquant.policy import make_env

    if bundle.manifest["policy"]["action"]["kind"] != "argmax":
        raise UsageError("the IMPALA learner supports discrete actions; the bundle's policy is continuous")
    kwargs = ppo_policy_kwargs(bundle, hidden_activation(bundle))
    env = make_env(env_id)
    if tuple(env.observation_space.shape) != bundle.input_shape:
        raise EnvMismatchError(f"{env_id} observations have shape {tuple(env.observation_space.shape)}, the "
                               f"bundle's network takes {bundle.input_shape}: pass the env the bundle was made for")
    head = int(bundle.manifest["fingerprint"]["layers"][-1]["weight_shape"][0])
    if int(getattr(env.action_space, "n", -1)) != head:
        raise EnvMismatchError(f"{env_id} has action space {env.action_space}, the bundle's network outputs {head} "
                               "logits: pass the env the bundle was made for")
    rate = (lambda progress: progress * hyper.learning_rate) if hyper.linear_schedule else hyper.learning_rate
    model = A2C("MlpPolicy", env, learning_rate=rate, n_steps=hyper.n_steps, gamma=hyper.gamma,
                ent_coef=hyper.ent_coef, vf_coef=hyper.vf_coef, max_grad_norm=hyper.max_grad_norm,
                policy_kwargs=kwargs, seed=seed, device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    state = model.policy.state_dict()
    for layer in bundle.manifest["fingerprint"]["layers"]:
        got = tuple(state[layer["weight_key"]].shape)
        if got != tuple(layer["weight_shape"]):
            raise NetworkMismatchError(f"SB3's {layer['weight_key']} has shape {got}, the bundle's "
                                       f"{tuple(layer['weight_shape'])}: export a bundle of this network")
    return model


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_mu_pi(mu_logits: np.ndarray, pi_log_probs: np.ndarray) -> np.ndarray:
    """KL(mu || pi) per state, over all actions: sum_a mu(a) (log mu(a) - log pi(a))."""
    log_mu = _log_softmax(mu_logits)
    return np.sum(np.exp(log_mu) * (log_mu - np.asarray(pi_log_probs, dtype=np.float64)), axis=-1)


class ImpalaLearner(SampledPolicyLearner):
    """Unrolls in, one V-trace update per ``batch_chunks`` of them."""

    def __init__(self, model: Any, hyper: ImpalaConfig, bundle: ActorBundle, total_steps: int, *,
                 correction: str) -> None:
        if correction not in ("vtrace", "none"):
            raise UsageError(f"the IMPALA learner corrects with 'vtrace' or not at all ('none'), not {correction!r}")
        self.model = model
        self.hyper = hyper
        self.keys = bundle_keys(bundle)
        self.total = total_steps
        self.correction = correction
        self.pending: list[tuple[Mapping[str, Any], int, Callable[[], tuple[int, int]]]] = []  # (unroll, actor, lag)
        self.updates = 0
        self.train_s = 0.0
        self.ingest_s = 0.0
        self.log: list[dict[str, float]] = []  # per update: weights, lag, KL
        self.actor_kl: dict[int, list[float]] = {}  # actor -> [sum of per-state KL, states agreeing, states]
        self.model.policy.set_training_mode(False)

    def ingest(self, r: Mapping[str, Any], *, actor: int = 0,
               lag: Callable[[], tuple[int, int]] = lambda: (0, 0)) -> None:
        """An actor's unroll, arrays shaped (n_steps, envs, ...); trains once ``batch_chunks`` came.
        ``lag()``: (learner updates, broadcasts) since the weights the unroll was acted with, asked
        when the update that uses it runs."""
        if int(np.shape(r["actions"])[0]) != self.hyper.n_steps:
            raise UsageError(f"an IMPALA unroll must hold {self.hyper.n_steps} steps of each env; got "
                             f"{np.shape(r['actions'])[0]}")
        if r.get("logits") is None:
            raise UsageError("an IMPALA unroll must carry the behaviour policy's logits: its actors sample from "
                             "their policy (epsilon=None)")
        self.pending.append((r, actor, lag))
        if len(self.pending) >= self.hyper.batch_chunks:
            self._update()

    def _update(self) -> None:
        import torch

        batch, self.pending = self.pending, []
        lags = [lag() for _, _, lag in batch]  # before this update counts
        model, hyper, policy = self.model, self.hyper, self.model.policy
        start = time.perf_counter()

        def cat(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(u[key]) for u, *_ in batch], axis=1)

        obs, actions = cat("obs"), cat("actions")
        rewards = cat("rewards").astype(np.float64)
        terminated, truncated = cat("terminated"), cat("truncated")
        mu_logits = cat("logits")
        steps, envs = actions.shape
        flat_obs = torch.as_tensor(obs.reshape(steps * envs, *obs.shape[2:]), dtype=torch.float32)
        flat_actions = torch.as_tensor(actions.reshape(-1))
        cut = truncated & ~terminated  # time limits: bootstrap from the state the episode was cut at
        final = torch.as_tensor(cat("next_obs")[cut], dtype=torch.float32) if cut.any() else None
        last = torch.as_tensor(np.concatenate([np.asarray(u["last_obs"]) for u, *_ in batch]), dtype=torch.float32)
        log_mu_all = _log_softmax(mu_logits)
        log_mu = np.take_along_axis(log_mu_all, actions[..., None], axis=-1)[..., 0]
        discounts = hyper.gamma * ~(terminated | truncated)
        progress = max(0.0, 1.0 - model.num_timesteps / max(self.total, 1))
        for group in policy.optimizer.param_groups:
            group["lr"] = model.lr_schedule(progress)
        policy.set_training_mode(True)
        for epoch in range(hyper.n_epochs):
            with torch.no_grad():  # the values V-trace bootstraps from, by this epoch's network
                step_rewards = rewards.copy()
                if final is not None:
                    step_rewards[cut] += hyper.gamma * policy.predict_values(final).flatten().numpy()
                bootstrap = policy.predict_values(last).flatten().numpy()
            features = policy.extract_features(flat_obs)
            latent_pi, latent_vf = policy.mlp_extractor(features)
            dist = policy._get_action_dist_from_latent(latent_pi)
            values = policy.value_net(latent_vf).flatten()
            log_pi = dist.log_prob(flat_actions)
            entropy = dist.entropy()
            log_pi_np = log_pi.detach().numpy().astype(np.float64).reshape(steps, envs)
            if epoch == 0:  # what the samples are to the learner as they arrive: the statistics reported
                log_pi_all = dist.distribution.logits.detach().numpy().astype(np.float64).reshape(steps, envs, -1)
                first_log_pi = log_pi_np
            log_rhos = log_pi_np - log_mu if self.correction == "vtrace" else np.zeros_like(log_mu)
            vs, advantages = vtrace(log_rhos, discounts, step_rewards, values.detach().numpy().reshape(steps, envs),
                                    bootstrap, rho_bar=hyper.rho_bar, c_bar=hyper.c_bar)
            pg_loss = -(torch.as_tensor(advantages.reshape(-1), dtype=torch.float32) * log_pi).mean()
            value_loss = 0.5 * ((torch.as_tensor(vs.reshape(-1), dtype=torch.float32) - values) ** 2).mean()
            loss = pg_loss + hyper.vf_coef * value_loss - hyper.ent_coef * entropy.mean()
            policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), hyper.max_grad_norm)
            policy.optimizer.step()
        policy.set_training_mode(False)
        model.num_timesteps += steps * envs
        self.updates += 1
        self.train_s += time.perf_counter() - start
        rhos = np.exp(first_log_pi - log_mu).reshape(-1)
        kl = kl_mu_pi(mu_logits, log_pi_all)  # (steps, envs)
        agree = mu_logits.argmax(axis=-1) == log_pi_all.argmax(axis=-1)
        column = 0
        for u, actor, *_ in batch:
            width = int(np.shape(u["actions"])[1])
            total = self.actor_kl.setdefault(actor, [0.0, 0.0, 0.0])
            total[0] += float(kl[:, column:column + width].sum())
            total[1] += float(agree[:, column:column + width].sum())
            total[2] += kl[:, column:column + width].size
            column += width
        self.log.append({"update": self.updates, "rho_mean": float(rhos.mean()), "rho_min": float(rhos.min()),
                         "rho_max": float(rhos.max()), "rho_clipped": float(np.mean(rhos > hyper.rho_bar)),
                         "c_mean": float(np.minimum(hyper.c_bar, rhos).mean()), "kl_mu_pi": float(kl.mean()),
                         "lag_updates": float(np.mean([u for u, _ in lags])),
                         "lag_versions": float(np.mean([v for _, v in lags])),
                         "lag_updates_max": float(max(u for u, _ in lags))})


def _summary(log: Sequence[Mapping[str, float]]) -> dict[str, Any] | None:
    """The run's V-trace weights and policy lag, over its updates."""
    if not log:
        return None

    def column(key: str) -> np.ndarray:
        return np.asarray([entry[key] for entry in log])

    lag = column("lag_updates")
    return {"updates": len(log), "rho_mean": float(column("rho_mean").mean()),
            "rho_min": float(column("rho_min").min()), "rho_max": float(column("rho_max").max()),
            "rho_clipped_share": float(column("rho_clipped").mean()), "c_mean": float(column("c_mean").mean()),
            "kl_mu_pi_mean": float(column("kl_mu_pi").mean()), "kl_mu_pi_max": float(column("kl_mu_pi").max()),
            "policy_lag_updates": {"mean": float(lag.mean()), "median": float(np.median(lag)),
                                   "p90": float(np.percentile(lag, 90)),
                                   "max": float(column("lag_updates_max").max())},
            "policy_lag_versions_mean": float(column("lag_versions").mean()),
            "note": ("rho = pi_learner(a|x) / mu_actor(a|x) at the update; rho_clipped_share: above rho_bar; policy "
                     "lag: learner updates (and broadcasts) between the weights an unroll was acted with and the "
                     "update that used it, mean over an update's unrolls; KL(mu || pi) over all actions of the "
                     "unrolls' states: quantization and staleness together")}


# --- its entry in the learner registry ---------------------------------------------------


def _make(bundle: ActorBundle, env_id: str, hyper: ImpalaConfig, run: Any) -> ImpalaLearner:
    if run.init_from_policy:
        raise UsageError("actorq run: --init-from-policy starts a DQN learner; the IMPALA learner starts "
                         "from scratch")
    correction = run.correction or "vtrace"
    if correction == "tis":
        raise UsageError("actorq run: --correction tis is the PPO learner's; the IMPALA learner corrects with "
                         "vtrace (or none)")
    model = make_impala_model(bundle, env_id, hyper, seed=run.seed)
    return ImpalaLearner(model, hyper, bundle, run.steps, correction=correction)


def _drive(loop: Any) -> dict[str, Any]:
    return loop.run_stream()  # type: ignore[no-any-return]


def _facts(learner: ImpalaLearner, bundle: ActorBundle, run: Any) -> dict[str, Any]:
    totals = sorted(learner.actor_kl.items())
    return {"algo": "IMPALA", **learner.network_facts(),
            "correction": learner.correction, "vtrace": _summary(learner.log),
            "kl_mu_pi_per_actor": {str(actor): t[0] / t[2] for actor, t in totals if t[2]},
            "agreement_per_actor": {str(actor): t[1] / t[2] for actor, t in totals if t[2]},
            "per_actor_note": ("over every state an actor sent, against the learner's policy at the update that used "
                               "it: KL(mu || pi) over all actions, and the share where both take the same most "
                               "likely action (staleness and quantization together)"),
            "per_update": learner.log}


IMPALA_LEARNER = LearnerEntry(
    name="impala",
    help=("IMPALA actor-critic for discrete policies: actors act on their own schedule, the learner corrects "
          "their stale, quantized samples with V-trace (--correction vtrace|none)"),
    config=ImpalaConfig,
    preset=impala_preset,
    make=_make,
    drive=_drive,
    weights=policy_weights,
    facts=_facts,
    behaviour="softmax samples with their logits, on the actor's own schedule",
    trains="discrete policies",
    outputs="policy logits",
    natural=(),
    check_network=check_policy_network,
    options=(
        LearnerOption("--learning-rate", "learning_rate", float, "RMSprop learning rate"),
        LearnerOption("--gamma", "gamma", float, "discount"),
        LearnerOption("--n-steps", "n_steps", int, "steps per env per request (the unroll)", 1, MAX_STEPS),
        LearnerOption("--ent-coef", "ent_coef", float, "entropy coefficient"),
        LearnerOption("--batch-chunks", "batch_chunks", int, "unrolls per update", 1, MAX_ACTORS),
        LearnerOption("--n-epochs", "n_epochs", int, "epochs over each rollout, at most 1000", 1, 1000),
        LearnerOption("--rho-bar", "rho_bar", float, "V-trace's clip of the importance weight (>= 1)"),
        LearnerOption("--c-bar", "c_bar", float, "V-trace's clip of the trace coefficients (>= 1)"),
    ),
)
