"""Episodes with a network in the loop, on fixed seeds, several envs stepped in lockstep
so the network sees one batch per step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.evaluate._games import Estimate, Trace, estimate, label_games
from autoquant.evaluate._workers import default_workers, pool
from autoquant.policy import Protocol, make_env, resolve_protocol

__all__ = ["EpisodeStats", "ci95", "describe_episodes", "paired_comparison", "paired_difference", "play_episodes", "random_actor"]

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
    """Returns of episodes played on ``seeds`` (one episode per seed, same order), under
    ``protocol``, with ``games``: one label per episode, equal for copies of one game
    (``autoquant.evaluate._games``)."""

    seeds: tuple[int, ...]
    rewards: tuple[float, ...]
    lengths: tuple[int, ...]
    steps_per_s: float
    games: tuple[int, ...] | None = None  # None: every seed a game of its own
    protocol: Protocol = Protocol()

    @property
    def labels(self) -> tuple[int, ...]:
        return self.games if self.games is not None else tuple(range(len(self.seeds)))

    @property
    def distinct_games(self) -> int:
        return len(set(self.labels))

    @property
    def starts_played(self) -> int:
        """Distinct start conditions played, under a protocol with finitely many."""
        if self.protocol.starts is None:
            return len(set(self.seeds))
        return len({self.protocol.start_of(s) for s in self.seeds})

    def estimate(self, *, confidence: float = 0.95) -> Estimate:
        """The mean reward with its interval, each distinct game counted once."""
        return estimate(self.rewards, self.labels, starts_total=self.protocol.starts,
                        starts_played=self.starts_played, confidence=confidence)

    @property
    def exact(self) -> bool:
        """Every start of a finite protocol played: the mean is the protocol's own."""
        return self.protocol.starts is not None and self.starts_played >= self.protocol.starts

    @property
    def mean(self) -> float:
        return float(np.mean(self.rewards))

    @property
    def ci95(self) -> float:
        """Half-width of the 95 % interval of the mean, each distinct game counted once: 0 when
        exact over the protocol's starts, NaN below two distinct games."""
        return self.estimate().half_width

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean, "ci95": self.ci95, "std": float(np.std(self.rewards)),
            "episodes": len(self.rewards), "distinct_games": self.distinct_games, "exact": self.exact,
            "protocol": self.protocol.to_json(), "sticky_actions": self.protocol.sticky_actions,
            "seeds": list(self.seeds), "rewards": list(self.rewards), "lengths": list(self.lengths),
            "games": list(self.labels), "steps_per_s": self.steps_per_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeStats:
        """Read what ``to_json`` wrote (the derived figures are recomputed)."""
        games = data.get("games")
        return cls(seeds=tuple(int(v) for v in data["seeds"]), rewards=tuple(float(v) for v in data["rewards"]),
                   lengths=tuple(int(v) for v in data["lengths"]), steps_per_s=float(data["steps_per_s"]),
                   games=tuple(int(v) for v in games) if games is not None else None,
                   protocol=Protocol.from_json(data["protocol"]) if "protocol" in data else Protocol())


def play_episodes(
    act: Callable[[np.ndarray], np.ndarray],
    env_id: str,
    seeds: Sequence[int],
    *,
    protocol: Protocol | None = None,
    n_envs: int = 8,
    max_steps: int | None = None,
    stop: Callable[[EpisodeStats], bool] | None = None,
    workers: int | None = None,
) -> EpisodeStats:
    """One episode per seed with ``act`` (a batch of observations -> a batch of actions),
    under ``protocol`` (default: the env id's own).

    An episode's return depends only on its seed and the policy, not on which env
    slot or batch it ran in. ``stop`` is asked after each episode ends, with the episodes
    finished so far; when it says so, the episodes still running are dropped and the result
    holds the finished ones, in ``seeds`` order. ``workers`` > 0 steps the envs in that many
    worker processes (``autoquant.evaluate._workers``; default ``AUTOQUANT_ENV_WORKERS``, 0:
    in this process); the episodes are the same.
    """
    protocol = protocol if protocol is not None else resolve_protocol(env_id)
    queue = list(seeds)
    n = min(n_envs, len(queue))
    workers = default_workers() if workers is None else workers
    envs: list[Any] = []
    if workers > 0 and n > 0:
        remote = pool(env_id, protocol, n, workers)
        reset_all, step_all = remote.reset, remote.step
    else:
        envs = [make_env(env_id, protocol=protocol) for _ in range(n)]

        def reset_all(items: Sequence[tuple[int, int]]) -> dict[int, Any]:
            return {k: envs[k].reset(seed=s)[0] for k, s in items}

        def step_all(items: Sequence[tuple[int, Any]]) -> dict[int, tuple[Any, float, bool, bool]]:
            out = {}
            for k, a in items:
                o, r, terminated, truncated, _ = envs[k].step(a)
                out[k] = (o, float(r), bool(terminated), bool(truncated))
            return out

    finished: dict[int, tuple[float, Trace]] = {}
    slots: list[dict[str, Any] | None] = []
    firsts = [(k, queue.pop(0)) for k in range(n)]
    first_obs = reset_all(firsts)
    obs: list[Any] = [first_obs[k] for k in range(n)]
    for _, s in firsts:
        slots.append({"seed": s, "ret": 0.0, "len": 0, "events": []})
    steps = 0
    start = time.perf_counter()

    def stats(elapsed: float) -> EpisodeStats:
        done = [s for s in seeds if s in finished]
        traces = [finished[s][1] for s in done]
        return EpisodeStats(
            seeds=tuple(done), rewards=tuple(finished[s][0] for s in done),
            lengths=tuple(t.length for t in traces), steps_per_s=steps / elapsed if elapsed > 0 else 0.0,
            games=label_games(traces, finite_starts=protocol.starts is not None), protocol=protocol,
        )

    try:
        while any(slot is not None for slot in slots):
            live = [k for k, slot in enumerate(slots) if slot is not None]
            actions = act(np.stack([obs[k] for k in live]))
            stepped = step_all(list(zip(live, actions)))
            for k in live:
                slot = slots[k]
                assert slot is not None
                o, r, terminated, truncated = stepped[k]
                slot["ret"] += float(r)
                slot["len"] += 1
                if r:
                    slot["events"].append((slot["len"], float(r)))
                steps += 1
                if max_steps is not None and slot["len"] >= max_steps:
                    truncated = True
                if terminated or truncated:
                    finished[slot["seed"]] = (slot["ret"], Trace(tuple(slot["events"]), slot["len"],
                                                               truncated=bool(truncated and not terminated)))
                    if stop is not None and stop(stats(time.perf_counter() - start)):
                        queue.clear()
                        slots = [None] * len(slots)
                        break
                    if queue:
                        s = queue.pop(0)
                        o = reset_all([(k, s)])[k]
                        slots[k] = {"seed": s, "ret": 0.0, "len": 0, "events": []}
                    else:
                        slots[k] = None
                obs[k] = o
    finally:
        for env in envs:
            env.close()
    return stats(time.perf_counter() - start)


def describe_episodes(stats: EpisodeStats) -> str:
    """One line: the protocol, the episodes and distinct games behind a mean, and the mean
    with its interval ("exact over the 30 starts" where every start was played)."""
    if not stats.seeds:
        return f"{stats.protocol.name}: no episodes"
    if stats.exact:
        value = f"{stats.mean:.2f}, exact over the {stats.protocol.starts} starts"
    else:
        half = stats.ci95
        value = f"{stats.mean:.2f} ± {half:.2f} (95 %)" if math.isfinite(half) else f"{stats.mean:.2f} (no interval)"
    return (f"{stats.protocol.name}; {len(stats.seeds)} episodes, {stats.distinct_games} distinct "
            f"game{'s' if stats.distinct_games != 1 else ''}; mean {value}")


def random_actor(action_space: Any, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Uniformly random actions: the floor that reward retention is measured from."""
    space = action_space
    space.seed(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.stack([space.sample() for _ in range(len(obs))])

    return act


def paired_difference(candidate: EpisodeStats, reference: EpisodeStats, *, confidence: float = 0.95,
                      min_distinct: int = 2) -> Estimate:
    """candidate - reference on the seeds both played, each distinct pair of games counted once."""
    ref = {s: (r, g) for s, r, g in zip(reference.seeds, reference.rewards, reference.labels)}
    pairs = [(r - ref[s][0], (ref[s][1], g)) for s, r, g in zip(candidate.seeds, candidate.rewards, candidate.labels)
             if s in ref]
    protocol = candidate.protocol
    played = [s for s in candidate.seeds if s in ref]
    starts = len({protocol.start_of(s) for s in played}) if protocol.starts is not None else len(set(played))
    return estimate([d for d, _ in pairs], [label for _, label in pairs], starts_total=protocol.starts,
                    starts_played=starts, confidence=confidence, min_distinct=min_distinct)


def paired_comparison(candidate: EpisodeStats, reference: EpisodeStats,
                      floor: EpisodeStats | None = None, *, confidence: float = 0.95) -> dict[str, Any]:
    """Candidate vs reference on the same seeds, under the same protocol.

    ``retention`` = (candidate - floor) / (reference - floor), where the floor is a
    random policy on the same seeds (0 when none is given): 1.0 keeps all of what the
    reference gains over acting at random, and it stays meaningful for negative
    rewards (Pong, Pendulum). Its interval counts each distinct pair of games once, and is
    exact (no width) when every start of a finite protocol was played.
    """
    if candidate.seeds != reference.seeds:
        raise ValueError("paired comparison needs the same seeds in the same order")
    if candidate.protocol != reference.protocol:
        raise ValueError(f"paired comparison needs one protocol, got {candidate.protocol.name!r} and "
                         f"{reference.protocol.name!r}")
    diff = paired_difference(candidate, reference, confidence=confidence)
    base = floor.mean if floor is not None else 0.0
    gain = reference.mean - base
    ok = abs(gain) > 1e-12

    def scale(d: float) -> float:
        return 1.0 + d / gain if ok else float("nan")

    low, high = sorted((scale(diff.low), scale(diff.high))) if ok else (float("nan"), float("nan"))
    return {
        "retention": float(scale(diff.mean)) if ok else float("nan"),
        "retention_low": low, "retention_high": high, "confidence": confidence,
        "exact": diff.exact, "episodes": diff.episodes, "distinct_pairs": diff.distinct,
        "distinct_games": {"candidate": candidate.distinct_games, "reference": reference.distinct_games},
        "protocol": candidate.protocol.to_json(), "sticky_actions": candidate.protocol.sticky_actions,
        "mean_diff": diff.mean,
        "mean_diff_ci95": diff.half_width,
        "floor": float(base),
    }
