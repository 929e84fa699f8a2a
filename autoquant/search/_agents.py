"""The agent registry: name -> entry point and a line of help.

An entry point is a factory ``(AgentContext) -> Agent`` or, as gymnasium's registry does,
the string ``"package.module:factory"`` of one, imported when the agent is first made. The
built-in agents live in ``autoquant.agents`` and are named here by entry point, so that
naming an agent costs nothing, nothing registers itself by being imported, and the search
never imports the agents (they import the search: its space, study and records).

Adding an agent is its own module plus one ``register_agent`` line (or one row of
``BUILTIN`` for an agent shipped with autoquant); the command line's ``--agent`` choices and
help are read from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from autoquant.errors import UsageError
from autoquant.search._agent import Agent, AgentContext

__all__ = ["AGENTS", "AgentEntry", "agent_help", "agent_names", "check_agent", "make_agent", "register_agent"]

AgentFactory = Callable[[AgentContext], Agent]


@dataclass(frozen=True)
class AgentEntry:
    name: str
    entry_point: str | AgentFactory
    help: str

    def factory(self) -> AgentFactory:
        if callable(self.entry_point):
            return self.entry_point
        module, _, attr = self.entry_point.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


# (name, entry point, help): the agents autoquant ships, in the order --help lists them.
BUILTIN = (
    ("ilp", "autoquant.agents:ilp_agent",
     "integer program over the measured latency model and the accuracy surrogate (the default)"),
    ("tpe", "autoquant.agents:tpe_agent", "Optuna's TPE sampler"),
    ("nsga2", "autoquant.agents:nsga2_agent", "Optuna's NSGA-II sampler (multi-objective)"),
    ("random", "autoquant.agents:random_agent", "uniform random plans (a baseline)"),
    ("ddpg", "autoquant.agents:ddpg_agent",
     "meta-RL agent (SB3 DDPG, pretrained weights shipped) on the surrogate, Galen-style"),
    ("td3", "autoquant.agents:td3_agent", "meta-RL agent with SB3 TD3"),
    ("sac", "autoquant.agents:sac_agent", "meta-RL agent with SB3 SAC"),
    ("ppo", "autoquant.agents:ppo_agent", "meta-RL agent with SB3 PPO"),
)

AGENTS: dict[str, AgentEntry] = {name: AgentEntry(name, entry, text) for name, entry, text in BUILTIN}


def register_agent(name: str, entry_point: str | AgentFactory, *, help: str = "") -> AgentEntry:  # noqa: A002
    """Make ``entry_point`` (a factory, or ``"module:factory"``) the agent called ``name``;
    ``--agent NAME`` then reaches it, with ``help`` in ``autoquant search --help``."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"agent name {name!r}: use letters, digits, '-' and '_'")
    entry = AgentEntry(name, entry_point, help or name)
    AGENTS[name] = entry
    return entry


def agent_names() -> list[str]:
    return list(AGENTS)


def agent_help() -> str:
    """One line per agent, for ``--help``."""
    return "; ".join(f"{entry.name}: {entry.help}" for entry in AGENTS.values())


def check_agent(name: str) -> None:
    if name not in AGENTS:
        raise UsageError(f"unknown agent {name!r}: use one of {agent_names()}")


def make_agent(name: str, context: AgentContext) -> Agent:
    check_agent(name)
    return AGENTS[name].factory()(context)
