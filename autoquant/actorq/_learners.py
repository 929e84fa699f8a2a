"""The learners ``autoquant actorq run`` trains: one entry each, read by the loop and the CLI.

An entry (``LearnerEntry``) holds what is particular to a learner: its name and a line of
help; its hyperparameters (a frozen dataclass with ``to_json``) and their preset per env;
``make``, which builds the SB3 model and the learner around it; ``drive``, how the loop
runs it; ``weights``, what each broadcast sends; ``facts``, its part of the report; how its
actors behave; its command-line options; and which bundles it trains. The loop (``_loop``)
and the command line read entries and never branch on a learner's name.

The built-in entries are DQN (``_learner``), PPO (``_ppo``) and IMPALA (``_impala``). They are named here by
entry point (``"module:NAME"``) and imported on first use, so that their modules may
import this one. Adding a learner is its own module, which defines its entry, plus one
line in ``BUILTIN`` (or one ``register_learner`` call, for a learner outside the package).

The learner object that ``make`` returns has ``model`` (the SB3 model; greedy evaluations
predict with ``model.policy``), ``hyper`` (its hyperparameters), ``epsilon`` (the actors'
exploration rate; None when they sample from their own policy), ``init`` (facts of the
policy it started from, or None), and ``updates``, ``train_s`` and ``ingest_s`` for the
report. ``drive`` gets the loop (``_loop._Loop``) and returns its report. The loop offers two
ways to drive a learner:

- ``loop.run_async()``: every actor collects chunks on its own and the learner ingests
  each as it arrives (``learner.ingest(chunk)``); broadcasts every ``broadcast_every``
  env steps; the actor-agreement probe reads ``learner.recent_states()``. DQN's.
- ``loop.run_sync(cadence)``: every broadcast, every actor steps its envs
  ``learner.rounds`` times and the learner trains on all of it (``learner.iterate(rollouts)``).
  PPO's.
- ``loop.run_stream()``: every actor is asked for its next unroll of ``learner.rounds``
  steps as soon as it returns one, with the newest broadcast, and the learner then takes
  the returned one (``learner.ingest(unroll, actor=, lag=)``, ``lag()`` giving the learner
  updates and broadcasts since the weights it acted with, when the learner uses it):
  actors act while the learner trains, one unroll in flight each. IMPALA's.

A learner that needs another loop writes its own ``drive`` from the loop's parts
(``broadcast``, ``received``, ``evaluate``, ``report``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.actorq._bundle import ActorBundle
from autoquant.errors import ActorQError, EnvMismatchError, UsageError

__all__ = [
    "BUILTIN",
    "NON_RELU_ACTIVATIONS",
    "LearnerEntry",
    "LearnerOption",
    "check_env",
    "learner_algo",
    "learner_entry",
    "learners",
    "register_learner",
]

# The built-in learners, by entry point, in the order --learner lists them.
BUILTIN = (
    "autoquant.actorq._learner:DQN_LEARNER",
    "autoquant.actorq._ppo:PPO_LEARNER",
    "autoquant.actorq._impala:IMPALA_LEARNER",
)

# Activations in an exported graph besides ReLU, for a learner's ``check_network``.
NON_RELU_ACTIVATIONS = frozenset({"Tanh", "Sigmoid", "LeakyRelu", "Elu", "Selu", "Gelu", "Softplus", "HardSigmoid",
                                  "HardSwish", "Mish", "Celu", "PRelu"})


@dataclass(frozen=True)
class LearnerOption:
    """One command-line option of a learner: ``flag`` sets the hyperparameter ``field``.
    ``type`` is int or float; an int option is checked against [low, high] when it is parsed."""

    flag: str
    field: str
    type: type
    help: str
    low: int | None = None
    high: int | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute the flag fills."""
        return self.flag.lstrip("-").replace("-", "_")


def _no_check(bundle: ActorBundle, ops: set[str]) -> None:
    return None


@dataclass(frozen=True)
class LearnerEntry:
    """One learner of ``actorq run``: what the loop and the CLI need of it (module docstring)."""

    name: str  # --learner NAME, and the upper-case name in messages and the report
    help: str  # one line, for --learner's help
    config: type  # its hyperparameters: a frozen dataclass with to_json()
    preset: Callable[[str], tuple[str, Any]]  # env id -> (where the values come from, hyperparameters)
    make: Callable[[ActorBundle, str, Any, Any], Any]  # (bundle, env id, hyperparameters, ActorRunConfig) -> learner
    drive: Callable[[Any], dict[str, Any]]  # the loop -> the loop's report (run_async or run_sync, or its own)
    weights: Callable[[Any, ActorBundle], dict[str, np.ndarray]]  # (learner, bundle) -> what a broadcast sends
    facts: Callable[[Any, ActorBundle, Any], dict[str, Any]]  # (learner, bundle, ActorRunConfig) -> its report keys
    behaviour: str  # how its actors act, for the report
    trains: str  # what it trains, for messages ("Q-value networks")
    outputs: str  # what the networks it trains output, for messages ("Q-values")
    natural: tuple[str, ...] = ()  # the bundle's policy algorithms it trains when --learner is not given
    options: tuple[LearnerOption, ...] = ()
    check_network: Callable[[ActorBundle, set[str]], None] = _no_check  # (bundle, its ONNX op types): refuse one

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"learner name {self.name!r}: use letters, digits, '-' and '_'")
        fields = {f.name for f in dataclasses.fields(self.config)}
        for option in self.options:
            if not option.flag.startswith("--") or option.field not in fields:
                raise UsageError(f"learner {self.name}: option {option.flag} must start with '--' and set a field "
                                 f"of {self.config.__name__}")


_REGISTRY: dict[str, LearnerEntry] = {}


def learners() -> dict[str, LearnerEntry]:
    """Every learner by name, the built-in ones first (imported on the first call)."""
    if not _REGISTRY:
        for entry_point in BUILTIN:
            module, _, name = entry_point.partition(":")
            _add(getattr(importlib.import_module(module), name))
    return _REGISTRY


def _add(entry: LearnerEntry) -> LearnerEntry:
    for other in _REGISTRY.values():
        if other.name == entry.name:
            continue  # replaced
        for mine in entry.options:
            for theirs in other.options:
                if mine.flag == theirs.flag and (mine.field, mine.type) != (theirs.field, theirs.type):
                    raise UsageError(f"learner {entry.name}: {mine.flag} sets {mine.field}; the {other.name} "
                                     f"learner's sets {theirs.field}: give the option another flag")
    _REGISTRY[entry.name] = entry
    return entry


def register_learner(entry: LearnerEntry) -> LearnerEntry:
    """Make ``entry`` the learner called ``entry.name``: ``--learner NAME`` then reaches it,
    with its options in ``autoquant actorq run --help``."""
    learners()
    return _add(entry)


def learner_entry(name: str) -> LearnerEntry:
    """The learner called ``name`` (UsageError when there is none)."""
    found = learners().get(name)
    if found is None:
        raise UsageError(f"--learner {name!r} is not one of {', '.join(learners())}")
    return found


def _natural(algo: str) -> LearnerEntry | None:
    """The first learner that trains a bundle of an ``algo`` policy unasked."""
    return next((entry for entry in learners().values() if algo in entry.natural), None)


def learner_algo(bundle: ActorBundle, asked: str | None) -> str:
    """The learner a bundle's policy trains with (a name of ``learners()``), checked against ``asked``."""
    natural = _natural(bundle.algo)
    name = asked or (natural.name if natural is not None else None)
    if name is None:
        known = learners().values()
        raise ActorQError("actorq run trains " + " or ".join(f"{e.name.upper()} ({e.trains})" for e in known)
                          + f"; the bundle is for a {bundle.algo} policy: export a bundle from a "
                          + " or ".join(e.name.upper() for e in known) + " policy")
    entry = learner_entry(name)
    if bundle.manifest["policy"]["action"]["kind"] != "argmax":
        raise ActorQError(f"actorq run's {name.upper()} learner needs discrete actions; the bundle's network "
                          "does not output one value per discrete action")
    if natural is not None and entry is not natural and entry.outputs != natural.outputs:
        raise UsageError(f"--learner {name}: the bundle's {bundle.algo} network outputs {natural.outputs}, which a "
                         f"{name.upper()} learner does not train; drop --learner or pass --learner {natural.name}")
    import onnx

    entry.check_network(bundle, {node.op_type for node in onnx.load_from_string(bundle.graph).graph.node})
    return name


def check_env(bundle: ActorBundle, env_id: str) -> str:
    """The canonical env id, or EnvMismatchError when it is not the bundle's."""
    from autoquant.policy import canonical_env_id

    wanted = canonical_env_id(env_id)
    made_for = bundle.manifest["policy"].get("env_id")
    if made_for is not None and canonical_env_id(str(made_for)) != wanted:
        raise EnvMismatchError(f"the bundle {bundle.folder} was made for {made_for}, not {env_id}: actors would "
                               f"run its calibrated quantizers on another env's observations; pass --env {made_for} "
                               "or export a bundle from a run on this env")
    return wanted
