"""Caps on the numbers that size work or memory: command-line options, target and
search-space TOML fields, run.json. A number past its cap is refused in one line
before any work, instead of running for hours or filling memory.

Standard library only: the CLI's parser and the device side read these without numpy.
"""

from __future__ import annotations

from typing import Any

from autoquant.errors import AutoquantError, UsageError

__all__ = [
    "check_integer",
    "MAX_ACTORS",
    "MAX_BATCH_SIZE",
    "MAX_BUFFER_SIZE",
    "MAX_CALLS",
    "MAX_CHANNEL_MULTIPLE",
    "MAX_CHOICES",
    "MAX_ENVS",
    "MAX_EPISODES",
    "MAX_FINETUNE_EPOCHS",
    "MAX_FINETUNE_ROUNDS",
    "MAX_PORT",
    "MAX_SEED",
    "MAX_STATES",
    "MAX_STEPS",
    "MAX_THREADS",
    "MAX_TRIALS",
]

MAX_TRIALS = 100_000  # --trials
MAX_EPISODES = 10_000  # --episodes, --confirm-episodes, --eval-episodes
MAX_STATES = 65_536  # --states, --proxy-states (65,536 Pong frames are 1.8 GB of float32)
MAX_FINETUNE_EPOCHS = 1_000  # --finetune
MAX_FINETUNE_ROUNDS = 100  # --finetune-rounds
MAX_ENVS = 256  # --envs, --envs-per-actor
MAX_SEED = 2**31 - 1  # --seed: every seed derived from it stays a valid numpy, torch and gymnasium seed
MAX_ACTORS = 1_024  # actorq --actors
MAX_STEPS = 1_000_000_000  # actorq --steps and the step counts of its learner
MAX_BUFFER_SIZE = 10_000_000  # the DQN learner's replay buffer, in transitions
MAX_BATCH_SIZE = 65_536  # the learners' batch sizes
MAX_THREADS = 256  # a target's threads, --learner-threads, --actor-threads
MAX_CALLS = 1_000_000  # a target's timed calls (and warm-up calls, and block) per measurement
MAX_CHOICES = 64  # choices of prune ratio per layer in a search space
MAX_CHANNEL_MULTIPLE = 4_096  # a search space's channel_multiple
MAX_PORT = 65_535  # device serve --port (0: any free port)


def check_integer(value: Any, what: str, low: int, high: int, *,
                  error: type[AutoquantError] = UsageError) -> int:
    """``value`` if it is an integer in [low, high], else ``error`` in one line naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        text = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise error(f"{what} must be an integer from {low} to {high:,}, got {text}")
    return value
