"""Central inference (SEED RL's layout) beside local quantized actors: which collects more.

In SEED RL the actors hold no network: they step their envs and send each observation
batch to one inference server beside the learner, which batches the requests of many
actors into one call on an accelerator. ``InferenceServer`` is that server as a Ray actor
on CPU: the policy (any builder's: the bundle's quantized one or fp32) and an event loop
that gathers requests arriving within ``wait_ms`` (or until ``max_batch`` rows) and answers
them with one call (at once when every client's request is in). ``EnvActor`` steps its envs
and asks the server for every action.

``collect_central`` and ``collect_local`` run the same envs for the same number of steps in
either layout and count the CPU-seconds of every process that took part (actors, and the
server; each process's own CPU time, Ray's threads in it included), so that
``env steps per CPU-second`` compares what each layout costs, and wall-clock steps per
second what it gives on the cores it had.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from autoquant.actorq._quantizer import sample_logits
from autoquant.errors import ActorQError

__all__ = ["EnvActor", "InferenceServer", "collect_central", "collect_local"]


class InferenceServer:
    """Batched inference for many actors (a Ray async actor): ``act(obs)`` -> (actions, log-probs)."""

    def __init__(self, builder: Any, weights: Mapping[str, np.ndarray], *, max_batch: int = 256,
                 wait_ms: float = 1.0, seed: int = 0, clients: int | None = None) -> None:
        self.policy = builder.build(weights)
        self.max_batch = int(max_batch)
        self.clients = clients  # a batch is complete once this many requests wait (each client sends one)
        self.wait_s = float(wait_ms) / 1e3
        self.rng = np.random.default_rng(seed)
        self.queue: list[tuple[np.ndarray, asyncio.Future[Any]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.calls = 0
        self.rows = 0
        self.policy_cpu_s = 0.0
        self.cpu_start = time.process_time()

    async def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        obs = np.asarray(obs)
        if obs.shape[1:] != self.policy.input_shape:
            raise ValueError(f"act() takes a batch of observations shaped (n, *{self.policy.input_shape}), got "
                             f"{obs.shape}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.queue.append((obs, future))
        if (sum(len(o) for o, _ in self.queue) >= self.max_batch
                or (self.clients is not None and len(self.queue) >= self.clients)):
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.wait_s, self._flush)
        result: tuple[np.ndarray, np.ndarray] = await future
        return result

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.queue = [item for item in self.queue if not item[1].done()], []  # a cancelled caller: skipped
        if not batch:
            return
        start = time.thread_time()
        try:
            x, _ = self.policy.prepare(np.concatenate([o for o, _ in batch]))
            actions, log_probs = sample_logits(self.policy.forward(x), self.rng)
        except Exception as exc:  # every caller of the batch gets the error, none waits for an answer
            for _, future in batch:
                future.set_exception(exc)
            return
        finally:
            self.policy_cpu_s += time.thread_time() - start
        self.calls += 1
        self.rows += len(actions)
        at = 0
        for obs, future in batch:
            future.set_result((actions[at:at + len(obs)], log_probs[at:at + len(obs)]))
            at += len(obs)

    def stats(self) -> dict[str, Any]:
        return {"cpu_s": time.process_time() - self.cpu_start, "calls": self.calls, "rows": self.rows,
                "rows_per_call": self.rows / self.calls if self.calls else None, "policy_cpu_s": self.policy_cpu_s}


class EnvActor:
    """``envs`` copies of the env, stepped in lockstep; every action comes from the server."""

    def __init__(self, env_id: str, *, envs: int, seed: int) -> None:
        from autoquant.policy import make_env

        self.envs = [make_env(env_id) for _ in range(envs)]
        self.obs = np.stack([env.reset(seed=seed + 7919 * j)[0] for j, env in enumerate(self.envs)])

    def run(self, server: Any, rounds: int) -> dict[str, Any]:
        import ray

        cpu, start = time.process_time(), time.perf_counter()
        env_s = wait_s = 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            actions, _ = ray.get(server.act.remote(self.obs))
            t1 = time.perf_counter()
            fresh = []
            for env, action in zip(self.envs, actions.tolist()):
                o, _, term, trunc, _ = env.step(action)
                if term or trunc:
                    o, _ = env.reset()
                fresh.append(o)
            self.obs = np.stack(fresh)
            wait_s += t1 - t0
            env_s += time.perf_counter() - t1
        return {"steps": rounds * len(self.envs), "cpu_s": time.process_time() - cpu,
                "wall_s": time.perf_counter() - start, "wait_s": wait_s, "env_s": env_s}


class _LocalActor:
    """The local layout's actor for the comparison: ActorWorker's collection, timed by process CPU."""

    def __init__(self, builder: Any, weights: Mapping[str, np.ndarray], env_id: str, *, envs: int,
                 seed: int) -> None:
        from autoquant.actorq._actors import ActorWorker

        self.worker = ActorWorker(builder, env_id, seed=seed, central=False, envs=envs)
        self.weights = dict(weights)
        self.worker.collect([self.weights], 0, None, 1)  # builds the policy: not part of what is compared

    def run(self, rounds: int) -> dict[str, Any]:
        cpu, start = time.process_time(), time.perf_counter()
        r = self.worker.collect([self.weights], 0, None, rounds)
        return {"steps": int(r["steps"]), "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - start,
                "policy_cpu_s": float(r["policy_cpu_s"]), "env_s": float(r["env_s"])}


def _summary(layout: str, actors: list[dict[str, Any]], wall_s: float, server: dict[str, Any] | None
             ) -> dict[str, Any]:
    steps = sum(a["steps"] for a in actors)
    cpu = sum(a["cpu_s"] for a in actors) + (server["cpu_s"] if server else 0.0)
    return {"layout": layout, "actors": len(actors), "env_steps": steps, "wall_s": wall_s, "cpu_s": cpu,
            "steps_per_s": steps / wall_s, "steps_per_cpu_s": steps / cpu if cpu > 0 else None,
            "actor_cpu_s": sum(a["cpu_s"] for a in actors), "server": server, "per_actor": actors}


def _get(ray: Any, refs: Any, timeout_s: float) -> Any:
    """``ray.get`` that fails in one line instead of waiting forever for actors Ray cannot place."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ActorQError(f"the actors did not answer within {timeout_s:.0f} s: the cluster may lack the CPU slots "
                          "for them (lower cpus_per_actor, or add nodes)") from None


def collect_central(ray: Any, builder: Any, weights: Mapping[str, np.ndarray], env_id: str, *, actors: int,
                    envs: int, rounds: int, max_batch: int = 256, wait_ms: float = 1.0, seed: int = 0,
                    cpus_per_actor: float = 1.0, timeout_s: float = 600.0) -> dict[str, Any]:
    """``actors`` env-only actors of ``envs`` envs, ``rounds`` steps each, against one server
    (each of them a Ray actor holding ``cpus_per_actor`` of Ray's CPU slots)."""
    server = ray.remote(num_cpus=cpus_per_actor, max_concurrency=max(64, 4 * actors))(InferenceServer).remote(
        builder, dict(weights), max_batch=max_batch, wait_ms=wait_ms, seed=seed, clients=actors)
    remote = ray.remote(num_cpus=cpus_per_actor)(EnvActor)
    workers = [remote.remote(env_id, envs=envs, seed=seed * 1000 + 1 + i) for i in range(actors)]
    try:
        _get(ray, [w.run.remote(server, 1) for w in workers], timeout_s)  # warm: connections, first session run
        before = _get(ray, server.stats.remote(), timeout_s)
        start = time.perf_counter()
        results = _get(ray, [w.run.remote(server, rounds) for w in workers], timeout_s)
        wall = time.perf_counter() - start
        after = _get(ray, server.stats.remote(), timeout_s)
    finally:
        for handle in [server, *workers]:
            ray.kill(handle)
    stats = {"cpu_s": after["cpu_s"] - before["cpu_s"], "calls": after["calls"] - before["calls"],
             "rows": after["rows"] - before["rows"], "policy_cpu_s": after["policy_cpu_s"] - before["policy_cpu_s"],
             "max_batch": max_batch, "wait_ms": wait_ms}
    stats["rows_per_call"] = stats["rows"] / stats["calls"] if stats["calls"] else None
    return _summary("central", results, wall, stats)


def collect_local(ray: Any, builder: Any, weights: Mapping[str, np.ndarray], env_id: str, *, actors: int, envs: int,
                  rounds: int, seed: int = 0, cpus_per_actor: float = 1.0, timeout_s: float = 600.0) -> dict[str, Any]:
    """The same collection with the policy in every actor (ActorQ's layout)."""
    remote = ray.remote(num_cpus=cpus_per_actor)(_LocalActor)
    workers = [remote.remote(builder, dict(weights), env_id, envs=envs, seed=seed * 1000 + 1 + i)
               for i in range(actors)]
    try:
        _get(ray, [w.run.remote(1) for w in workers], timeout_s)
        start = time.perf_counter()
        results = _get(ray, [w.run.remote(rounds) for w in workers], timeout_s)
        wall = time.perf_counter() - start
    finally:
        for handle in workers:
            ray.kill(handle)
    return _summary("local", results, wall, None)
