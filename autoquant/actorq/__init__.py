"""ActorQ: quantized actors for actor-learner reinforcement learning.

The learner trains in fp32 and broadcasts its weights; actors collect experience with
a quantized copy. The plan autoquant found is the recipe each actor applies to every
broadcast, shipped as a bundle (``autoquant export RUN --format actorq --out DIR``, or
``write_bundle`` of a CompressedPolicy compressed with ``rounding="nearest"``)::

    quantizer = ActorQuantizer("actor/")                 # once per actor (or learner)
    policy = quantizer.build(learner.policy.state_dict())  # per broadcast, fp32 in
    actions, _ = policy.predict(obs)                      # SB3's predict signature

Which side quantizes: either. When the broadcast's size matters (many actors, a
network between learner and actors), quantize centrally: the learner calls
``quantizer.quantize(state_dict)`` once per broadcast and sends the payload (int8
weights, per-channel scales, int32 biases: about a quarter of the fp32 bytes, less
with pruning), and each actor calls ``quantizer.build_quantized(payload)``. Actors
that receive the fp32 state dict quantize it themselves with ``build``. Both give the
same network. What each broadcast recomputes and what stays fixed is written in the
bundle's manifest (``broadcast``).

``run_actorq`` (``autoquant actorq run``) is the whole loop: Ray actors with the bundle's
quantized policy (or fp32, for comparison) feed an fp32 stable-baselines3 learner: DQN
for Q-networks, PPO for policies, which corrects for the actors' quantized behaviour
policy with truncated importance sampling on the log-probabilities they ship, or IMPALA,
whose actors act on their own schedule and whose learner corrects their stale, quantized
samples with V-trace. ``--monitor`` (``Monitor``) re-calibrates the actors' activation
ranges on their recent states at every broadcast, measures KL(mu || pi), and raises their
precision along a ladder of bundles up to fp32 when it passes a bound. ``collect_central``
and ``collect_local`` measure SEED RL's layout (one batched inference server, env-only
actors) against local quantized actors.

The learners are entries of a registry (``learners()``, ``LearnerEntry``): the loop and
``autoquant actorq run``'s ``--learner`` and learner options are read from it. A new
learner is its own module defining its entry, plus one line in ``_learners.BUILTIN`` (or
``register_learner(entry)`` from outside the package).

Rooms: ``_bundle`` (the bundle format), ``_quantizer`` (per-broadcast quantization),
``_rebuild`` (sessions per broadcast: a graph optimized once, checked), ``_actors``
(actor builders and the actor), ``_learners`` (the learner registry, and which learner a
bundle trains with), ``_learner`` (the DQN learner, its presets and entry), ``_ppo`` (the
PPO learner, its presets, the correction and its entry), ``_impala`` (the IMPALA learner,
V-trace and its entry), ``_monitor`` (re-calibration, KL and precision levels), ``_central``
(central inference), ``_loop`` (the Ray loop and its report). The numpy recipe that rebuilds a layer's initializers lives with the graph it
fills, in ``autoquant.compress``.
"""

from __future__ import annotations

from autoquant.actorq._actors import ActorWorker, Fp32ActorBuilder, hidden_activation, sample_logits
from autoquant.actorq._bundle import (BUNDLE_FORMAT, BUNDLE_VERSION, ActorBundle, is_ladder, load_bundle, load_ladder,
                                     target_entry, write_bundle, write_ladder)
from autoquant.actorq._central import collect_central, collect_local
from autoquant.actorq._impala import (IMPALA_LEARNER, IMPALA_PRESETS, ImpalaConfig, ImpalaLearner, impala_preset,
                                     make_impala_model, vtrace)
from autoquant.actorq._learner import DQN_LEARNER, DQN_PRESETS, DQNConfig, DQNLearner, dqn_preset
from autoquant.actorq._learners import (
    LearnerEntry,
    LearnerOption,
    learner_algo,
    learner_entry,
    learners,
    register_learner,
)
from autoquant.actorq._loop import ActorRunConfig, run_actorq
from autoquant.actorq._monitor import Monitor, activation_inputs, recalibrated
from autoquant.actorq._ppo import CORRECTIONS, PPO_LEARNER, PPO_PRESETS, PPOConfig, PPOLearner, ppo_preset
from autoquant.actorq._quantizer import ActorPolicy, ActorQuantizer
from autoquant.actorq._rebuild import REBUILD_PATHS, Rebuilder
from autoquant.compress import LayerRecipe, SlotSpec, encode_layer
from autoquant.errors import ActorQError, BundleFormatError, NetworkMismatchError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "CORRECTIONS",
    "DQN_LEARNER",
    "DQN_PRESETS",
    "IMPALA_LEARNER",
    "IMPALA_PRESETS",
    "PPO_LEARNER",
    "PPO_PRESETS",
    "REBUILD_PATHS",
    "ActorBundle",
    "ActorPolicy",
    "ActorQError",
    "ActorQuantizer",
    "ActorRunConfig",
    "ActorWorker",
    "BundleFormatError",
    "DQNConfig",
    "DQNLearner",
    "Fp32ActorBuilder",
    "ImpalaConfig",
    "ImpalaLearner",
    "LayerRecipe",
    "LearnerEntry",
    "LearnerOption",
    "Monitor",
    "NetworkMismatchError",
    "PPOConfig",
    "PPOLearner",
    "Rebuilder",
    "SlotSpec",
    "activation_inputs",
    "collect_central",
    "collect_local",
    "dqn_preset",
    "encode_layer",
    "hidden_activation",
    "impala_preset",
    "is_ladder",
    "learner_algo",
    "learner_entry",
    "learners",
    "load_bundle",
    "load_ladder",
    "make_impala_model",
    "ppo_preset",
    "recalibrated",
    "register_learner",
    "run_actorq",
    "sample_logits",
    "target_entry",
    "vtrace",
    "write_bundle",
    "write_ladder",
]
