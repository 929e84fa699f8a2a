"""ActorQuantizer: a learner's fp32 weights -> a quantized actor policy, on every broadcast.

Nothing here goes through torch, Brevitas or an exporter. The bundle's graph is fixed
(kept channels, activation quantizers, operators); per broadcast, numpy recomputes the
graph's weight initializers from the learner's weights exactly as Brevitas would
(per-output-channel symmetric narrow-range weights, int32 biases at the accumulator's
scale), and onnxruntime opens a session on the fixed graph with those initializers
supplied as its external data: on a graph it optimized once, where that is checked to
reproduce a fresh session and is faster (``_rebuild``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoquant.actorq._bundle import ActorBundle, load_bundle
from autoquant.actorq._rebuild import Rebuilder
from autoquant.compress import as_array, encode_layer
from autoquant.errors import ActorQError, NetworkMismatchError

__all__ = ["ActorPolicy", "ActorQuantizer", "sample_logits"]

# Q-value networks act greedily whatever ``deterministic`` says (as SB3's DQN policy does).
_GREEDY_ALGOS = ("dqn", "qrdqn", "torch", "torchscript")


def sample_logits(logits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Actions drawn from softmax(logits) row by row, and their log-probabilities (float64
    softmax, as the behaviour policy's log-probs that an off-policy correction divides by)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    cumulative = np.cumsum(np.exp(log_p), axis=1)
    u = rng.random(len(z))[:, None] * cumulative[:, -1:]
    actions = np.minimum((cumulative < u).sum(axis=1), z.shape[1] - 1)
    return actions.astype(np.int64), log_p[np.arange(len(z)), actions]

class ActorPolicy:
    """A quantized actor: onnxruntime on the bundle's graph with one broadcast's weights.

    ``predict`` has stable-baselines3's signature, so anything that evaluates an SB3
    model (``evaluate_policy``, an actor loop) runs it unchanged.
    """

    def __init__(self, session: Any, *, input_shape: tuple[int, ...], obs_scale: float, action: Any,
                 algo: str) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.input_shape = input_shape
        self.obs_scale = float(obs_scale)
        self.action = action
        self.algo = algo

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw network outputs (Q-values, logits, means) for a batch of prepared inputs."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def prepare(self, observation: np.ndarray) -> tuple[np.ndarray, bool]:
        """(a float32 batch the network takes, whether ``observation`` was a batch)."""
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
        return x, vectorized

    def sample(self, observation: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(actions, log-probabilities) drawn from the policy's categorical distribution, for a
        batch of observations: what an on-policy learner's actors act with and ship."""
        actions, log_probs, _ = self.sample_with_logits(observation, rng)
        return actions, log_probs

    def sample_with_logits(self, observation: np.ndarray, rng: np.random.Generator
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``sample``'s actions and log-probabilities, and the logits they were drawn from
        (what a monitor compares with the learner's policy: KL(mu || pi) over all actions)."""
        if self.action.kind != "argmax" or self.algo in _GREEDY_ALGOS:
            raise ActorQError(f"a {self.algo} network's outputs are not a categorical policy's logits: sampling "
                              "needs a discrete-action policy-gradient network (PPO, A2C)")
        x, _ = self.prepare(observation)
        logits = self.forward(x)
        actions, log_probs = sample_logits(logits, rng)
        return actions, log_probs, logits

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
        x, vectorized = self.prepare(observation)
        actions = self.action.actions(self.forward(x))
        if not vectorized:
            actions = actions[0]
        return np.asarray(actions), None


class ActorQuantizer:
    """Applies an ActorQ bundle (the plan autoquant found) to each broadcast of learner weights.

    ``build`` quantizes on the actor, from the learner's fp32 state dict (original key
    names; torch tensors or numpy arrays). ``quantize`` is the learner side of central
    quantization: it returns the broadcast payload (int8 weights, scales, int32 biases),
    which ``build_quantized`` turns into an actor. An instance is plain data (picklable)
    and may be shipped to remote actors.

    ``rebuild`` chooses how each build opens its session (``_rebuild.Rebuilder``):
    ``"auto"`` (default) optimizes the graph once on the first build, checks that sessions
    on the optimized graph reproduce fresh ones, times both and keeps the faster;
    ``"session"`` optimizes on every build; ``"preoptimized"`` insists on the optimized
    graph. ``rebuild_choice`` says which path ran and why (set by the first build).
    """

    def __init__(self, bundle: ActorBundle | str | Path, *, threads: int = 1, rebuild: str = "auto") -> None:
        self.bundle = bundle if isinstance(bundle, ActorBundle) else load_bundle(bundle)
        if threads < 1:
            raise ActorQError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._action: Any = None
        slots = {s.name: s for r in self.bundle.layers for s in r.slots.values()}
        self.rebuilder = Rebuilder(self.bundle.graph, slots, input_shape=self.bundle.input_shape,
                                   obs_scale=self.bundle.obs_scale, threads=threads, path=rebuild)

    @property
    def rebuild_choice(self) -> dict[str, Any] | None:
        """Which rebuild path builds take and why (None before the first build)."""
        return self.rebuilder.choice

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
            weight = as_array(learner_state_dict[r.weight_key])
            bias = as_array(learner_state_dict[r.bias_key]) if r.bias_key is not None else None
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
        session = self.rebuilder.session(arrays)
        return ActorPolicy(session, input_shape=self.bundle.input_shape, obs_scale=self.bundle.obs_scale,
                           action=self.action_spec, algo=self.bundle.algo)

    @property
    def action_spec(self) -> Any:
        """The policy's ActionSpec (how raw outputs become actions)."""
        if self._action is None:
            from autoquant.policy import ActionSpec

            data = dict(self.bundle.manifest["policy"]["action"])
            for key in ("action_shape", "low", "high"):
                if data.get(key) is not None:
                    data[key] = tuple(data[key])
            self._action = ActionSpec(**data)
        return self._action
