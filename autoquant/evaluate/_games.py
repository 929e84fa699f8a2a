"""Distinct games, and intervals in which a repeated game counts once.

A greedy policy on a deterministic ALE game (no sticky actions) replays the same game for a
given no-op start, and starts a few frames apart often become the same game shifted in
time: 20 seeded Pong episodes of the reference DQN are about 4 games. Treating them as 20
independent draws makes an interval several times too narrow.

What counts as one game:

- Under a protocol with finite starts (``Protocol.starts``), two episodes are the same game
  when they score the same sequence of rewards at the same times, up to one shift of at most
  ``MAX_SHIFT`` steps (the most a difference in no-ops can move a game) and ``TOLERANCE``
  steps of jitter, and end at the same shifted step. An episode cut short (a step limit, the
  env's time limit) says nothing past its cut: it is the same game as another when the two
  agree, under one such shift, over the steps both played, and neither ended inside the
  other's play (a stalemate cut at 1,200 steps from two starts a few frames apart is one game,
  not two). Merging errs towards fewer games, which only widens an interval.
- Otherwise (sticky actions, or seeded continuous starts) every seed plays a game of its own.

The statistics (``estimate``): the mean is over the episodes played (under finite starts,
over the starts played, the protocol's estimand being the mean over all of them). When every
start of a finite protocol has been played, the mean is exact for that protocol and the
interval has no width. Otherwise each distinct game (for a paired difference, each distinct
pair of games) contributes one value, its mean, and the Student-t interval is formed from
those ``k`` values with ``k - 1`` degrees of freedom; under finite starts it is narrowed by the
finite-population factor ``sqrt((N - n) / (N - 1))`` for ``n`` of ``N`` starts played without
replacement. Below ``min_distinct`` games there is no interval (infinite ends).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_SHIFT", "TOLERANCE", "Estimate", "Trace", "estimate", "label_games", "same_game"]

MAX_SHIFT = 8  # agent steps: 29 no-op frames at frame skip 4 move a game by at most 8 steps
TOLERANCE = 1  # steps of jitter between two copies of one game (frame-skip phase)


@dataclass(frozen=True)
class Trace:
    """What identifies a game: its rewards with the step each came at, its length, and
    whether it was cut short (truncated) rather than played to its end."""

    events: tuple[tuple[int, float], ...]
    length: int
    truncated: bool = False


def same_game(a: Trace, b: Trace) -> bool:
    """Whether ``b`` is ``a`` shifted by at most ``MAX_SHIFT`` steps (see the module doc)."""
    if not a.truncated and not b.truncated:
        offset = b.length - a.length
        return abs(offset) <= MAX_SHIFT + TOLERANCE and _agree(a, b, offset, horizon=None)
    return any(_agree(a, b, offset, horizon=min(a.length, b.length - offset))
               for offset in range(-MAX_SHIFT - TOLERANCE, MAX_SHIFT + TOLERANCE + 1)
               if (a.truncated or a.length + offset >= b.length - TOLERANCE)
               and (b.truncated or b.length - offset >= a.length - TOLERANCE))


def _agree(a: Trace, b: Trace, offset: int, *, horizon: int | None) -> bool:
    """``b``'s rewards are ``a``'s, ``offset`` steps later (give or take ``TOLERANCE``), up to
    step ``horizon`` of ``a`` (the last both played; None: to their ends). An event within
    ``TOLERANCE`` of that horizon may have its copy past the other's cut, so only events
    before it must pair up."""
    i = j = 0
    while i < len(a.events) or j < len(b.events):
        if (i < len(a.events) and j < len(b.events) and a.events[i][1] == b.events[j][1]
                and abs((b.events[j][0] - offset) - a.events[i][0]) <= TOLERANCE):
            i, j = i + 1, j + 1
            continue
        if horizon is None:
            return False
        first = min(a.events[i][0] if i < len(a.events) else math.inf,
                    b.events[j][0] - offset if j < len(b.events) else math.inf)
        return first > horizon - TOLERANCE  # the first unpaired event, and all after it, lie at the cut
    return True


def label_games(traces: Sequence[Trace], *, finite_starts: bool) -> tuple[int, ...]:
    """One label per episode, equal labels for one game: shift-equal traces under finite
    starts, else every episode its own game."""
    if not finite_starts:
        return tuple(range(len(traces)))
    firsts: list[Trace] = []
    labels = []
    for trace in traces:
        label = next((k for k, first in enumerate(firsts) if same_game(first, trace)), None)
        if label is None:
            label = len(firsts)
            firsts.append(trace)
        labels.append(label)
    return tuple(labels)


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval, and the evidence behind it."""

    mean: float
    low: float
    high: float
    episodes: int
    distinct: int  # distinct games (pairs of games for a paired difference)
    exact: bool  # every start of a finite protocol played: the mean is the protocol's own

    @property
    def half_width(self) -> float:
        if self.exact:
            return 0.0
        return (self.high - self.low) / 2.0 if math.isfinite(self.high - self.low) else float("nan")


def _t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


def estimate(values: Sequence[float], labels: Sequence[Hashable], *, starts_total: int | None = None,
             starts_played: int = 0, confidence: float = 0.95, min_distinct: int = 2) -> Estimate:
    """The mean of ``values`` with a two-sided interval at ``confidence`` in which each
    distinct label counts once (see the module doc)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    groups: dict[Hashable, list[float]] = {}
    for value, label in zip(x, labels):
        groups.setdefault(label, []).append(float(value))
    k = len(groups)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0, False)
    mean = float(x.mean())
    if starts_total is not None and starts_played >= starts_total:
        return Estimate(mean, mean, mean, n, k, True)
    if k < max(2, min_distinct):
        return Estimate(mean, -math.inf, math.inf, n, k, False)
    per_game = np.array([np.mean(g) for g in groups.values()])
    half = _t_quantile(1.0 - (1.0 - confidence) / 2.0, k - 1) * float(per_game.std(ddof=1)) / math.sqrt(k)
    if starts_total is not None and starts_total > 1:
        half *= math.sqrt(max(0.0, (starts_total - starts_played) / (starts_total - 1)))
    return Estimate(mean, mean - half, mean + half, n, k, False)
