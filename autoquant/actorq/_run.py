"""``autoquant actorq run``: Ray actors with quantized (or fp32) policies feed an fp32 SB3 learner.

The loop::

    learner (this process, SB3 DQN, fp32)            actors (Ray actors, one env each)
      weights -> ray.put, version v  ---------------->  pull v when it changed, rebuild the policy
      replay_buffer.add, _on_step, train  <-----------  K epsilon-greedy steps: transitions, returns, timing

The learner is a stable-baselines3 ``DQN`` with the bundle's network (``MlpPolicy`` with
the bundle's ``net_arch``, or ``CnnPolicy`` for the Nature CNN), trained from scratch
unless ``init_from_policy`` names a policy file. It does what ``DQN.learn`` does per env
step, for every transition an actor returns: ``num_timesteps``, progress remaining,
``_on_step`` (target network, exploration schedule), and ``train(gradient_steps,
batch_size)`` every ``train_freq`` steps past ``learning_starts``. The actors act as
SB3's DQN collects: random actions before ``learning_starts``, then epsilon-greedy with
the learner's current exploration rate (sent with every request).

Quantized actors rebuild their policy from each broadcast with the bundle's
``ActorQuantizer`` (``build`` from the fp32 weights, or ``build_quantized`` from the
learner's central int8 payload). fp32 actors (``fp32_actors=True``) run the same path with
the full fp32 network: an onnxruntime session of a fixed fp32 graph of the bundle's
network whose weights each broadcast supplies (same session options, one thread), so
the two differ only in the network they run.

A bundle's activation quantizers are fixed (calibrated on the states it was made with).
A learner that starts from scratch sends its actors to states a trained policy never
visits: calibrate the bundle on states that cover them (for CartPole, the policy's states
plus states over the termination bounds), or the input quantizer clips them; the report's
``actor_agreement`` (actor vs learner greedy actions on recent replay states) shows it.

The same code runs on a Ray cluster (``ray_address``); autoquant must be installed on
its nodes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._version import __version__
from autoquant.actorq._bundle import (
    ActorBundle,
    ActorQError,
    NetworkMismatchError,
    SlotSpec,
    load_bundle,
)
from autoquant.actorq._quantizer import ActorPolicy, ActorQuantizer
from autoquant.errors import EnvMismatchError, UsageError

__all__ = [
    "DQN_PRESETS",
    "ActorRunConfig",
    "DQNConfig",
    "Fp32ActorBuilder",
    "dqn_preset",
    "run_actorq",
    "write_curve_png",
]

RUN_FORMAT = "autoquant.actorq.run"
RUN_VERSION = 1
_EXTERNAL_LOCATION = "actorq-broadcast"
# Activations in an exported graph that an SB3 DQN learner (ReLU) would not reproduce.
_OTHER_ACTIVATIONS = {"Tanh", "Sigmoid", "LeakyRelu", "Elu", "Selu", "Gelu", "Softplus", "HardSigmoid",
                      "HardSwish", "Mish", "Celu", "PRelu"}


# --- configuration -------------------------------------------------------------------------


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
        positive = ("buffer_size", "batch_size", "train_freq", "gradient_steps", "target_update_interval")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise UsageError(f"DQN {name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_starts < 0:
            raise UsageError(f"DQN learning_starts must be >= 0, got {self.learning_starts!r}")
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
    from autoquant.policy._envs import canonical_env_id, is_atari

    env_id = canonical_env_id(env_id)
    if env_id in DQN_PRESETS:
        return f"rl-zoo3 dqn.yml {env_id}", DQN_PRESETS[env_id]
    if is_atari(env_id):
        return "rl-zoo3 dqn.yml atari", DQN_PRESETS["atari"]
    return "stable-baselines3 DQN defaults", DQNConfig()


@dataclass(frozen=True)
class ActorRunConfig:
    """One ``actorq run``: the bundle, the env, the actors, the budget and the learner."""

    bundle: str
    env_id: str
    actors: int = 4
    steps: int = 200_000
    fp32_actors: bool = False
    central: bool = False  # the learner quantizes (ActorQuantizer.quantize) and broadcasts int8
    broadcast_every: int = 1000  # env steps (all actors together) between broadcasts
    chunk: int = 250  # env steps an actor collects per request
    eval_every: int | None = None  # env steps between greedy evaluations (default: steps // 10)
    eval_episodes: int = 10
    seed: int = 0
    init_from_policy: str | None = None
    ray_address: str | None = None
    learner: DQNConfig | None = None  # None: dqn_preset(env_id)
    learner_threads: int = 1
    actor_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("actors", "steps", "broadcast_every", "chunk", "learner_threads", "actor_threads"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"actorq run: {name.replace('_', '-')} must be >= 1, got {getattr(self, name)!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise UsageError(f"actorq run: eval-every must be >= 1, got {self.eval_every!r}")
        if self.eval_episodes < 0:
            raise UsageError(f"actorq run: eval-episodes must be >= 0, got {self.eval_episodes!r}")
        if self.fp32_actors and self.central:
            raise UsageError("actorq run: --central quantizes on the learner for quantized actors; "
                             "fp32 actors receive fp32 weights: drop --central or --fp32-actors")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["learner"] = self.learner.to_json() if self.learner is not None else None
        return out


# --- fp32 actors: the bundle's network, unquantized, through the same onnxruntime path --------


def _conv_strides(layer: Mapping[str, Any]) -> list[int]:
    """A conv layer's strides from its fingerprint (no padding), or an ActorQError."""
    kernel = layer["weight_shape"][2:]
    strides = []
    for size_in, size_out, k in zip(layer["in_shape"][1:], layer["out_shape"][1:], kernel):
        found = [s for s in range(1, int(k) + 1) if (int(size_in) - int(k)) // s + 1 == int(size_out)]
        if not found:
            raise ActorQError(f"layer {layer['name']}: {layer['in_shape']} -> {layer['out_shape']} with kernel "
                              f"{kernel} is not an unpadded convolution; fp32 actors support the Nature CNN "
                              "and MLPs")
        strides.append(found[0])
    return strides


class Fp32ActorBuilder:
    """``build(state_dict)`` -> an ActorPolicy running the bundle's network in fp32.

    The graph (Conv/Gemm layers with ReLU between them, Flatten before the first Gemm
    after a conv) is fixed and its weight initializers are external, supplied by each
    broadcast exactly as ``ActorQuantizer`` supplies its int8 ones. Plain data: picklable.
    """

    def __init__(self, bundle: ActorBundle | str | Path, *, threads: int = 1) -> None:
        self.bundle = bundle if isinstance(bundle, ActorBundle) else load_bundle(bundle)
        self.threads = threads
        self.layers = list(self.bundle.manifest["fingerprint"]["layers"])
        self.slots: dict[str, tuple[str, SlotSpec]] = {}  # slot name -> (state dict key, spec)
        self.graph = self._graph()
        self._quantizer = ActorQuantizer(self.bundle, threads=threads)  # for check() and the action spec

    def _graph(self) -> bytes:
        from onnx import TensorProto, helper, numpy_helper
        from onnx.external_data_helper import set_external_data

        nodes, inits = [], []
        x, rank = "obs", 1 + len(self.bundle.input_shape)
        for i, layer in enumerate(self.layers):
            name = layer["name"]
            inputs = [x]
            for role, key, shape in (("weight", layer["weight_key"], layer["weight_shape"]),
                                     ("bias", layer["bias_key"], layer["bias_shape"])):
                if key is None:
                    continue
                slot = f"fp32/{name}/{role}"
                tensor = numpy_helper.from_array(np.zeros(shape, np.float32), name=slot)
                set_external_data(tensor, location=_EXTERNAL_LOCATION)
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL
                inits.append(tensor)
                inputs.append(slot)
                self.slots[slot] = (key, SlotSpec(slot, "float32", tuple(int(v) for v in shape)))
            out = f"{name}/out"
            if layer["type"] == "conv":
                nodes.append(helper.make_node("Conv", inputs, [out], name=name,
                                              kernel_shape=[int(v) for v in layer["weight_shape"][2:]],
                                              strides=_conv_strides(layer)))
            else:
                if rank > 2:
                    nodes.append(helper.make_node("Flatten", [x], [f"{name}/flat"], axis=1))
                    inputs[0], rank = f"{name}/flat", 2
                nodes.append(helper.make_node("Gemm", inputs, [out], name=name, transB=1))
            x = out
            if i < len(self.layers) - 1:
                nodes.append(helper.make_node("Relu", [x], [f"{name}/relu"]))
                x = f"{name}/relu"
        graph = helper.make_graph(
            nodes, "actorq_fp32",
            [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", *self.bundle.input_shape])],
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", int(self.layers[-1]["weight_shape"][0])])],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return model.SerializeToString()

    def check(self, learner_state_dict: Mapping[str, Any]) -> None:
        self._quantizer.check(learner_state_dict)

    def build(self, learner_state_dict: Mapping[str, Any]) -> ActorPolicy:
        """An fp32 actor policy from the learner's weights (a session on the fixed graph)."""
        import onnxruntime as ort

        from autoquant.actorq._quantizer import _as_array

        arrays = {slot: np.ascontiguousarray(_as_array(learner_state_dict[key]))
                  for slot, (key, _) in self.slots.items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        names = list(arrays)
        values = [ort.OrtValue.ortvalue_from_numpy(arrays[name]) for name in names]
        options.add_external_initializers(names, values)
        session = ort.InferenceSession(self.graph, options, providers=["CPUExecutionProvider"])
        return ActorPolicy(session, [arrays, values], input_shape=self.bundle.input_shape,
                           obs_scale=self.bundle.obs_scale, action=self._quantizer.action_spec,
                           algo=self.bundle.algo)


# --- the actor -------------------------------------------------------------------------------


class ActorWorker:
    """One actor: an env, a policy rebuilt when the broadcast version changes, and
    epsilon-greedy collection of ``steps`` transitions per request. Made a Ray actor by
    ``ray.remote(ActorWorker)``; plain Python otherwise."""

    def __init__(self, builder: Any, env_id: str, *, seed: int, central: bool) -> None:
        from autoquant.policy._envs import make_env

        self.builder = builder
        self.central = central
        self.env = make_env(env_id)
        self.env.action_space.seed(seed)
        self.rng = np.random.default_rng(seed)
        self.obs, _ = self.env.reset(seed=seed)
        self.space = self.env.observation_space
        self.policy: ActorPolicy | None = None
        self.version = -1
        self.episode_return = 0.0
        self.episode_length = 0

    def collect(self, box: Sequence[Any], version: int, epsilon: float, steps: int) -> dict[str, Any]:
        """``steps`` transitions with the broadcast in ``box`` ([ObjectRef] or [weights])."""
        rebuild_s = 0.0
        if version != self.version:
            weights = box[0]
            if not isinstance(weights, Mapping):
                import ray

                weights = ray.get(weights)
            start = time.perf_counter()
            self.policy = (self.builder.build_quantized(weights) if self.central else self.builder.build(weights))
            rebuild_s = time.perf_counter() - start
            self.version = version
        assert self.policy is not None
        policy, env, rng = self.policy, self.env, self.rng
        obs = np.empty((steps, *self.space.shape), dtype=self.space.dtype)
        next_obs = np.empty_like(obs)
        actions = np.empty(steps, dtype=np.int64)
        rewards = np.empty(steps, dtype=np.float32)
        terminated = np.empty(steps, dtype=bool)
        truncated = np.empty(steps, dtype=bool)
        episodes: list[tuple[int, float, int]] = []  # (index in this chunk, return, length)
        policy_s, policy_cpu_s, env_s, policy_calls = 0.0, 0.0, 0.0, 0
        start, cpu_start = time.perf_counter(), time.thread_time()
        current = self.obs
        for i in range(steps):
            obs[i] = current
            t0 = time.perf_counter()
            if epsilon > 0.0 and rng.random() < epsilon:
                action = int(env.action_space.sample())
                t1 = time.perf_counter()
            else:
                c0 = time.thread_time()  # onnxruntime runs one intra-op thread: this one
                action = int(policy.predict(current)[0])
                policy_cpu_s += time.thread_time() - c0
                t1 = time.perf_counter()
                policy_s += t1 - t0
                policy_calls += 1
            new, reward, term, trunc, _ = env.step(action)
            env_s += time.perf_counter() - t1
            next_obs[i] = new
            actions[i], rewards[i], terminated[i], truncated[i] = action, reward, term, trunc
            self.episode_return += float(reward)
            self.episode_length += 1
            if term or trunc:
                episodes.append((i, self.episode_return, self.episode_length))
                self.episode_return, self.episode_length = 0.0, 0
                t1 = time.perf_counter()
                new, _ = env.reset()
                env_s += time.perf_counter() - t1
            current = new
        self.obs = current
        busy_s, cpu_s = time.perf_counter() - start, time.thread_time() - cpu_start
        return {"obs": obs, "next_obs": next_obs, "actions": actions, "rewards": rewards,
                "terminated": terminated, "truncated": truncated, "episodes": episodes, "steps": steps,
                "busy_s": busy_s, "cpu_s": cpu_s, "policy_s": policy_s, "policy_cpu_s": policy_cpu_s, "env_s": env_s,
                "policy_calls": policy_calls, "rebuild_s": rebuild_s, "version": version}


# --- the learner -----------------------------------------------------------------------------


def _check_env(bundle: ActorBundle, env_id: str) -> str:
    """The canonical env id, or EnvMismatchError when it is not the bundle's."""
    from autoquant.policy._envs import canonical_env_id

    wanted = canonical_env_id(env_id)
    made_for = bundle.manifest["policy"].get("env_id")
    if made_for is not None and canonical_env_id(str(made_for)) != wanted:
        raise EnvMismatchError(f"the bundle {bundle.folder} was made for {made_for}, not {env_id}: actors would "
                               f"run its calibrated quantizers on another env's observations; pass --env {made_for} "
                               "or export a bundle from a run on this env")
    return wanted


def _check_algo(bundle: ActorBundle) -> None:
    if bundle.algo not in ("dqn", "torch", "torchscript"):
        raise ActorQError(f"actorq run trains a DQN learner; the bundle is for a {bundle.algo} policy: "
                          "export a bundle from a DQN policy")
    if bundle.manifest["policy"]["action"]["kind"] != "argmax":
        raise ActorQError("actorq run trains a DQN learner; the bundle's network does not output one Q-value "
                          "per discrete action")
    import onnx

    ops = {node.op_type for node in onnx.load_from_string(bundle.graph).graph.node}
    other = sorted(ops & _OTHER_ACTIVATIONS)
    if other:
        raise NetworkMismatchError(f"the bundle's network uses {other}; SB3's DQN learner uses ReLU: "
                                   "export a bundle of a ReLU network")


def _learner_layers(model: Any) -> list[Any]:
    import torch

    return [m for m in model.q_net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def _policy_kwargs(bundle: ActorBundle) -> tuple[str, dict[str, Any]]:
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

    from autoquant.policy._envs import make_env

    policy, kwargs = _policy_kwargs(bundle)
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
            if isinstance(module, torch.nn.Conv2d) and list(module.stride) != _conv_strides(layer):
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


class _Learner:
    """What ``DQN.learn`` does per env step, for transitions that actors collected."""

    def __init__(self, model: Any, hyper: DQNConfig, total_steps: int) -> None:
        self.model = model
        self.hyper = hyper
        self.total = total_steps
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

    def ingest(self, r: Mapping[str, Any]) -> None:
        model, buffer = self.model, self.model.replay_buffer
        start = time.perf_counter()
        for i in range(int(r["steps"])):
            term, trunc = bool(r["terminated"][i]), bool(r["truncated"][i])
            buffer.add(r["obs"][i:i + 1], r["next_obs"][i:i + 1], r["actions"][i:i + 1], r["rewards"][i:i + 1],
                       np.array([term or trunc]), [{"TimeLimit.truncated": trunc and not term}])
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


# --- the run ---------------------------------------------------------------------------------


def _stats_ms(values: Sequence[float]) -> dict[str, Any] | None:
    if not values:
        return None
    ms = np.asarray(values) * 1e3
    return {"median": float(np.median(ms)), "mean": float(ms.mean()), "p90": float(np.percentile(ms, 90)),
            "max": float(ms.max()), "count": len(ms)}


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise UsageError("ray is not installed; 'autoquant actorq run' runs its actors on Ray: "
                         "pip install 'autoquant[actorq]'") from None
    return ray


@dataclass
class _ActorTotals:
    steps: int = 0
    busy_s: float = 0.0
    cpu_s: float = 0.0
    policy_s: float = 0.0
    policy_cpu_s: float = 0.0
    env_s: float = 0.0
    policy_calls: int = 0
    first_rebuild: float | None = None  # an actor's first build also loads onnxruntime's kernels
    rebuilds: list[float] = field(default_factory=list)
    requests: int = 0

    def add(self, r: Mapping[str, Any]) -> None:
        self.steps += int(r["steps"])
        self.busy_s += float(r["busy_s"])
        self.cpu_s += float(r["cpu_s"])
        self.policy_s += float(r["policy_s"])
        self.policy_cpu_s += float(r["policy_cpu_s"])
        self.env_s += float(r["env_s"])
        self.policy_calls += int(r["policy_calls"])
        self.requests += 1
        if r["rebuild_s"]:
            if self.first_rebuild is None:
                self.first_rebuild = float(r["rebuild_s"])
            else:
                self.rebuilds.append(float(r["rebuild_s"]))

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "busy_s": self.busy_s, "cpu_s": self.cpu_s,
                "steps_per_s": self.steps / self.busy_s if self.busy_s > 0 else 0.0,
                "steps_per_cpu_s": self.steps / self.cpu_s if self.cpu_s > 0 else None,
                "policy_ms_per_call": 1e3 * self.policy_s / self.policy_calls if self.policy_calls else None,
                "policy_cpu_ms_per_call": (1e3 * self.policy_cpu_s / self.policy_calls if self.policy_calls
                                           else None),
                "policy_calls": self.policy_calls, "env_ms_per_step": 1e3 * self.env_s / max(self.steps, 1),
                "requests": self.requests, "rebuilds": len(self.rebuilds) + (self.first_rebuild is not None),
                "first_rebuild_ms": 1e3 * self.first_rebuild if self.first_rebuild is not None else None,
                "rebuild_ms": _stats_ms(self.rebuilds)}


def _greedy_learner(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    def act(obs: np.ndarray) -> np.ndarray:
        return np.asarray(model.policy.predict(obs, deterministic=True)[0])

    return act


def _actor_agreement(model: Any, builder: Any, bundle: ActorBundle, n: int = 1000) -> float | None:
    """Share of the latest ``n`` replay states on which an actor built from the learner's
    current weights takes the learner's greedy action (None before any transition)."""
    buffer = model.replay_buffer
    size = buffer.buffer_size if buffer.full else buffer.pos
    if size == 0:
        return None
    index = (buffer.pos - 1 - np.arange(min(n, size))) % buffer.buffer_size
    states = buffer.observations[index, 0]
    actor = builder.build(learner_weights(model, bundle))
    return float(np.mean(actor.predict(states)[0] == _greedy_learner(model)(states)))


def _probe(address: str) -> None:
    """Fail fast when nothing listens at a HOST:PORT address (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"nothing answers at --ray-address {address} ({exc.strerror or exc}): start the cluster "
                         "('ray start --head' on its head node) or pass its address") from None


def _ray_session(ray: Any, config: ActorRunConfig) -> tuple[bool, dict[str, Any]]:
    """Start (or join) Ray; (whether this call started it, facts)."""
    import logging

    if ray.is_initialized():
        started = False
    elif config.ray_address:
        try:
            ray.init(address=config.ray_address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"could not join the Ray cluster at --ray-address {config.ray_address} ({first}): "
                             "check the address ('ray status' on the head node) and that this machine may "
                             "connect (Ray's token authentication: RAY_AUTH_TOKEN)") from exc
        started = True
    else:
        # Scheduling slots for every actor even on a small machine (Ray's CPUs are logical):
        # the actors and the learner share the cores, which the report's facts record.
        # address="local": a new instance, never a cluster that RAY_ADDRESS or a 'ray start' left behind.
        ray.init(address="local", num_cpus=max(config.actors, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR, object_store_memory=512 * 1024 ** 2)
        started = True
    resources = ray.cluster_resources()
    return started, {"version": ray.__version__, "address": config.ray_address or "local",
                     "nodes": len(ray.nodes()), "cpus": resources.get("CPU")}


def run_actorq(config: ActorRunConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the actor-learner loop and return its report (JSON-ready)."""
    import torch

    from autoquant.evaluate import episode_seeds, play_episodes, random_actor
    from autoquant.policy._envs import make_env
    from autoquant.targets import host_facts

    say = log or (lambda s: None)
    bundle = load_bundle(config.bundle)
    env_id = _check_env(bundle, config.env_id)
    _check_algo(bundle)
    ray = _import_ray()
    if config.ray_address and not ray.is_initialized():
        _probe(config.ray_address)
    preset_source, preset = dqn_preset(env_id)
    hyper = config.learner or preset
    threads = torch.get_num_threads()
    torch.set_num_threads(config.learner_threads)
    try:
        model = make_learner(bundle, env_id, hyper, seed=config.seed)
        init = init_from_policy(model, config.init_from_policy, env_id) if config.init_from_policy else None
        if config.fp32_actors:
            builder: Any = Fp32ActorBuilder(bundle, threads=config.actor_threads)
        else:
            builder = ActorQuantizer(bundle, threads=config.actor_threads)
        builder.check(learner_weights(model, bundle))
        seeds = episode_seeds(config.seed, config.eval_episodes) if config.eval_episodes else []
        random_stats = None
        if seeds:
            probe = make_env(env_id)
            random_stats = play_episodes(random_actor(probe.action_space, config.seed), env_id, seeds)
            probe.close()
        t_start = time.perf_counter()
        started, ray_facts = _ray_session(ray, config)
        say(f"ray {ray_facts['version']} ({ray_facts['address']}, {ray_facts['cpus']:.0f} CPUs); "
            f"{config.actors} {'fp32' if config.fp32_actors else 'quantized'} actors, {config.steps} env steps")
        try:
            result = _loop(ray, config, bundle, env_id, model, hyper, builder, seeds, say)
        finally:
            if started:
                ray.shutdown()
        wall_s = time.perf_counter() - t_start
    finally:
        torch.set_num_threads(threads)
    learner: _Learner = result.pop("_learner")
    final_weights = learner_weights(model, bundle)
    final: dict[str, Any] = {}
    if seeds:
        actor = builder.build(final_weights)
        final["actor"] = play_episodes(lambda obs: actor.predict(obs)[0], env_id, seeds).to_json()
        final["learner_fp32"] = result["curve"]["eval"][-1]["stats"]
        final["random"] = random_stats.to_json() if random_stats is not None else None
    kind = "fp32" if config.fp32_actors else "quantized"
    return {
        "format": RUN_FORMAT, "version": RUN_VERSION, "autoquant_version": __version__,
        "config": config.to_json(), "env_id": env_id,
        "bundle": {"path": str(bundle.folder), "summary": bundle.manifest.get("summary"),
                   "fingerprint": bundle.fingerprint_id, "made_for": bundle.manifest["policy"].get("env_id"),
                   "payload_bytes": bundle.payload_bytes},
        "actors": {"count": config.actors, "kind": kind,
                   "network": ("fp32 ONNX of the bundle's network (onnxruntime, weights per broadcast)"
                               if config.fp32_actors else f"the bundle's plan: {bundle.manifest.get('summary')}"),
                   "quantizes": None if config.fp32_actors else ("learner" if config.central else "actor"),
                   "threads": config.actor_threads},
        "learner": {"algo": "DQN", "policy": _policy_kwargs(bundle)[0], "policy_kwargs": _policy_kwargs(bundle)[1],
                    "hyperparameters": hyper.to_json(),
                    "hyperparameters_source": "given" if config.learner is not None else preset_source,
                    "init_from_policy": init, "threads": config.learner_threads,
                    "updates": learner.updates, "train_s": learner.train_s, "ingest_s": learner.ingest_s,
                    "updates_per_s": learner.updates / learner.train_s if learner.train_s > 0 else 0.0,
                    "updates_per_s_wall": (learner.updates / (result["loop_s"] - result["eval_s"])
                                           if result["loop_s"] > result["eval_s"] else 0.0)},
        **result,
        "final": final,
        "ray": ray_facts,
        "facts": {**host_facts(config.actor_threads), "torch": torch.__version__},
        "wall_s": wall_s,
    }


def _loop(ray: Any, config: ActorRunConfig, bundle: ActorBundle, env_id: str, model: Any, hyper: DQNConfig,
          builder: Any, seeds: list[int], say: Callable[[str], None]) -> dict[str, Any]:
    from autoquant.evaluate import play_episodes

    learner = _Learner(model, hyper, config.steps)
    remote = ray.remote(num_cpus=1)(ActorWorker)
    actors = [remote.remote(builder, env_id, seed=config.seed * 1000 + 1 + i, central=config.central)
              for i in range(config.actors)]
    totals = [_ActorTotals() for _ in actors]
    prepare_s: list[float] = []
    payload_bytes: list[int] = []

    def broadcast() -> Any:
        start = time.perf_counter()
        weights = learner_weights(model, bundle)
        payload = builder.quantize(weights, check=False) if config.central else weights
        ref = ray.put(payload)
        prepare_s.append(time.perf_counter() - start)
        payload_bytes.append(sum(int(v.nbytes) for v in payload.values()))
        return ref

    eval_every = config.eval_every or max(config.steps // 10, 1)
    curve_eval: list[dict[str, Any]] = []
    episodes: list[list[float]] = []  # [env step at the end, return, length, actor]

    def evaluate(step: int) -> None:
        if not seeds:
            return
        start = time.perf_counter()
        stats = play_episodes(_greedy_learner(model), env_id, seeds, n_envs=min(8, len(seeds)))
        agreement = _actor_agreement(model, builder, bundle)
        curve_eval.append({"step": step, "mean": stats.mean, "ci95": stats.ci95, "updates": learner.updates,
                           "actor_agreement": agreement, "eval_s": time.perf_counter() - start,
                           "stats": stats.to_json()})
        text = f", actor agrees on {agreement:.1%}" if agreement is not None else ""
        say(f"step {step}: greedy learner {stats.mean:.1f} over {len(seeds)} episodes, "
            f"{learner.updates} updates, epsilon {learner.epsilon:.3f}{text}")

    try:
        evaluate(0)
        loop_start = time.perf_counter()
        version, ref = 0, broadcast()
        last_broadcast, updates_at_broadcast = 0, 0
        submitted, received = 0, 0
        next_eval = eval_every
        pending: dict[Any, int] = {}

        def submit(i: int) -> None:
            nonlocal submitted
            steps = min(config.chunk, config.steps - submitted)
            if steps > 0:
                pending[actors[i].collect.remote([ref], version, learner.epsilon, steps)] = i
                submitted += steps

        for i in range(len(actors)):
            submit(i)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            r = ray.get(done[0])
            totals[i].add(r)
            base = received
            learner.ingest(r)
            received += int(r["steps"])
            episodes.extend([base + j + 1, ret, length, i] for j, ret, length in r["episodes"])
            if received - last_broadcast >= config.broadcast_every and learner.updates > updates_at_broadcast:
                version, ref = version + 1, broadcast()
                last_broadcast, updates_at_broadcast = received, learner.updates
            if received >= next_eval and received < config.steps:
                evaluate(received)
                while next_eval <= received:
                    next_eval += eval_every
            submit(i)
        loop_s = time.perf_counter() - loop_start
        evaluate(received)
    finally:
        for actor in actors:
            ray.kill(actor)
    per_actor = [t.to_json() for t in totals]
    busy = sum(t.busy_s for t in totals)
    cpu = sum(t.cpu_s for t in totals)
    calls = sum(t.policy_calls for t in totals)
    rebuilds = [s for t in totals for s in t.rebuilds]
    first_rebuilds = [t.first_rebuild for t in totals if t.first_rebuild is not None]
    eval_s = sum(e["eval_s"] for e in curve_eval[1:-1])
    return {
        "_learner": learner,
        "env_steps": received,
        "loop_s": loop_s,
        "eval_s": eval_s,
        "actor_steps_per_s": {
            "total": sum(a["steps_per_s"] for a in per_actor),
            "per_actor": [a["steps_per_s"] for a in per_actor],
            "achieved": received / (loop_s - eval_s) if loop_s > eval_s else 0.0,
            "per_cpu_s": received / cpu if cpu > 0 else None,
            "note": ("per actor: its env steps over the time it spent collecting (policy, exploration, env), "
                     "not waiting or rebuilding; total: their sum; achieved: all env steps over the loop's wall "
                     "time less the greedy evaluations; per_cpu_s: env steps per CPU-second of an actor's "
                     "collecting thread (what the actors ran, not what they waited for a core: steadier than "
                     "wall time on a shared machine)"),
        },
        "policy_ms_per_call": 1e3 * sum(t.policy_s for t in totals) / calls if calls else None,
        "policy_cpu_ms_per_call": 1e3 * sum(t.policy_cpu_s for t in totals) / calls if calls else None,
        "env_ms_per_step": 1e3 * sum(t.env_s for t in totals) / max(received, 1),
        "actor_busy_s": busy,
        "per_actor": per_actor,
        "broadcasts": {"count": version + 1, "every": config.broadcast_every,
                       "payload": "int8 (central)" if config.central else "fp32 state dict",
                       "payload_bytes": payload_bytes[0] if payload_bytes else None,
                       "learner_prepare_ms": _stats_ms(prepare_s), "actor_rebuild_ms": _stats_ms(rebuilds),
                       "actor_first_rebuild_ms": _stats_ms(first_rebuilds),
                       "note": ("actor_rebuild_ms: every rebuild after an actor's first; the first one (building "
                                "the policy from the initial weights) also loads onnxruntime's kernels")},
        "curve": {"episodes": episodes, "eval": curve_eval, "eval_seeds": seeds},
    }


# --- outputs ---------------------------------------------------------------------------------


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return np.cumsum(values) / np.arange(1, len(values) + 1)
    kernel = np.ones(window) / window
    head = np.cumsum(values[:window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def write_curve_png(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Reward curves (episode returns of the actors, greedy evaluations of the learner)
    of one or more runs (label -> report) on shared axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    random_mean = None
    for k, (label, report) in enumerate(runs.items()):
        color = colors[k % len(colors)]
        episodes = np.asarray(report["curve"]["episodes"], dtype=float).reshape(-1, 4)
        if len(episodes):
            order = np.argsort(episodes[:, 0])
            steps, returns = episodes[order, 0], episodes[order, 1]
            ax.scatter(steps, returns, s=3, alpha=0.15, color=color)
            ax.plot(steps, _moving_average(returns, 20), color=color, alpha=0.6, linewidth=1,
                    label=f"{label}: actor episodes (moving mean of 20)")
        evals = report["curve"]["eval"]
        if evals:
            ax.errorbar([e["step"] for e in evals], [e["mean"] for e in evals],
                        yerr=[0.0 if not math.isfinite(e["ci95"]) else e["ci95"] for e in evals], color=color,
                        marker="o", linewidth=2, capsize=3, label=f"{label}: greedy learner (fp32), 95 % CI")
        final = report.get("final") or {}
        if final.get("random"):
            random_mean = final["random"]["mean"]
    if random_mean is not None:
        ax.axhline(random_mean, color="grey", linestyle="--", linewidth=1, label="random policy")
    ax.set_xlabel("env steps (all actors)")
    ax.set_ylabel("episode return")
    first = next(iter(runs.values()))
    ax.set_title(f"actorq run: {first['env_id']}, {first['actors']['count']} actors")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
