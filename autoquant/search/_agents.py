"""The agent registry: name -> factory. Built-in agents are listed here; others join with
``register_agent``. Factories import their agent's module when called, so naming an
agent costs nothing and no module registers itself by being imported.
"""

from __future__ import annotations

from collections.abc import Callable

from autoquant.errors import UsageError
from autoquant.search._agent import Agent, AgentContext
from autoquant.search._optuna_agents import nsga2_agent, random_agent, tpe_agent

__all__ = ["AGENTS", "agent_names", "check_agent", "make_agent", "register_agent"]

AgentFactory = Callable[[AgentContext], Agent]


def _rl(algo: str) -> AgentFactory:
    def factory(ctx: AgentContext) -> Agent:
        from autoquant.search._rl import RLAgent

        return RLAgent(algo, ctx)

    factory.__name__ = f"{algo}_agent"
    return factory


def ilp_agent(ctx: AgentContext) -> Agent:
    from autoquant.search._ilp import ILPAgent

    return ILPAgent(ctx)


AGENTS: dict[str, AgentFactory] = {
    "ddpg": _rl("ddpg"),
    "td3": _rl("td3"),
    "sac": _rl("sac"),
    "ppo": _rl("ppo"),
    "tpe": tpe_agent,
    "nsga2": nsga2_agent,
    "random": random_agent,
    "ilp": ilp_agent,
}


def register_agent(name: str) -> Callable[[AgentFactory], AgentFactory]:
    """Decorator: make ``factory`` the agent called ``name``."""
    def deco(factory: AgentFactory) -> AgentFactory:
        AGENTS[name] = factory
        return factory
    return deco


def agent_names() -> list[str]:
    return sorted(AGENTS)


def check_agent(name: str) -> None:
    if name not in AGENTS:
        raise UsageError(f"unknown agent {name!r}: use one of {agent_names()}")


def make_agent(name: str, context: AgentContext) -> Agent:
    check_agent(name)
    return AGENTS[name](context)
