"""``autoquant actorq run``: Ray actors with quantized (or fp32) policies feed an fp32 SB3 learner.

The loop, with a DQN learner (asynchronous: an actor's chunk is ingested as it arrives)::

    learner (this process, SB3 DQN, fp32)            actors (Ray actors, E envs each, batched policy)
      weights -> ray.put, version v  ---------------->  pull v when it changed, rebuild the policy
      replay_buffer.add, _on_step, train  <-----------  K epsilon-greedy steps: transitions, returns, timing

with a PPO learner (synchronous, on-policy): every iteration broadcasts, every actor
returns ``n_steps`` steps of each env sampled from its own policy with the behaviour
log-probabilities, and the learner trains on them with truncated importance sampling
(``_ppo.py``) or without correction; and with the IMPALA learner (``_impala.py``,
asynchronous): an actor that returns an unroll is asked for the next at once, on the
newest broadcast, and acts while the learner trains on what it sent, corrected for the
actor's stale and quantized policy with V-trace (``run_stream``).

``--monitor`` (``_monitor.py``) checks every broadcast of a PPO or IMPALA run: it
re-calibrates the actors' activation quantizers on their latest states, measures
KL(mu || pi) and moves the actors along the precision levels (bundles, then fp32); a new
builder reaches the actors with their next request. ``--stop-at`` ends a run at the first
greedy evaluation that reaches a score, and the report's ``threshold`` gives the
wall-clock to it.

The learners (``_learner.py``, ``_ppo.py``) and the actors (``_actors.py``) have rooms of
their own; this one starts Ray, places the actors, broadcasts, evaluates and reports. It
knows a learner only by its registry entry (``_learners.py``): the entry makes it, says
which of the two loops above drives it (``_Loop.run_async``, ``_Loop.run_sync``), what
each broadcast sends and what the report says of it.

A bundle's activation quantizers are fixed (calibrated on the states it was made with).
A learner that starts from scratch sends its actors to states a trained policy never
visits: calibrate the bundle on states that cover them (for CartPole, the policy's states
plus states over the termination bounds), or the input quantizer clips them; the report's
``actor_agreement`` (actor vs learner greedy actions on recent replay states) shows it.

The same code runs on a Ray cluster (``ray_address``); autoquant must be installed on
its nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoquant._limits import MAX_ACTORS, MAX_ENVS, MAX_EPISODES, MAX_SEED, MAX_STEPS, MAX_THREADS, check_integer
from autoquant._version import __version__
from autoquant.actorq._actors import ActorWorker, Fp32ActorBuilder
from autoquant.actorq._bundle import ActorBundle, load_bundle
from autoquant.actorq._learners import check_env, learner_algo, learner_entry
from autoquant.actorq._monitor import Monitor
from autoquant.actorq._quantizer import ActorQuantizer
from autoquant.actorq._rebuild import REBUILD_PATHS
from autoquant.errors import Interrupted, UsageError, first_line

__all__ = ["ActorRunConfig", "run_actorq"]

RUN_FORMAT = "autoquant.actorq.run"
RUN_VERSION = 1
CORRECTIONS = ("tis", "vtrace", "none")  # each learner takes its own (PPO: tis, none; IMPALA: vtrace, none)


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
    learner: Any = None  # the learner's hyperparameters (its entry's config); None: the env's preset
    learner_source: str | None = None  # where ``learner``'s values come from (default "given")
    learner_threads: int = 1
    actor_threads: int = 1
    learner_algo: str | None = None  # a learner's name (learners()); None: the bundle's policy's own
    envs_per_actor: int = 1  # envs an actor steps in lockstep, one batched policy call per step
    correction: str | None = None  # the learner's default; PPO: "tis" | "none"; IMPALA: "vtrace" | "none"
    is_truncation: float = 2.0  # PPO: the largest importance weight
    rebuild: str = "auto"  # actors' rebuild path (ActorQuantizer's rebuild)
    stop_at: float | None = None  # stop once a greedy evaluation's mean reaches this score
    monitor: bool = False  # re-calibrate, measure KL(mu || pi) and move precision at every broadcast
    kl_bound: float = 0.02  # the monitor's bound on KL(mu || pi)
    monitor_patience: int = 3  # checks under half the bound before the precision goes back down
    recalibrate_tolerance: float = 1.25  # ratio of ranges past which a quantizer is re-calibrated
    precision_levels: tuple[str, ...] = ()  # further bundles, more precise, between the bundle and fp32

    def __post_init__(self) -> None:
        for name, high in (("actors", MAX_ACTORS), ("steps", MAX_STEPS), ("broadcast_every", MAX_STEPS),
                           ("chunk", MAX_STEPS), ("learner_threads", MAX_THREADS), ("actor_threads", MAX_THREADS),
                           ("envs_per_actor", MAX_ENVS)):
            check_integer(getattr(self, name), f"actorq run: --{name.replace('_', '-')}", 1, high)
        if self.eval_every is not None:
            check_integer(self.eval_every, "actorq run: --eval-every", 1, MAX_STEPS)
        check_integer(self.eval_episodes, "actorq run: --eval-episodes", 0, MAX_EPISODES)
        check_integer(self.seed, "actorq run: --seed", 0, MAX_SEED)
        if self.fp32_actors and self.central:
            raise UsageError("actorq run: --central quantizes on the learner for quantized actors; "
                             "fp32 actors receive fp32 weights: drop --central or --fp32-actors")

        if self.correction is not None and self.correction not in CORRECTIONS:
            raise UsageError(f"actorq run: --correction {self.correction!r} is not one of {', '.join(CORRECTIONS)}")
        if not self.is_truncation >= 1.0:
            raise UsageError(f"actorq run: --is-truncation must be >= 1, got {self.is_truncation!r}")
        if self.rebuild not in REBUILD_PATHS:
            raise UsageError(f"actorq run: --rebuild {self.rebuild!r} is not one of {', '.join(REBUILD_PATHS)}")
        if self.stop_at is not None and not np.isfinite(self.stop_at):
            raise UsageError(f"actorq run: --stop-at must be a finite score, got {self.stop_at!r}")
        if self.stop_at is not None and self.eval_episodes == 0:
            raise UsageError("actorq run: --stop-at stops at a greedy evaluation's score; --eval-episodes 0 runs none")
        if self.monitor and self.fp32_actors:
            raise UsageError("actorq run: --monitor keeps quantized actors close to the learner; fp32 actors have "
                             "nothing to monitor: drop --monitor or --fp32-actors")
        if self.precision_levels and not self.monitor:
            raise UsageError("actorq run: --precision-level bundles are the monitor's levels: add --monitor")
        if self.monitor:
            check_integer(self.monitor_patience, "actorq run: --monitor-patience", 1, 1000)
            if not self.kl_bound > 0:
                raise UsageError(f"actorq run: --kl-bound must be > 0, got {self.kl_bound!r}")
            if not self.recalibrate_tolerance > 1:
                raise UsageError("actorq run: --recalibrate-tolerance is a ratio of ranges and must be > 1, got "
                                 f"{self.recalibrate_tolerance!r}")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["learner"] = self.learner.to_json() if self.learner is not None else None
        return out


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
    policy_steps: int = 0
    first_rebuild: float | None = None  # an actor's first build also loads onnxruntime's kernels
    network_builds: list[float] = field(default_factory=list)  # builds on a new graph the monitor sent
    rebuilds: list[float] = field(default_factory=list)
    rebuilds_cpu: list[float] = field(default_factory=list)
    requests: int = 0
    where: dict[str, Any] = field(default_factory=dict)
    rebuild_choice: dict[str, Any] | None = None

    def add(self, r: Mapping[str, Any]) -> None:
        self.steps += int(r["steps"])
        self.busy_s += float(r["busy_s"])
        self.cpu_s += float(r["cpu_s"])
        self.policy_s += float(r["policy_s"])
        self.policy_cpu_s += float(r["policy_cpu_s"])
        self.env_s += float(r["env_s"])
        self.policy_calls += int(r["policy_calls"])
        self.policy_steps += int(r["policy_steps"])
        self.requests += 1
        if r.get("rebuild_choice") is not None:
            self.rebuild_choice = dict(r["rebuild_choice"])
        if r["rebuild_s"]:
            if r.get("new_network"):  # a graph the monitor sent: optimized (and with "auto", timed) once more
                self.network_builds.append(float(r["rebuild_s"]))
            elif self.first_rebuild is None:
                self.first_rebuild = float(r["rebuild_s"])
            else:
                self.rebuilds.append(float(r["rebuild_s"]))
                self.rebuilds_cpu.append(float(r.get("rebuild_cpu_s", 0.0)))

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "busy_s": self.busy_s, "cpu_s": self.cpu_s,
                "steps_per_s": self.steps / self.busy_s if self.busy_s > 0 else 0.0,
                "steps_per_cpu_s": self.steps / self.cpu_s if self.cpu_s > 0 else None,
                "policy_ms_per_call": 1e3 * self.policy_s / self.policy_calls if self.policy_calls else None,
                "policy_cpu_ms_per_call": (1e3 * self.policy_cpu_s / self.policy_calls if self.policy_calls
                                           else None),
                "policy_cpu_ms_per_step": (1e3 * self.policy_cpu_s / self.policy_steps if self.policy_steps
                                           else None),
                "policy_calls": self.policy_calls, "policy_steps": self.policy_steps,
                "policy_cpu_share": self.policy_cpu_s / self.cpu_s if self.cpu_s > 0 else None,
                "env_ms_per_step": 1e3 * self.env_s / max(self.steps, 1),
                "requests": self.requests, "rebuilds": len(self.rebuilds) + (self.first_rebuild is not None) + len(self.network_builds),
                "first_rebuild_ms": 1e3 * self.first_rebuild if self.first_rebuild is not None else None,
                "new_network_builds": len(self.network_builds),
                "rebuild_ms": _stats_ms(self.rebuilds), "rebuild_cpu_ms": _stats_ms(self.rebuilds_cpu),
                "rebuild_path": self.rebuild_choice,
                "where": self.where}


def _greedy_learner(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    def act(obs: np.ndarray) -> np.ndarray:
        return np.asarray(model.policy.predict(obs, deterministic=True)[0])

    return act


def _actor_agreement(states: np.ndarray | None, builder: Any, weights: Mapping[str, np.ndarray],
                     model: Any) -> float | None:
    """Share of ``states`` (recent ones the actors saw) on which an actor built from the
    learner's current weights takes the learner's greedy action (None before any)."""
    if states is None or len(states) == 0:
        return None
    actor = builder.build(weights)
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
            raise UsageError(f"could not join the Ray cluster at --ray-address {config.ray_address} "
                             f"({first_line(exc)}): "
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
    nodes = [{"node_id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0.0), "address": n.get("NodeManagerAddress")}
             for n in ray.nodes() if n.get("Alive")]
    return started, {"version": ray.__version__, "address": config.ray_address or "local",
                     "nodes": len(nodes), "node_list": nodes, "cpus": resources.get("CPU")}


class _Signals:
    """SIGTERM or SIGINT, noted by the handler and acted on by the loop between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def note(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Raise ``Interrupted`` once a signal came: the ``finally`` blocks around the loop then
        kill the actors and shut Ray down."""
        if self.signum is not None:
            raise Interrupted(f"actorq run stopped by {signal.Signals(self.signum).name}: its actors were stopped "
                              "and Ray shut down; nothing was written", signum=self.signum)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Signals]:
    """Note SIGTERM and SIGINT while the actors run, for the loop to stop on (``_Signals``).
    Installed once Ray is up, over the handler its core worker installs (a C++ stack dump,
    and an exit that leaves the actors to chance); the handler only notes the signal, since
    an exception raised inside Ray's calls comes out as a SystemError. The handlers that
    were there before come back afterwards."""
    signals = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals  # signals reach the main thread only: a caller in another thread handles them itself
        return
    previous = {s: signal.signal(s, signals.note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield signals
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def run_actorq(config: ActorRunConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the actor-learner loop and return its report (JSON-ready)."""
    import torch

    from autoquant.evaluate import episode_seeds, play_episodes, random_actor
    from autoquant.policy import make_env
    from autoquant.targets import host_facts

    say = log or (lambda s: None)
    bundle = load_bundle(config.bundle)
    env_id = check_env(bundle, config.env_id)
    entry = learner_entry(learner_algo(bundle, config.learner_algo))
    if config.learner is not None and not isinstance(config.learner, entry.config):
        raise UsageError(f"actorq run: a {entry.name.upper()} learner was given {type(config.learner).__name__} "
                         "hyperparameters")
    ray = _import_ray()
    if config.ray_address and not ray.is_initialized():
        _probe(config.ray_address)
    preset_source, preset = entry.preset(env_id)
    hyper: Any = config.learner or preset
    threads = torch.get_num_threads()
    torch.set_num_threads(config.learner_threads)
    try:
        learner = entry.make(bundle, env_id, hyper, config)
        model, init = learner.model, learner.init

        def weights_of() -> dict[str, np.ndarray]:
            return entry.weights(learner, bundle)

        if config.fp32_actors:
            builder: Any = Fp32ActorBuilder(bundle, threads=config.actor_threads, rebuild=config.rebuild)
        else:
            builder = ActorQuantizer(bundle, threads=config.actor_threads, rebuild=config.rebuild)
        builder.check(weights_of())
        monitor = None
        if config.monitor:
            if learner.epsilon is not None or not hasattr(learner, "log_probs"):
                raise UsageError(f"actorq run: --monitor compares the actors' policy with the learner's; a "
                                 f"{entry.name.upper()} learner's actors act epsilon-greedily on Q-values: use the "
                                 "ppo or impala learner")
            levels = [bundle, *(load_bundle(path) for path in config.precision_levels)]
            for level in levels[1:]:
                if level.fingerprint_id != bundle.fingerprint_id:
                    raise UsageError(f"actorq run: --precision-level {level.folder} was made for another network "
                                     f"(fingerprint {level.fingerprint_id}, the bundle's {bundle.fingerprint_id}): "
                                     "export every level from runs on the same policy")
            monitor = Monitor(levels, learner.log_probs, kl_bound=config.kl_bound, patience=config.monitor_patience,
                              tolerance=config.recalibrate_tolerance, threads=config.actor_threads,
                              rebuild=config.rebuild)
        seeds = episode_seeds(config.seed, config.eval_episodes) if config.eval_episodes else []
        random_stats = None
        if seeds:
            probe = make_env(env_id)
            random_stats = play_episodes(random_actor(probe.action_space, config.seed), env_id, seeds)
            probe.close()
        t_start = time.perf_counter()
        started, ray_facts = _ray_session(ray, config)
        with _stop_on_signals() as signals:
            kind = "fp32" if config.fp32_actors else "quantized"
            say(f"ray {ray_facts['version']} ({ray_facts['address']}, {ray_facts['nodes']} nodes, "
                f"{ray_facts['cpus']:.0f} CPUs); {config.actors} {kind} actors x {config.envs_per_actor} envs, "
                f"{entry.name.upper()} learner, {config.steps} env steps")
            try:
                loop = _Loop(ray, config, bundle, env_id, model, learner, builder, weights_of, seeds, say, signals,
                             monitor=monitor)
                result = entry.drive(loop)
            finally:
                if started:
                    ray.shutdown()
            signals.check()  # one that came as the loop ended still stops the run
        wall_s = time.perf_counter() - t_start
    finally:
        torch.set_num_threads(threads)
    final_weights = weights_of()
    final: dict[str, Any] = {}
    if seeds:
        actor = loop.builder.build(final_weights)
        final["actor"] = play_episodes(lambda obs: actor.predict(obs)[0], env_id, seeds).to_json()
        final["actor_level"] = monitor.labels[monitor.level] if monitor is not None else kind
        final["learner_fp32"] = result["curve"]["eval"][-1]["stats"]
        final["random"] = random_stats.to_json() if random_stats is not None else None
    learner_facts = entry.facts(learner, bundle, config)
    return {
        "format": RUN_FORMAT, "version": RUN_VERSION, "autoquant_version": __version__,
        "config": config.to_json(), "env_id": env_id,
        "bundle": {"path": str(bundle.folder), "summary": bundle.manifest.get("summary"),
                   "fingerprint": bundle.fingerprint_id, "made_for": bundle.manifest["policy"].get("env_id"),
                   "payload_bytes": bundle.payload_bytes},
        "actors": {"count": config.actors, "kind": kind, "envs_per_actor": config.envs_per_actor,
                   "behaviour": entry.behaviour,
                   "network": ("fp32 ONNX of the bundle's network (onnxruntime, weights per broadcast)"
                               if config.fp32_actors else f"the bundle's plan: {bundle.manifest.get('summary')}"),
                   "quantizes": None if config.fp32_actors else ("learner" if config.central else "actor"),
                   "threads": config.actor_threads},
        "learner": {**learner_facts,
                    "hyperparameters": hyper.to_json(),
                    "hyperparameters_source": ((config.learner_source or "given") if config.learner is not None
                                               else preset_source),
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


class _Loop:
    """Ray actors placed, broadcasts, requests, evaluations: what every learner shares. A learner's
    entry drives it with ``run_async`` or ``run_sync``, or with a loop of its own made of these parts."""

    def __init__(self, ray: Any, config: ActorRunConfig, bundle: ActorBundle, env_id: str, model: Any,
                 learner: Any, builder: Any, weights_of: Callable[[], dict[str, np.ndarray]], seeds: list[int],
                 say: Callable[[str], None], signals: _Signals | None = None, monitor: Monitor | None = None) -> None:
        self.ray, self.config, self.bundle, self.env_id = ray, config, bundle, env_id
        self.model, self.learner, self.builder, self.weights_of = model, learner, builder, weights_of
        self.seeds, self.say = seeds, say
        self.signals = signals or _Signals()  # checked between steps: a SIGTERM stops the loop there
        remote = ray.remote(num_cpus=1)(ActorWorker)
        self.actors = [remote.remote(builder, env_id, seed=config.seed * 1000 + 1 + i, central=config.central,
                                     envs=config.envs_per_actor) for i in range(config.actors)]
        self.totals = [_ActorTotals() for _ in self.actors]
        for total, where in zip(self.totals, ray.get([actor.where.remote() for actor in self.actors])):
            total.where = where
        self.prepare_s: list[float] = []
        self.payload_bytes: list[int] = []
        self.version = -1
        self.curve_eval: list[dict[str, Any]] = []
        self.episodes: list[list[float]] = []  # [env step at the end, return, length, actor]
        self.recent: np.ndarray | None = None  # states for the actor-agreement probe
        self.monitor = monitor
        self.builder_box: list[Any] | None = None  # [id, builder ref, central] once the monitor changed it
        self.updates_at: list[int] = []  # per broadcast version: the learner's updates then
        self.received_steps = 0  # env steps the learner took so far (the monitor's and evaluations' step)
        self.reached: dict[str, Any] | None = None  # the evaluation that reached --stop-at
        self.loop_evals = 0  # evaluations made by the end of the loop's timed part
        self.loop_start = time.perf_counter()

    def broadcast(self) -> Any:
        weights = self.weights_of()
        if self.monitor is not None and self.monitor.check(self.received_steps, self.version + 1, weights,
                                                           self.recent):
            self.builder = self.monitor.builder
            self.builder_box = [self.monitor.builder_id, self.ray.put(self.builder), self._central()]
            decision = self.monitor.decisions[-1]
            self.say(f"step {self.received_steps}: monitor: {decision['action']} "
                     + (f"to {decision['to']}" if "to" in decision else f"{sorted(decision['scales'])}")
                     + f" (KL {decision.get('kl_before', decision.get('kl_below', 0.0)):.4f})")
        start = time.perf_counter()
        payload = self.builder.quantize(weights, check=False) if self._central() else weights
        ref = self.ray.put(payload)
        self.prepare_s.append(time.perf_counter() - start)
        self.payload_bytes.append(sum(int(v.nbytes) for v in payload.values()))
        self.version += 1
        self.updates_at.append(int(self.learner.updates))
        return ref

    def _evaluate_when_due(self, received: int, next_eval: int, every: int,
                           states: Callable[[], np.ndarray | None]) -> int:
        """A greedy evaluation once ``received`` passed ``next_eval`` (not at the budget's end,
        which ``_end`` plays); the next one's step."""
        if received >= next_eval and received < self.config.steps:
            self.evaluate(received, states())
            while next_eval <= received:
                next_eval += every
        return next_eval

    def _end(self, loop_start: float, received: int, states: Callable[[], np.ndarray | None]) -> float:
        """The loop's time, then the final evaluation unless one inside it reached --stop-at."""
        loop_s = time.perf_counter() - loop_start
        self.loop_evals = len(self.curve_eval)
        if self.reached is None:
            self.evaluate(received, states())
        return loop_s

    def _next(self, pending: dict[Any, int]) -> tuple[int, Mapping[str, Any]]:
        """The first request of ``pending`` (ref -> actor) to finish: (its actor, its result),
        taken out of ``pending``; a signal that came stops the loop here."""
        self.signals.check()
        done, _ = self.ray.wait(list(pending), num_returns=1)
        return pending.pop(done[0]), self.ray.get(done[0])

    def _central(self) -> bool:
        """Whether broadcasts carry the quantized payload (the learner quantizes): --central, at a
        quantized level (the monitor's fp32 level takes the fp32 weights)."""
        return bool(self.config.central and hasattr(self.builder, "quantize"))

    def _reached(self, stats: Any, step: int) -> None:
        if self.config.stop_at is None or self.reached is not None or stats.mean < self.config.stop_at:
            return
        wall = time.perf_counter() - self.loop_start
        evals = sum(e["eval_s"] for e in self.curve_eval[1:])
        self.reached = {"score": self.config.stop_at, "reached": True, "mean": stats.mean, "ci95": stats.ci95, "env_steps": step,
                        "loop_s": wall, "eval_s": evals, "train_wall_s": wall - evals,
                        "note": ("train_wall_s: wall-clock from the first broadcast to the evaluation that reached "
                                 "the score, less the greedy evaluations before it (the learner pauses for them; "
                                 "the actors do not)")}

    def received(self, i: int, r: Mapping[str, Any], base: int) -> None:
        self.totals[i].add(r)
        envs = int(r["envs"])
        self.episodes.extend([base + k * envs + j + 1, ret, length, i] for k, j, ret, length in r["episodes"])

    def evaluate(self, step: int, states: np.ndarray | None) -> None:
        from autoquant.evaluate import play_episodes

        if not self.seeds:
            return
        self.signals.check()
        start = time.perf_counter()
        stats = play_episodes(_greedy_learner(self.model), self.env_id, self.seeds, n_envs=min(8, len(self.seeds)))
        agreement = _actor_agreement(states, self.builder, self.weights_of(), self.model)
        self.curve_eval.append({"step": step, "mean": stats.mean, "ci95": stats.ci95, "updates": self.learner.updates,
                                "actor_agreement": agreement, "eval_s": time.perf_counter() - start,
                                "wall_s": time.perf_counter() - self.loop_start, "stats": stats.to_json()})
        if step > 0:
            self._reached(stats, step)
        text = f", actor agrees on {agreement:.1%}" if agreement is not None else ""
        eps = self.learner.epsilon
        say_eps = f", epsilon {eps:.3f}" if eps is not None else ""
        self.say(f"step {step}: greedy learner {stats.mean:.1f} over {len(self.seeds)} episodes, "
                 f"{self.learner.updates} updates{say_eps}{text}")

    def run_async(self) -> dict[str, Any]:
        """Actors collect chunks on their own; the learner ingests each as it arrives
        (``learner.ingest``) and broadcasts every ``broadcast_every`` env steps once it trained."""
        config, learner, ray, actors = self.config, self.learner, self.ray, self.actors
        envs = config.envs_per_actor
        eval_every = config.eval_every or max(config.steps // 10, 1)
        try:
            self.evaluate(0, None)
            loop_start = self.loop_start = time.perf_counter()
            ref = self.broadcast()
            last_broadcast, updates_at_broadcast = 0, 0
            submitted, received = 0, 0
            next_eval = eval_every
            pending: dict[Any, int] = {}

            def submit(i: int) -> None:
                nonlocal submitted
                rounds = max(1, min(config.chunk, config.steps - submitted) // envs)
                if submitted < config.steps:
                    pending[actors[i].collect.remote([ref], self.version, learner.epsilon, rounds)] = i
                    submitted += rounds * envs

            for i in range(len(actors)):
                submit(i)
            while pending:
                i, r = self._next(pending)
                self.received(i, r, received)
                learner.ingest(r)
                received += int(r["steps"])
                self.received_steps = received
                if received - last_broadcast >= config.broadcast_every and learner.updates > updates_at_broadcast:
                    ref = self.broadcast()
                    last_broadcast, updates_at_broadcast = received, learner.updates
                next_eval = self._evaluate_when_due(received, next_eval, eval_every, learner.recent_states)
                if self.reached is not None:
                    break
                submit(i)
            loop_s = self._end(loop_start, received, learner.recent_states)
        finally:
            for actor in actors:
                ray.kill(actor)
        return self.report(received, loop_s, "every", config.broadcast_every)

    def run_sync(self, cadence: str) -> dict[str, Any]:
        """Every broadcast, every actor steps its envs ``learner.rounds`` times, and the learner
        trains on all of it (``learner.iterate``); ``cadence`` says so in the report."""
        config, learner, ray, actors = self.config, self.learner, self.ray, self.actors
        rounds = learner.rounds
        per_iteration = rounds * config.envs_per_actor * len(actors)
        eval_every = config.eval_every or max(config.steps // 10, 1)
        try:
            self.evaluate(0, None)
            loop_start = self.loop_start = time.perf_counter()
            received, next_eval = 0, eval_every
            while received < config.steps and self.reached is None:
                self.signals.check()
                ref = self.broadcast()
                rollouts = ray.get([actor.collect.remote([ref], self.version, None, rounds, self.builder_box)
                                    for actor in actors])
                for i, r in enumerate(rollouts):
                    self.received(i, r, received + i * int(r["steps"]))
                received += per_iteration
                self.received_steps = received
                self.recent = np.concatenate([np.asarray(r["obs"]).reshape(-1, *self.bundle.input_shape)
                                              for r in rollouts])
                learner.iterate(rollouts)
                next_eval = self._evaluate_when_due(received, next_eval, eval_every, lambda: self.recent)
            loop_s = self._end(loop_start, received, lambda: self.recent)
        finally:
            for actor in actors:
                ray.kill(actor)
        return self.report(received, loop_s, cadence, per_iteration)

    def run_stream(self) -> dict[str, Any]:
        """Actors act on their own schedule: each returned unroll (``learner.rounds`` steps of
        every env) is answered at once with a request for the next, on the newest broadcast,
        and only then does the learner take it (``learner.ingest``), so actors act while it
        trains. One unroll in flight per actor bounds the queue: an actor whose unroll waits
        for the learner waits with it (back-pressure). Broadcasts every ``broadcast_every`` env
        steps once the learner updated; each unroll's policy lag is the learner's updates since
        the broadcast it acted with."""
        config, learner, ray, actors = self.config, self.learner, self.ray, self.actors
        per_request = learner.rounds * config.envs_per_actor
        eval_every = config.eval_every or max(config.steps // 10, 1)
        recent: list[np.ndarray] = []  # the latest unrolls' states, for the monitor and the agreement probe
        try:
            self.evaluate(0, None)
            loop_start = self.loop_start = time.perf_counter()
            ref = self.broadcast()
            last_broadcast, updates_at_broadcast = 0, 0
            submitted, received, next_eval = 0, 0, eval_every
            pending: dict[Any, int] = {}

            def submit(i: int) -> None:
                nonlocal submitted
                if submitted < config.steps:
                    pending[actors[i].collect.remote([ref], self.version, None, learner.rounds,
                                                     self.builder_box)] = i
                    submitted += per_request

            for i in range(len(actors)):
                submit(i)
            while pending:
                i, r = self._next(pending)
                submit(i)
                self.received(i, r, received)
                acted_with = int(r["version"])
                learner.ingest(r, actor=i, lag=lambda v=acted_with: (learner.updates - self.updates_at[v],
                                                                      self.version - v))
                received += int(r["steps"])
                self.received_steps = received
                recent.append(np.asarray(r["obs"]).reshape(-1, *self.bundle.input_shape))
                while sum(len(x) for x in recent) - len(recent[0]) >= 1024:
                    recent.pop(0)
                self.recent = np.concatenate(recent)
                if received - last_broadcast >= config.broadcast_every and learner.updates > updates_at_broadcast:
                    ref = self.broadcast()
                    last_broadcast, updates_at_broadcast = received, learner.updates
                next_eval = self._evaluate_when_due(received, next_eval, eval_every, lambda: self.recent)
                if self.reached is not None:
                    break
            loop_s = self._end(loop_start, received, lambda: self.recent)
        finally:
            for actor in actors:
                ray.kill(actor)
        return self.report(received, loop_s, "every", config.broadcast_every)

    def report(self, received: int, loop_s: float, cadence: str, every: int) -> dict[str, Any]:
        totals = self.totals
        per_actor = [t.to_json() for t in totals]
        cpu = sum(t.cpu_s for t in totals)
        calls = sum(t.policy_calls for t in totals)
        policy_steps = sum(t.policy_steps for t in totals)
        rebuilds = [s for t in totals for s in t.rebuilds]
        rebuilds_cpu = [s for t in totals for s in t.rebuilds_cpu]
        first_rebuilds = [t.first_rebuild for t in totals if t.first_rebuild is not None]
        network_builds = [s for t in totals for s in t.network_builds]
        # The evaluations inside the loop's time: all but the first (before it) and any after it.
        eval_s = sum(e["eval_s"] for e in self.curve_eval[1:self.loop_evals])
        paths = sorted({t.rebuild_choice["path"] for t in totals if t.rebuild_choice})
        return {
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
            "policy_cpu_ms_per_step": 1e3 * sum(t.policy_cpu_s for t in totals) / policy_steps if policy_steps else None,
            "policy_cpu_share": sum(t.policy_cpu_s for t in totals) / cpu if cpu > 0 else None,
            "env_ms_per_step": 1e3 * sum(t.env_s for t in totals) / max(received, 1),
            "actor_busy_s": sum(t.busy_s for t in totals),
            "per_actor": per_actor,
            "placement": {"nodes": sorted({str(t.where.get("node_id")) for t in totals}),
                          "actors": [t.where for t in totals]},
            "broadcasts": {"count": self.version + 1, "cadence": cadence, "every": every,
                           "payload": "int8 (central)" if self.config.central else "fp32 state dict",
                           "payload_bytes": self.payload_bytes[0] if self.payload_bytes else None,
                           "payload_bytes_last": self.payload_bytes[-1] if self.payload_bytes else None,
                           "learner_prepare_ms": _stats_ms(self.prepare_s), "actor_rebuild_ms": _stats_ms(rebuilds),
                           "actor_rebuild_cpu_ms": _stats_ms(rebuilds_cpu),
                           "actor_first_rebuild_ms": _stats_ms(first_rebuilds),
                           "actor_new_network_build_ms": _stats_ms(network_builds),
                           "rebuild_paths": paths,
                           "note": ("actor_rebuild_ms: every rebuild after an actor's first, wall time (a busy machine "
                                    "makes it wait for a core); actor_rebuild_cpu_ms: its CPU time on the actor's "
                                    "thread; the first one (building "
                                    "the policy from the initial weights) also loads onnxruntime's kernels and, "
                                    "with rebuild 'auto', optimizes the graph once and times both rebuild paths")},
            "curve": {"episodes": self.episodes, "eval": self.curve_eval, "eval_seeds": self.seeds},
            "threshold": (self.reached if self.reached is not None else
                          {"score": self.config.stop_at, "reached": False} if self.config.stop_at is not None
                          else None),
            "monitor": self.monitor.to_json() if self.monitor is not None else None,
        }
