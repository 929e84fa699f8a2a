"""Distinct games: copies of one game count once, in intervals and in every report."""

from __future__ import annotations

import math

import pytest

from autoquant.compress import export_reference
from autoquant.errors import EnvMismatchError
from autoquant.evaluate import (EpisodeStats, describe_episodes, episode_seeds, estimate, label_games, onnx_actor,
                                paired_comparison, play_episodes, same_game)
from autoquant.evaluate._games import MAX_SHIFT, Trace
from autoquant.policy import NOOP_STARTS, Protocol, resolve_protocol

POINTS = ((100, -1.0), (400, 1.0), (900, 1.0))


def test_a_game_shifted_by_a_few_steps_is_the_same_game() -> None:
    game = Trace(POINTS, 1000)
    shifted = Trace(tuple((t + 3, r) for t, r in POINTS), 1003)
    jitter = Trace(((103, -1.0), (404, 1.0), (903, 1.0)), 1003)  # one step of frame-skip phase
    assert same_game(game, shifted) and same_game(game, jitter)
    assert not same_game(game, Trace(((100, 1.0), (400, -1.0), (900, 1.0)), 1000))  # other scorer
    assert not same_game(game, Trace(((100, -1.0), (500, 1.0), (900, 1.0)), 1000))  # another rally
    far = MAX_SHIFT + 5
    assert not same_game(game, Trace(tuple((t + far, r) for t, r in POINTS), 1000 + far))
    assert label_games([game, shifted, Trace(POINTS[:2], 500), jitter], finite_starts=True) == (0, 0, 1, 0)
    # every seed a game of its own where starts are not finite (sticky actions, seeded starts)
    assert label_games([game, game], finite_starts=False) == (0, 1)


def test_games_cut_short_are_compared_over_the_steps_both_played() -> None:
    """A step limit cuts copies of one game at the same step, whatever their shift: they are
    one game when they agree up to the cut; a game that ended inside the other's play is not."""
    full = Trace(POINTS, 1000)
    shifted = Trace(tuple((t + 6, r) for t, r in POINTS), 1006)
    cut, cut_shifted = Trace(POINTS[:2], 600, truncated=True), Trace(tuple((t + 6, r) for t, r in POINTS[:2]), 600,
                                                                      truncated=True)
    assert not same_game(full, Trace(tuple((t + 6, r) for t, r in POINTS), 1000))  # played to the end: lengths
    assert same_game(cut, cut_shifted) and same_game(full, cut_shifted) and same_game(cut, shifted)
    # a point scored just before one cut whose copy falls just after the other's
    assert same_game(Trace(((100, -1.0), (599, 1.0)), 600, truncated=True), Trace(((105, -1.0),), 600, truncated=True))
    assert not same_game(cut, Trace(((100, -1.0), (300, 1.0)), 600, truncated=True))  # another rally
    assert not same_game(cut, Trace(((100, -1.0), (400, 1.0)), 500))  # ended at 500, inside the cut game's play
    assert not same_game(Trace(POINTS, 2000, truncated=True), full)  # the full game ended where the other played on
    assert label_games([cut, cut_shifted, full], finite_starts=True) == (0, 0, 0)


def test_a_step_limit_does_not_split_one_deterministic_pong_game(pong) -> None:  # type: ignore[no-untyped-def]
    """Starts 1, 9, 17 and 25 no-ops are one game shifted by up to 6 steps; cut at 600 steps
    (a few points in) they are still one game, not four."""
    act = onnx_actor(pong, export_reference(pong))
    protocol = resolve_protocol("PongNoFrameskip-v4")
    seeds = [0, 8, 16, 24]
    assert [protocol.start_of(s) for s in seeds] == [1, 9, 17, 25]
    stats = play_episodes(act, "PongNoFrameskip-v4", seeds, protocol=protocol, n_envs=4, max_steps=600)
    assert stats.lengths == (600,) * 4 and any(stats.rewards)
    assert stats.distinct_games <= 2  # counted as 4 when a cut game was compared by its length


def test_estimate_counts_each_game_once_and_is_exact_over_every_start() -> None:
    copies = estimate([5.0] * 9 + [1.0], [0] * 9 + [1])
    assert copies.distinct == 2 and copies.episodes == 10
    assert copies.mean == pytest.approx(4.6)
    from scipy.stats import t

    # two values (5 and 1), one degree of freedom, not ten
    assert copies.half_width == pytest.approx(t.ppf(0.975, 1) * math.sqrt(8.0) / math.sqrt(2))
    assert estimate([1.0, 2.0], [0, 0]).low == -math.inf  # one game: no interval
    exact = estimate([1.0, 2.0, 3.0], [0, 1, 2], starts_total=3, starts_played=3)
    assert exact.exact and exact.half_width == 0.0
    half = estimate([1.0, 2.0, 3.0], [0, 1, 2]).half_width
    fpc = estimate([1.0, 2.0, 3.0], [0, 1, 2], starts_total=5, starts_played=3).half_width
    assert fpc == pytest.approx(half * math.sqrt(2 / 4))  # 3 of 5 starts played without replacement


def test_protocols_are_resolved_from_the_env_id_and_sticky_actions_only_apply_to_atari() -> None:
    assert resolve_protocol("PongNoFrameskip-v4") == Protocol(starts=NOOP_STARTS)
    assert resolve_protocol("PongNoFrameskip-v4", 0.25) == Protocol(sticky_actions=0.25)
    assert resolve_protocol("ALE/Pong-v5") == Protocol(sticky_actions=0.25)
    assert resolve_protocol("CartPole-v1") == Protocol()
    with pytest.raises(EnvMismatchError, match="applies to Atari"):
        resolve_protocol("CartPole-v1", 0.25)
    with pytest.raises(EnvMismatchError, match=r"\[0, 1\)"):
        Protocol(sticky_actions=1.0)
    seeds = episode_seeds(0, 40, Protocol(starts=NOOP_STARTS))
    assert len(seeds) == NOOP_STARTS  # one episode per start, never a start twice
    assert sorted(Protocol(starts=NOOP_STARTS).start_of(s) for s in seeds) == list(range(1, NOOP_STARTS + 1))


@pytest.mark.slow
def test_thirty_seeds_of_deterministic_pong_are_a_few_games(pong) -> None:  # type: ignore[no-untyped-def]
    """The reference Pong DQN on PongNoFrameskip-v4: every one of the 30 no-op starts played
    (its first 250 steps, the first points: the whole games cost this test 50 s), the mean
    exact for the protocol, and the 30 episodes counted as the few games they are. Games
    played to the end are counted in benchmarks/results/headline.md (4)."""
    act = onnx_actor(pong, export_reference(pong))
    protocol = resolve_protocol("PongNoFrameskip-v4")
    stats = play_episodes(act, "PongNoFrameskip-v4", episode_seeds(0, 30, protocol), protocol=protocol,
                          max_steps=250)
    assert len(stats.seeds) == 30 and stats.exact and stats.ci95 == 0.0
    assert stats.distinct_games <= 8 and any(stats.rewards)  # the reference plays 4 (one per frame-skip phase)
    assert len({protocol.start_of(s) for s in stats.seeds}) == 30  # 30 starts, a few games: copies merged
    for game in set(stats.labels):  # one game, one score, but for a point its shifted copy scored past the cut
        rewards = [r for r, g in zip(stats.rewards, stats.labels) if g == game]
        assert max(rewards) - min(rewards) <= 1.0
    paired = paired_comparison(stats, stats)
    assert paired["exact"] and paired["retention"] == pytest.approx(1.0)
    assert paired["distinct_pairs"] == stats.distinct_games
    line = describe_episodes(stats)
    assert "exact over the 30 starts" in line and f"{stats.distinct_games} distinct games" in line
    back = EpisodeStats.from_json(stats.to_json())
    assert back == stats and stats.to_json()["sticky_actions"] == 0.0


@pytest.mark.slow
def test_sticky_actions_give_both_arms_one_stream_and_every_seed_a_game(pong) -> None:  # type: ignore[no-untyped-def]
    """Common random numbers: one policy played twice on the same seeds under sticky actions
    gives the same games; every seed is a distinct game; the protocol is recorded."""
    act = onnx_actor(pong, export_reference(pong))
    sticky = resolve_protocol("PongNoFrameskip-v4", 0.25)
    a = play_episodes(act, "PongNoFrameskip-v4", [11, 12, 13], protocol=sticky, n_envs=3, max_steps=150)
    b = play_episodes(act, "PongNoFrameskip-v4", [11, 12, 13], protocol=sticky, n_envs=1, max_steps=150)
    assert a.rewards == b.rewards and a.distinct_games == 3 and not a.exact
    assert a.to_json()["sticky_actions"] == 0.25 and a.to_json()["distinct_games"] == 3
    with pytest.raises(ValueError, match="one protocol"):
        paired_comparison(a, play_episodes(act, "PongNoFrameskip-v4", [11, 12, 13], n_envs=3, max_steps=150))
