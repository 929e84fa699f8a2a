"""Optuna's samplers as agents: they choose inside the study, the loop is the same for all.
Constraints (the retention floor) reach TPE and NSGA-II through ``Trial.set_constraint``
in the runner."""

from __future__ import annotations

from typing import Any

from autoquant.search import Agent, AgentContext, SearchRunner

__all__ = ["OptunaAgent", "nsga2_agent", "random_agent", "tpe_agent"]


class OptunaAgent:
    """An Optuna sampler choosing inside the study."""

    def __init__(self, name: str, sampler: Any) -> None:
        self.name = name
        self._sampler = sampler

    def sampler(self) -> Any:
        return self._sampler

    def run(self, runner: SearchRunner) -> None:
        while runner.run_trial() is not None:
            pass


def random_agent(ctx: AgentContext) -> Agent:
    import optuna

    return OptunaAgent("random", optuna.samplers.RandomSampler(seed=ctx.run_seed))


def tpe_agent(ctx: AgentContext) -> Agent:
    import optuna

    startup = max(5, min(10, ctx.n_trials // 4))
    return OptunaAgent("tpe", optuna.samplers.TPESampler(seed=ctx.run_seed, n_startup_trials=startup, multivariate=True))


def nsga2_agent(ctx: AgentContext) -> Agent:
    import optuna

    population = max(4, min(20, ctx.n_trials // 4))
    return OptunaAgent("nsga2", optuna.samplers.NSGAIISampler(seed=ctx.run_seed, population_size=population))
