"""A sequential test of reward retention: play paired episodes only until the answer is clear.

A plan's retention on the run's seeds is ``1 + mean(d) / gain``, where ``d`` is the plan's
reward minus fp32's on the same seed and ``gain`` is fp32's mean reward over the run's
seeds minus a random policy's (``paired_comparison``; with every seed played the two agree
exactly). After each finished episode, from the second on, the test forms a Student-t
interval of that mean and stops as soon as the interval lies wholly above the floor
("above") or wholly below it ("below"). Each look spends an equal share of the error rate
(Bonferroni over the most looks the episode budget allows), so the run's stated confidence
holds for the decision however early it comes. When the budget ends first the plan is
"undecided" and its interval is recorded as it stands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.evaluate._episodes import EpisodeStats

__all__ = ["ABOVE", "BELOW", "UNDECIDED", "RetentionTest"]

ABOVE, BELOW, UNDECIDED = "above", "below", "undecided"


def _t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


@dataclass(frozen=True)
class RetentionTest:
    """Paired test of ``retention >= floor`` against fp32 episodes on the same seeds."""

    reference: EpisodeStats  # fp32 on every seed the test may play
    random: EpisodeStats | None  # a random policy on the same seeds (the retention's zero)
    floor: float
    confidence: float = 0.95
    min_episodes: int = 2

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.min_episodes < 2:
            raise ValueError("the test needs at least 2 episodes for an interval")

    @property
    def gain(self) -> float:
        base = self.random.mean if self.random is not None else 0.0
        return self.reference.mean - base

    @property
    def looks(self) -> int:
        """The most times the test can look: once per episode from ``min_episodes`` on."""
        return max(1, len(self.reference.seeds) - self.min_episodes + 1)

    def interval(self, rewards: Mapping[int, float]) -> dict[str, Any]:
        """Retention, its interval at the per-look confidence, and the episodes behind it."""
        fp32 = dict(zip(self.reference.seeds, self.reference.rewards))
        diffs = np.array([rewards[s] - fp32[s] for s in self.reference.seeds if s in rewards], dtype=np.float64)
        k = len(diffs)
        gain = self.gain
        out: dict[str, Any] = {"episodes": k, "confidence": self.confidence, "looks": self.looks}
        if k == 0 or abs(gain) < 1e-12:
            return {**out, "retention": float("nan"), "low": float("nan"), "high": float("nan")}
        mean = float(diffs.mean())
        retention = 1.0 + mean / gain
        if k < 2:
            return {**out, "retention": retention, "low": -math.inf, "high": math.inf}
        alpha = (1.0 - self.confidence) / self.looks
        half = _t_quantile(1.0 - alpha / 2.0, k - 1) * float(diffs.std(ddof=1)) / math.sqrt(k)
        low, high = 1.0 + (mean - half) / gain, 1.0 + (mean + half) / gain
        if gain < 0:
            low, high = high, low
        return {**out, "retention": retention, "low": low, "high": high}

    def decide(self, rewards: Mapping[int, float]) -> str | None:
        """ABOVE or BELOW once the interval clears the floor, else None."""
        if len(rewards) < self.min_episodes:
            return None
        found = self.interval(rewards)
        if found["low"] >= self.floor:
            return ABOVE
        if found["high"] < self.floor:
            return BELOW
        return None

    def stop(self, rewards: Mapping[int, float]) -> bool:
        """For ``play_episodes(stop=...)``: stop once the test has decided."""
        return self.decide(rewards) is not None

    def result(self, episodes: EpisodeStats) -> dict[str, Any]:
        """The JSON a played trial records: decision, retention, interval, episodes."""
        rewards = dict(zip(episodes.seeds, episodes.rewards))
        decision = self.decide(rewards) or UNDECIDED
        return {"decision": decision, "floor": self.floor, **self.interval(rewards)}
