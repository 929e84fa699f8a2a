"""``autoquant actorq run``: Ray actors with quantized (or fp32) policies feed an fp32 SB3 learner.

The loop::

    learner (this process, SB3 DQN, fp32)            actors (Ray actors, one env each)
      weights -> ray.put, version v  ---------------->  pull v when it changed, rebuild the policy
      replay_buffer.add, _on_step, train  <-----------  K epsilon-greedy steps: transitions, returns, timing

The learner (``_learner.py``) and the actors (``_actors.py``) have rooms of their own;
this one starts Ray, places the actors, broadcasts, evaluates and reports.

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
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoquant._version import __version__
from autoquant.actorq._actors import ActorWorker, Fp32ActorBuilder
from autoquant.actorq._bundle import ActorBundle, load_bundle
from autoquant.actorq._learner import (
    DQNConfig,
    DQNLearner,
    check_algo,
    check_env,
    dqn_preset,
    init_from_policy,
    learner_policy,
    learner_weights,
    make_learner,
)
from autoquant.actorq._quantizer import ActorQuantizer
from autoquant.errors import UsageError, first_line

__all__ = ["ActorRunConfig", "run_actorq"]

RUN_FORMAT = "autoquant.actorq.run"
RUN_VERSION = 1


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
    learner_source: str | None = None  # where ``learner``'s values come from (default "given")
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
    return started, {"version": ray.__version__, "address": config.ray_address or "local",
                     "nodes": len(ray.nodes()), "cpus": resources.get("CPU")}


def run_actorq(config: ActorRunConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the actor-learner loop and return its report (JSON-ready)."""
    import torch

    from autoquant.evaluate import episode_seeds, play_episodes, random_actor
    from autoquant.policy import make_env
    from autoquant.targets import host_facts

    say = log or (lambda s: None)
    bundle = load_bundle(config.bundle)
    env_id = check_env(bundle, config.env_id)
    check_algo(bundle)
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
    learner: DQNLearner = result.pop("_learner")
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
        "learner": {"algo": "DQN", "policy": learner_policy(bundle)[0], "policy_kwargs": learner_policy(bundle)[1],
                    "hyperparameters": hyper.to_json(),
                    "hyperparameters_source": (config.learner_source or "given") if config.learner is not None else preset_source,
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

    learner = DQNLearner(model, hyper, config.steps)
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


