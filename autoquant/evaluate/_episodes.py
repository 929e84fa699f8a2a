"""Episodes with a network in the loop, on fixed seeds, several envs stepped in lockstep
so the network sees one batch per step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.policy import make_env

__all__ = ["EpisodeStats", "paired_comparison", "play_episodes", "random_actor"]

# two-sided 95 % Student-t quantiles by degrees of freedom (normal beyond 30)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95 % confidence interval of the mean."""
    n = len(values)
    if n < 2:
        return float("nan")
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return float(t * np.std(values, ddof=1) / math.sqrt(n))


@dataclass(frozen=True)
class EpisodeStats:
    """Returns of episodes played on ``seeds`` (one episode per seed, same order)."""

    seeds: tuple[int, ...]
    rewards: tuple[float, ...]
    lengths: tuple[int, ...]
    steps_per_s: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.rewards))

    @property
    def ci95(self) -> float:
        return ci95(self.rewards)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean, "ci95": self.ci95, "std": float(np.std(self.rewards)),
            "episodes": len(self.rewards), "seeds": list(self.seeds), "rewards": list(self.rewards),
            "lengths": list(self.lengths), "steps_per_s": self.steps_per_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeStats:
        """Read what ``to_json`` wrote (the derived figures are recomputed)."""
        return cls(seeds=tuple(int(v) for v in data["seeds"]), rewards=tuple(float(v) for v in data["rewards"]),
                   lengths=tuple(int(v) for v in data["lengths"]), steps_per_s=float(data["steps_per_s"]))


def play_episodes(
    act: Callable[[np.ndarray], np.ndarray],
    env_id: str,
    seeds: Sequence[int],
    *,
    n_envs: int = 8,
    max_steps: int | None = None,
    stop: Callable[[Mapping[int, float]], bool] | None = None,
) -> EpisodeStats:
    """One episode per seed with ``act`` (a batch of observations -> a batch of actions).

    An episode's return depends only on its seed and the policy, not on which env
    slot or batch it ran in. ``stop`` (seed -> return of the episodes finished so far)
    is asked after each episode ends; when it says so, the episodes still running are
    dropped and the result holds the finished ones, in ``seeds`` order.
    """
    queue = list(seeds)
    envs = [make_env(env_id) for _ in range(min(n_envs, len(queue)))]
    rewards: dict[int, float] = {}
    lengths: dict[int, int] = {}
    slots: list[dict[str, Any] | None] = []
    obs: list[Any] = []
    for env in envs:
        s = queue.pop(0)
        obs.append(env.reset(seed=s)[0])
        slots.append({"seed": s, "ret": 0.0, "len": 0})
    steps = 0
    start = time.perf_counter()
    try:
        while any(slot is not None for slot in slots):
            live = [k for k, slot in enumerate(slots) if slot is not None]
            actions = act(np.stack([obs[k] for k in live]))
            for a, k in zip(actions, live):
                slot = slots[k]
                assert slot is not None
                o, r, terminated, truncated, _ = envs[k].step(a)
                slot["ret"] += float(r)
                slot["len"] += 1
                steps += 1
                if max_steps is not None and slot["len"] >= max_steps:
                    truncated = True
                if terminated or truncated:
                    rewards[slot["seed"]], lengths[slot["seed"]] = slot["ret"], slot["len"]
                    if stop is not None and stop(rewards):
                        queue.clear()
                        slots = [None] * len(slots)
                        break
                    if queue:
                        s = queue.pop(0)
                        o, _ = envs[k].reset(seed=s)
                        slots[k] = {"seed": s, "ret": 0.0, "len": 0}
                    else:
                        slots[k] = None
                obs[k] = o
    finally:
        for env in envs:
            env.close()
    elapsed = time.perf_counter() - start
    done = [s for s in seeds if s in rewards]
    return EpisodeStats(
        seeds=tuple(done), rewards=tuple(rewards[s] for s in done),
        lengths=tuple(lengths[s] for s in done), steps_per_s=steps / elapsed if elapsed > 0 else 0.0,
    )


def random_actor(action_space: Any, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Uniformly random actions: the floor that reward retention is measured from."""
    space = action_space
    space.seed(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.stack([space.sample() for _ in range(len(obs))])

    return act


def paired_comparison(candidate: EpisodeStats, reference: EpisodeStats,
                      floor: EpisodeStats | None = None) -> dict[str, float]:
    """Candidate vs reference on the same seeds.

    ``retention`` = (candidate - floor) / (reference - floor), where the floor is a
    random policy on the same seeds (0 when none is given): 1.0 keeps all of what the
    reference gains over acting at random, and it stays meaningful for negative
    rewards (Pong, Pendulum).
    """
    if candidate.seeds != reference.seeds:
        raise ValueError("paired comparison needs the same seeds in the same order")
    diffs = np.array(candidate.rewards) - np.array(reference.rewards)
    base = floor.mean if floor is not None else 0.0
    gain = reference.mean - base
    retention = (candidate.mean - base) / gain if abs(gain) > 1e-12 else float("nan")
    return {
        "retention": float(retention),
        "mean_diff": float(diffs.mean()),
        "mean_diff_ci95": ci95(list(diffs)),
        "floor": float(base),
    }
