"""A sequential test of reward retention: play paired episodes only until the answer is clear.

A plan's retention on the run's seeds is ``1 + mean(d) / gain``, where ``d`` is the plan's
reward minus fp32's on the same seed and ``gain`` is fp32's mean reward over the run's
seeds minus a random policy's (``paired_comparison``; with every seed played the two agree
exactly). After each finished episode, from the second on, the test forms a Student-t
interval of that mean in which each distinct pair of games (fp32's game, the plan's game)
counts once (``autoquant.evaluate._games``), and stops as soon as the interval lies wholly
above the floor ("above") or wholly below it ("below"). It never decides on fewer than
``MIN_DISTINCT`` distinct pairs: copies of one game are one piece of evidence, however many
seeds replayed it. Under a protocol with finite starts, once every start has been played
the retention is exact for the protocol and decides by itself. Each look spends an equal
share of the error rate (Bonferroni over the most looks the episode budget allows), so the
run's stated confidence holds for the decision however early it comes. When the budget ends
first the plan is "undecided" and its interval is recorded as it stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoquant.evaluate._episodes import EpisodeStats, paired_difference

__all__ = ["ABOVE", "BELOW", "MIN_DISTINCT", "UNDECIDED", "RetentionTest"]

MIN_DISTINCT = 3  # distinct pairs of games before the test may decide (unless exact)

ABOVE, BELOW, UNDECIDED = "above", "below", "undecided"


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

    def interval(self, played: EpisodeStats) -> dict[str, Any]:
        """Retention, its interval at the per-look confidence, and the episodes and distinct
        pairs of games behind it."""
        diff = paired_difference(played, self.reference, confidence=1.0 - (1.0 - self.confidence) / self.looks,
                                 min_distinct=MIN_DISTINCT)
        gain = self.gain
        out: dict[str, Any] = {"episodes": diff.episodes, "distinct_pairs": diff.distinct, "exact": diff.exact,
                               "confidence": self.confidence, "looks": self.looks}
        if diff.episodes == 0 or abs(gain) < 1e-12:
            return {**out, "retention": float("nan"), "low": float("nan"), "high": float("nan")}
        retention = 1.0 + diff.mean / gain
        low, high = 1.0 + diff.low / gain, 1.0 + diff.high / gain
        if gain < 0:
            low, high = high, low
        return {**out, "retention": retention, "low": low, "high": high}

    def decide(self, played: EpisodeStats) -> str | None:
        """ABOVE or BELOW once the interval clears the floor, else None."""
        if len(played.seeds) < self.min_episodes:
            return None
        found = self.interval(played)
        if found["low"] >= self.floor:
            return ABOVE
        if found["high"] < self.floor:
            return BELOW
        return None

    def stop(self, played: EpisodeStats) -> bool:
        """For ``play_episodes(stop=...)``: stop once the test has decided."""
        return self.decide(played) is not None

    def result(self, episodes: EpisodeStats) -> dict[str, Any]:
        """The JSON a played trial records: decision, retention, interval, episodes, distinct pairs."""
        decision = self.decide(episodes) or UNDECIDED
        return {"decision": decision, "floor": self.floor, **self.interval(episodes)}
