"""ActorQuantizer: a learner's fp32 weights -> a quantized actor policy, on every broadcast.

Nothing here goes through torch, Brevitas or an exporter. The bundle's graph is fixed
(kept channels, activation quantizers, operators); per broadcast, numpy recomputes the
graph's weight initializers from the learner's weights exactly as Brevitas would
(per-output-channel symmetric narrow-range weights, int32 biases at the accumulator's
scale), and onnxruntime opens a session on the fixed graph with those initializers
supplied as its external data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoquant.actorq._bundle import ActorBundle, ActorQError, LayerRecipe, NetworkMismatchError, load_bundle

__all__ = ["ActorPolicy", "ActorQuantizer", "encode_layer"]

_SCALE_MIN = np.float32(1e-10)  # Brevitas' scaling_min_val: an all-zero channel keeps a finite scale
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# Q-value networks act greedily whatever ``deterministic`` says (as SB3's DQN policy does).
_GREEDY_ALGOS = ("dqn", "qrdqn", "torch", "torchscript")


def _as_array(value: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like -> float32 numpy array, without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def encode_layer(recipe: LayerRecipe, weight: np.ndarray, bias: np.ndarray | None) -> dict[str, np.ndarray]:
    """One layer's graph initializers (slot name -> array) from its full fp32 weight and bias.

    The weight is sliced to the kept output channels and to the inputs that survive the
    previous layer's pruning; quantized layers get ``scale = max(|w|) / (2^(b-1) - 1)``
    per output channel, integers rounded half to even and clipped to ``±(2^(b-1) - 1)``,
    and, where the layer runs an integer kernel, ``bias_int = round(bias / (s_in * scale))``.
    """
    w = weight
    if recipe.kept_out is not None:
        w = np.take(w, recipe.kept_out, axis=0)
    if recipe.kept_in is not None:
        w = np.take(w, recipe.kept_in, axis=1)
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = None
    if bias is not None:
        b = bias if recipe.kept_out is None else np.take(bias, recipe.kept_out, axis=0)
        b = np.ascontiguousarray(b, dtype=np.float32)
    slots = recipe.slots
    out: dict[str, np.ndarray] = {}
    if recipe.int_max is None:  # a float layer: its sliced weights as they are
        out[slots["weight"].name] = w
        if b is not None and "bias" in slots:
            out[slots["bias"].name] = b
        return out
    flat = w.reshape(len(w), -1)
    absmax = np.abs(flat).max(axis=1)
    scale = np.maximum(absmax, _SCALE_MIN) / np.float32(recipe.int_max)
    if not np.all(np.isfinite(scale)):
        raise ActorQError(f"the learner's weights of layer {recipe.name} ({recipe.weight_key}) are not finite: "
                          "the learner diverged; do not broadcast these weights")
    q = np.rint(flat / scale[:, None])
    np.clip(q, -recipe.int_max, recipe.int_max, out=q)
    out[slots["weight"].name] = q.astype(np.int8).reshape(w.shape)
    out[slots["weight_scale"].name] = scale.astype(np.float32, copy=False)
    if b is not None and "bias_scale" in slots:
        bias_scale = np.float32(recipe.input_scale) * scale
        bq = np.rint(b / bias_scale).astype(np.float64)
        np.clip(bq, _INT32_MIN, _INT32_MAX, out=bq)
        out[slots["bias"].name] = bq.astype(np.int32)
        out[slots["bias_scale"].name] = bias_scale.astype(np.float32, copy=False)
    elif b is not None and "bias" in slots:
        out[slots["bias"].name] = b
    return out


class ActorPolicy:
    """A quantized actor: onnxruntime on the bundle's graph with one broadcast's weights.

    ``predict`` has stable-baselines3's signature, so anything that evaluates an SB3
    model (``evaluate_policy``, an actor loop) runs it unchanged.
    """

    def __init__(self, session: Any, values: list[Any], *, input_shape: tuple[int, ...], obs_scale: float,
                 action: Any, algo: str) -> None:
        self.session = session
        self._values = values  # onnxruntime reads the initializers from these buffers
        self.input_name = session.get_inputs()[0].name
        self.input_shape = input_shape
        self.obs_scale = float(obs_scale)
        self.action = action
        self.algo = algo

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw network outputs (Q-values, logits, means) for a batch of prepared inputs."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Actions for one observation or a batch, as SB3's ``policy.predict`` returns them.

        The network is not recurrent: ``state`` and ``episode_start`` are ignored and the
        returned state is None. Q-value policies act greedily (exploration belongs to the
        actor loop, as in SB3's DQN policy); other policies need ``deterministic=True``.
        """
        if not deterministic and self.algo not in _GREEDY_ALGOS:
            raise ActorQError(f"a {self.algo} actor built from a bundle returns its deterministic action only: "
                              "pass deterministic=True and add exploration noise in the actor loop")
        obs = np.asarray(observation)
        if obs.shape == self.input_shape:
            batch, vectorized = obs[None], False
        elif obs.shape[1:] == self.input_shape:
            batch, vectorized = obs, True
        else:
            raise ActorQError(f"observation of shape {obs.shape} does not fit the actor's input "
                              f"{self.input_shape} (one observation) or (batch, *{self.input_shape})")
        x = batch.astype(np.float32)
        if self.obs_scale != 1.0:
            x *= np.float32(self.obs_scale)
        actions = self.action.actions(self.forward(x))
        if not vectorized:
            actions = actions[0]
        return np.asarray(actions), None


class ActorQuantizer:
    """Applies an ActorQ bundle (the plan autoquant found) to each broadcast of learner weights.

    ``build`` quantizes on the actor, from the learner's fp32 state dict (original key
    names; torch tensors or numpy arrays). ``quantize`` is the learner side of central
    quantization: it returns the broadcast payload (int8 weights, scales, int32 biases),
    which ``build_quantized`` turns into an actor. Both hold no state between calls: an
    instance is plain data (picklable) and may be shipped to remote actors.
    """

    def __init__(self, bundle: ActorBundle | str | Path, *, threads: int = 1) -> None:
        self.bundle = bundle if isinstance(bundle, ActorBundle) else load_bundle(bundle)
        if threads < 1:
            raise ActorQError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._action: Any = None

    # --- learner side -----------------------------------------------------------------

    def check(self, learner_state_dict: Mapping[str, Any]) -> None:
        """Raise NetworkMismatchError unless every layer of the bundle's network is in the
        state dict under its source key, with its full (unpruned) shape."""
        fp = self.bundle.fingerprint_id
        for r in self.bundle.layers:
            for key, want in ((r.weight_key, r.weight_shape), (r.bias_key, r.bias_shape)):
                if key is None:
                    continue
                if key not in learner_state_dict:
                    keys = list(learner_state_dict)[:4]
                    raise NetworkMismatchError(
                        f"the learner's state dict has no {key!r} (layer {r.name} of the network this bundle "
                        f"was made for, fingerprint {fp}; the state dict starts with {keys}): pass the learner "
                        "policy's state_dict() with its original key names, or export a bundle for this network")
                value = learner_state_dict[key]
                got = tuple(int(v) for v in (value.shape if hasattr(value, "shape") else np.shape(value)))
                if got != want:
                    raise NetworkMismatchError(
                        f"the learner's {key!r} has shape {got}, the bundle was made for {want} (layer {r.name}, "
                        f"fingerprint {fp}): this bundle does not fit this network; export one from a run on it")

    def quantize(self, learner_state_dict: Mapping[str, Any], *, check: bool = True) -> dict[str, np.ndarray]:
        """The broadcast payload for the actors: graph initializer name -> array."""
        if check:
            self.check(learner_state_dict)
        payload: dict[str, np.ndarray] = {}
        for r in self.bundle.layers:
            weight = _as_array(learner_state_dict[r.weight_key])
            bias = _as_array(learner_state_dict[r.bias_key]) if r.bias_key is not None else None
            payload.update(encode_layer(r, weight, bias))
        return payload

    # --- actor side -----------------------------------------------------------------------

    def build(self, learner_state_dict: Mapping[str, Any]) -> ActorPolicy:
        """A quantized actor policy from the learner's fp32 weights (actor-side quantization)."""
        return self._session(self.quantize(learner_state_dict))

    def build_quantized(self, payload: Mapping[str, np.ndarray]) -> ActorPolicy:
        """A quantized actor policy from a payload that ``quantize`` made on the learner."""
        slots = {s.name: s for r in self.bundle.layers for s in r.slots.values()}
        missing = sorted(set(slots) - set(payload))
        if missing:
            raise NetworkMismatchError(f"the payload lacks {missing[:3]} ({len(missing)} of {len(slots)} "
                                       "initializers): make it with ActorQuantizer.quantize() of this bundle")
        arrays: dict[str, np.ndarray] = {}
        for name, slot in slots.items():
            value = np.asarray(payload[name])
            if value.dtype != np.dtype(slot.dtype) or tuple(value.shape) != slot.shape:
                raise NetworkMismatchError(
                    f"payload entry {name!r} is {value.dtype}{list(value.shape)}, the bundle's graph needs "
                    f"{slot.dtype}{list(slot.shape)}: make the payload with ActorQuantizer.quantize() of this bundle")
            arrays[name] = np.ascontiguousarray(value)
        return self._session(arrays)

    def _session(self, arrays: dict[str, np.ndarray]) -> ActorPolicy:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        names = list(arrays)
        values = [ort.OrtValue.ortvalue_from_numpy(arrays[name]) for name in names]
        options.add_external_initializers(names, values)
        session = ort.InferenceSession(self.bundle.graph, options, providers=["CPUExecutionProvider"])
        return ActorPolicy(session, [arrays, values], input_shape=self.bundle.input_shape,
                           obs_scale=self.bundle.obs_scale, action=self.action_spec, algo=self.bundle.algo)

    @property
    def action_spec(self) -> Any:
        """The policy's ActionSpec (how raw outputs become actions)."""
        if self._action is None:
            from autoquant.policy._bundle import ActionSpec

            data = dict(self.bundle.manifest["policy"]["action"])
            for key in ("action_shape", "low", "high"):
                if data.get(key) is not None:
                    data[key] = tuple(data[key])
            self._action = ActionSpec(**data)
        return self._action
