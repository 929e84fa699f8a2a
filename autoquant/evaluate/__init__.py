"""Recorded states, fidelity on them, and episodes with the network in the loop."""

from __future__ import annotations

from autoquant.evaluate._episodes import (EpisodeStats, ci95, describe_episodes, paired_comparison, paired_difference,
                                         play_episodes, random_actor)
from autoquant.evaluate._games import Estimate, estimate, label_games, same_game
from autoquant.evaluate._evaluation import HELD_OUT_SEED_OFFSET, Evaluation, episode_seeds, evaluate, onnx_actor
from autoquant.evaluate._fidelity import fidelity, value_retention
from autoquant.evaluate._sequential import ABOVE, BELOW, MIN_DISTINCT, UNDECIDED, RetentionTest
from autoquant.evaluate._workers import close_pools as close_env_workers
from autoquant.evaluate._workers import pool as env_workers
from autoquant.evaluate._states import (PROXY_SEED_OFFSET, StateSet, dagger_visitor, proxy_state_count, record_states,
                                       visited_states)

__all__ = [
    "ABOVE",
    "BELOW",
    "MIN_DISTINCT",
    "Estimate",
    "describe_episodes",
    "estimate",
    "label_games",
    "paired_difference",
    "same_game",
    "UNDECIDED",
    "RetentionTest",
    "HELD_OUT_SEED_OFFSET",
    "PROXY_SEED_OFFSET",
    "EpisodeStats",
    "Evaluation",
    "StateSet",
    "dagger_visitor",
    "ci95",
    "close_env_workers",
    "env_workers",
    "episode_seeds",
    "evaluate",
    "fidelity",
    "onnx_actor",
    "paired_comparison",
    "play_episodes",
    "proxy_state_count",
    "random_actor",
    "value_retention",
    "visited_states",
    "record_states",
]
