"""Search: spaces, the plan -> trial problem, the study, and the agents."""

from __future__ import annotations

from autoquant.search._agents import AGENTS, Agent, AgentContext, make_agent, register_agent
from autoquant.search._problem import ProblemSettings, SearchProblem, TrialResult, plan_key
from autoquant.search._space import LayerChoices, SearchSpace, available_spaces, load_space
from autoquant.search._study import ProposalSampler, SearchRunner, TrialOutcome, open_study, trial_records

__all__ = [
    "AGENTS",
    "Agent",
    "AgentContext",
    "LayerChoices",
    "ProblemSettings",
    "ProposalSampler",
    "SearchProblem",
    "SearchRunner",
    "SearchSpace",
    "TrialOutcome",
    "TrialResult",
    "available_spaces",
    "load_space",
    "make_agent",
    "open_study",
    "plan_key",
    "register_agent",
    "trial_records",
]
