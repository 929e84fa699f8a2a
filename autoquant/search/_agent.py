"""The agent interface: an agent gives the study its sampler and drives
``runner.run_trial`` until the budget is used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from autoquant.search._space import SearchSpace
from autoquant.search._study import SearchRunner

__all__ = ["Agent", "AgentContext"]


@dataclass(frozen=True)
class AgentContext:
    """What an agent is built from."""

    space: SearchSpace
    mode: str
    seed: int
    n_trials: int


class Agent(Protocol):
    name: str

    def sampler(self) -> Any:
        """The Optuna sampler this agent's study uses."""
        ...

    def run(self, runner: SearchRunner) -> None:
        """Propose and run trials until ``runner`` says the budget is used."""
        ...
