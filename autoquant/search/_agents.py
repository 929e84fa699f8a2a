"""Agents propose plans. One small interface, one registry.

An agent gives the study its sampler and drives ``runner.run_trial`` until the
budget is used. Optuna's samplers (TPE, NSGA-II, random) choose inside the study;
the meta-RL agents (``autoquant.search._rl``) decide outside it and propose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from autoquant.errors import UsageError
from autoquant.search._space import SearchSpace
from autoquant.search._study import SearchRunner

__all__ = ["AGENTS", "Agent", "AgentContext", "make_agent", "register_agent"]


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


AGENTS: dict[str, Callable[[AgentContext], Agent]] = {}


def register_agent(name: str) -> Callable[[Callable[[AgentContext], Agent]], Callable[[AgentContext], Agent]]:
    def deco(factory: Callable[[AgentContext], Agent]) -> Callable[[AgentContext], Agent]:
        AGENTS[name] = factory
        return factory
    return deco


def make_agent(name: str, context: AgentContext) -> Agent:
    from autoquant.search import _rl  # noqa: F401 - registers the meta-RL agents

    if name not in AGENTS:
        raise UsageError(f"unknown agent {name!r}: use one of {sorted(AGENTS)}")
    return AGENTS[name](context)


class OptunaAgent:
    """An Optuna sampler choosing inside the study; the loop is the same for all.
    Constraints (the retention floor) reach TPE and NSGA-II through
    ``Trial.set_constraint`` in the runner."""

    def __init__(self, name: str, sampler: Any) -> None:
        self.name = name
        self._sampler = sampler

    def sampler(self) -> Any:
        return self._sampler

    def run(self, runner: SearchRunner) -> None:
        while runner.run_trial() is not None:
            pass


@register_agent("random")
def _random(ctx: AgentContext) -> Agent:
    import optuna

    return OptunaAgent("random", optuna.samplers.RandomSampler(seed=ctx.seed))


@register_agent("tpe")
def _tpe(ctx: AgentContext) -> Agent:
    import optuna

    startup = max(5, min(10, ctx.n_trials // 4))
    return OptunaAgent("tpe", optuna.samplers.TPESampler(
        seed=ctx.seed, n_startup_trials=startup, multivariate=True))


@register_agent("nsga2")
def _nsga2(ctx: AgentContext) -> Agent:
    import optuna

    population = max(4, min(20, ctx.n_trials // 4))
    return OptunaAgent("nsga2", optuna.samplers.NSGAIISampler(
        seed=ctx.seed, population_size=population))
