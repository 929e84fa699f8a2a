"""Actors of ``autoquant actorq run``: an env each, a policy rebuilt on every broadcast.

Quantized actors rebuild their policy from each broadcast with the bundle's
``ActorQuantizer`` (``build`` from the fp32 weights, or ``build_quantized`` from the
learner's central int8 payload). fp32 actors (``Fp32ActorBuilder``) run the same path with
the full fp32 network: an onnxruntime session of a fixed fp32 graph of the bundle's
network whose weights each broadcast supplies (same session options, one thread), so
the two differ only in the network they run. The actors act as SB3's DQN collects:
random actions before ``learning_starts``, then epsilon-greedy with the learner's current
exploration rate (sent with every request).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoquant.actorq._bundle import ActorBundle, conv_strides, load_bundle
from autoquant.actorq._quantizer import ActorPolicy, ActorQuantizer, sample_logits
from autoquant.actorq._rebuild import Rebuilder
from autoquant.compress import EXTERNAL_LOCATION, SlotSpec, as_array
from autoquant.errors import ActorQError

__all__ = ["ActorWorker", "Fp32ActorBuilder", "hidden_activation", "sample_logits"]


def hidden_activation(bundle: ActorBundle) -> str:
    """The ONNX op between the bundle network's layers: "Relu" or "Tanh" (ActorQError otherwise)."""
    import onnx

    ops = {node.op_type for node in onnx.load_from_string(bundle.graph).graph.node}
    found = ops & {"Relu", "Tanh"}
    if len(found) > 1:
        raise ActorQError("the bundle's network mixes ReLU and Tanh: actorq run supports one hidden activation")
    return found.pop() if found else "Relu"  # a quantized ReLU may live in an unsigned activation quantizer


class Fp32ActorBuilder:
    """``build(state_dict)`` -> an ActorPolicy running the bundle's network in fp32.

    The graph (Conv/Gemm layers with the bundle's activation, ReLU or Tanh, between them, Flatten before the first Gemm
    after a conv) is fixed and its weight initializers are external, supplied by each
    broadcast exactly as ``ActorQuantizer`` supplies its int8 ones. Plain data: picklable.
    """

    def __init__(self, bundle: ActorBundle | str | Path, *, threads: int = 1, rebuild: str = "auto") -> None:
        self.bundle = bundle if isinstance(bundle, ActorBundle) else load_bundle(bundle)
        self.threads = threads
        self.layers = list(self.bundle.manifest["fingerprint"]["layers"])
        self.slots: dict[str, tuple[str, SlotSpec]] = {}  # slot name -> (state dict key, spec)
        self.activation = hidden_activation(self.bundle)
        self.graph = self._graph()
        self._quantizer = ActorQuantizer(self.bundle, threads=threads)  # for check() and the action spec
        self.rebuilder = Rebuilder(self.graph, {name: spec for name, (_, spec) in self.slots.items()},
                                   input_shape=self.bundle.input_shape, obs_scale=self.bundle.obs_scale,
                                   threads=threads, path=rebuild)

    @property
    def rebuild_choice(self) -> dict[str, Any] | None:
        """Which rebuild path builds take and why (None before the first build)."""
        return self.rebuilder.choice

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
                set_external_data(tensor, location=EXTERNAL_LOCATION)
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL
                inits.append(tensor)
                inputs.append(slot)
                self.slots[slot] = (key, SlotSpec(slot, "float32", tuple(int(v) for v in shape)))
            out = f"{name}/out"
            if layer["type"] == "conv":
                nodes.append(helper.make_node("Conv", inputs, [out], name=name,
                                              kernel_shape=[int(v) for v in layer["weight_shape"][2:]],
                                              strides=conv_strides(layer)))
            else:
                if rank > 2:
                    nodes.append(helper.make_node("Flatten", [x], [f"{name}/flat"], axis=1))
                    inputs[0], rank = f"{name}/flat", 2
                nodes.append(helper.make_node("Gemm", inputs, [out], name=name, transB=1))
            x = out
            if i < len(self.layers) - 1:
                nodes.append(helper.make_node(self.activation, [x], [f"{name}/act"]))
                x = f"{name}/act"
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
        arrays = {slot: as_array(learner_state_dict[key]) for slot, (key, _) in self.slots.items()}
        session = self.rebuilder.session(arrays)
        return ActorPolicy(session, input_shape=self.bundle.input_shape, obs_scale=self.bundle.obs_scale,
                           action=self._quantizer.action_spec, algo=self.bundle.algo)


class ActorWorker:
    """One actor: ``envs`` copies of the env stepped in lockstep with one batched policy call
    per step, a policy rebuilt when the broadcast version changes, and ``rounds`` lockstep
    steps per request. Behaviour: epsilon-greedy on Q-values (``epsilon`` given: a DQN
    learner) or actions sampled from the policy's own softmax with their log-probabilities
    (``epsilon=None``: an on-policy learner that corrects for the actor's quantized policy).
    Made a Ray actor by ``ray.remote(ActorWorker)``; plain Python otherwise."""

    def __init__(self, builder: Any, env_id: str, *, seed: int, central: bool, envs: int = 1) -> None:
        from autoquant.policy import make_env

        self.builder = builder
        self.builder_id: Any = None
        self.central = central
        self.envs = [make_env(env_id) for _ in range(envs)]
        for j, env in enumerate(self.envs):
            env.action_space.seed(seed + 7919 * j)
        self.rng = np.random.default_rng(seed)
        self.obs = np.stack([env.reset(seed=seed + 7919 * j)[0] for j, env in enumerate(self.envs)])
        self.space = self.envs[0].observation_space
        self.policy: ActorPolicy | None = None
        self.version = -1
        self.episode_return = [0.0] * envs
        self.episode_length = [0] * envs
        self.episode_start = [True] * envs

    def where(self) -> dict[str, Any]:
        """The node, process and host this actor runs on (Ray's node id when on Ray)."""
        import os
        import socket

        node = None
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except ModuleNotFoundError:
            pass
        return {"node_id": node, "pid": os.getpid(), "host": socket.gethostname()}

    def collect(self, box: Sequence[Any], version: int, epsilon: float | None, rounds: int,
                builder: Sequence[Any] | None = None) -> dict[str, Any]:
        """``rounds`` lockstep steps of every env with the broadcast in ``box`` ([ObjectRef] or [weights]).

        ``builder``, when given, is ``[id, builder or its ObjectRef, central]``: the builder this
        and later broadcasts are built with (a monitor's precision level or re-calibration),
        taken when its id is new, and whether the broadcast is its quantized payload."""
        rebuild_s = rebuild_cpu_s = 0.0
        new_network = False
        if builder is not None and builder[0] != self.builder_id:
            found = builder[1]
            if not hasattr(found, "build"):
                import ray

                found = ray.get(found)
            self.builder, self.builder_id, self.central = found, builder[0], bool(builder[2])
            self.version = -1  # a new network: rebuild whatever the version
            new_network = True
        if version != self.version:
            weights = box[0]
            if not isinstance(weights, Mapping):
                import ray

                weights = ray.get(weights)
            start, cpu = time.perf_counter(), time.thread_time()  # onnxruntime builds on this thread
            self.policy = (self.builder.build_quantized(weights) if self.central else self.builder.build(weights))
            rebuild_s, rebuild_cpu_s = time.perf_counter() - start, time.thread_time() - cpu
            self.version = version
        assert self.policy is not None
        policy, envs, rng = self.policy, self.envs, self.rng
        n = len(envs)
        obs = np.empty((rounds, n, *self.space.shape), dtype=self.space.dtype)
        next_obs = np.empty_like(obs)
        log_probs = np.zeros((rounds, n), dtype=np.float64)
        logits: np.ndarray | None = None  # the behaviour policy's logits, when it samples
        # Per-step values in Python lists: CartPole steps in microseconds, numpy calls on tiny arrays cost as much.
        actions: list[list[int]] = []
        rewards: list[list[float]] = []
        terminated: list[list[bool]] = []
        truncated: list[list[bool]] = []
        starts: list[list[bool]] = []
        episodes: list[tuple[int, int, float, int]] = []  # (round, env, return, length)
        returns, lengths, flags = self.episode_return, self.episode_length, self.episode_start
        explore = (rng.random((rounds, n)) < epsilon).tolist() if epsilon else None
        policy_s, policy_cpu_s, env_s, policy_calls, policy_steps = 0.0, 0.0, 0.0, 0, 0
        start, cpu_start = time.perf_counter(), time.thread_time()
        current = self.obs
        for i in range(rounds):
            obs[i] = current
            starts.append(flags)
            t0 = time.perf_counter()
            if epsilon is None:
                c0 = time.thread_time()  # onnxruntime runs one intra-op thread: this one
                sampled, log_probs[i], row_logits = policy.sample_with_logits(current, rng)
                if logits is None:
                    logits = np.empty((rounds, n, row_logits.shape[1]), dtype=np.float32)
                logits[i] = row_logits
                policy_cpu_s += time.thread_time() - c0
                policy_s += time.perf_counter() - t0
                policy_calls, policy_steps = policy_calls + 1, policy_steps + n
                step_actions = sampled.tolist()
            else:
                row = explore[i] if explore is not None else None
                greedy: list[int] = []
                if row is None or not all(row):
                    c0 = time.thread_time()
                    predicted = policy.predict(current if n > 1 else current[0])[0]
                    policy_cpu_s += time.thread_time() - c0
                    policy_s += time.perf_counter() - t0
                    policy_calls += 1
                    policy_steps += n - sum(row) if row is not None else n
                    greedy = predicted.tolist() if n > 1 else [int(predicted)]
                if row is not None and any(row):
                    step_actions = [int(envs[j].action_space.sample()) if row[j] else greedy[j] for j in range(n)]
                else:
                    step_actions = greedy
            actions.append(step_actions)
            t1 = time.perf_counter()
            fresh, reward_row, term_row, trunc_row = [], [], [], []
            for j, env in enumerate(envs):
                o, reward, term, trunc, _ = env.step(step_actions[j])
                next_obs[i, j] = o
                reward, term, trunc = float(reward), bool(term), bool(trunc)
                reward_row.append(reward)
                term_row.append(term)
                trunc_row.append(trunc)
                returns[j] += reward
                lengths[j] += 1
                if term or trunc:
                    episodes.append((i, j, returns[j], lengths[j]))
                    returns[j], lengths[j] = 0.0, 0
                    o, _ = env.reset()
                fresh.append(o)
            rewards.append(reward_row)
            terminated.append(term_row)
            truncated.append(trunc_row)
            flags = [a or b for a, b in zip(term_row, trunc_row)]
            env_s += time.perf_counter() - t1
            current = np.stack(fresh) if n > 1 else fresh[0][None]
        self.episode_start = flags
        self.obs = current
        busy_s, cpu_s = time.perf_counter() - start, time.thread_time() - cpu_start
        return {"obs": obs, "next_obs": next_obs, "actions": np.asarray(actions, dtype=np.int64),
                "log_probs": log_probs, "logits": logits, "rewards": np.asarray(rewards, dtype=np.float32),
                "terminated": np.asarray(terminated, dtype=bool), "truncated": np.asarray(truncated, dtype=bool),
                "episode_starts": np.asarray(starts, dtype=bool),
                "last_obs": current.copy(), "episodes": episodes, "steps": rounds * n, "envs": n,
                "busy_s": busy_s, "cpu_s": cpu_s, "policy_s": policy_s, "policy_cpu_s": policy_cpu_s, "env_s": env_s,
                "policy_calls": policy_calls, "policy_steps": policy_steps, "rebuild_s": rebuild_s,
                "rebuild_cpu_s": rebuild_cpu_s, "new_network": new_network,
                "rebuild_choice": getattr(self.builder, "rebuild_choice", None) if rebuild_s else None,
                "version": version}
