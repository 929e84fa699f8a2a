"""The agent interface: an agent gives the study its sampler and drives
``runner.run_trial`` until the budget is used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autoquant.search._space import SearchSpace
from autoquant.search._study import SearchRunner

__all__ = ["Agent", "AgentContext"]


@dataclass(frozen=True)
class AgentContext:
    """What an agent is built from. ``history``: trials the study already holds (a resumed
    or shared search); an agent seeds itself with ``run_seed`` so that a resumed search
    continues with new proposals instead of replaying the sequence it already measured."""

    space: SearchSpace
    mode: str
    seed: int
    n_trials: int
    history: int = 0
    folder: Path | None = None  # the run folder, where an agent may keep what it measured

    @property
    def run_seed(self) -> int:
        return self.seed + 1_000_003 * self.history


class Agent(Protocol):
    name: str

    def sampler(self) -> Any:
        """The Optuna sampler this agent's study uses."""
        ...

    def run(self, runner: SearchRunner) -> None:
        """Propose and run trials until ``runner`` says the budget is used."""
        ...
