"""Search: the run (its folder, config, resume, confirmation), the plan -> trial problem,
the trial record, the study, the spaces, and the agent interface and registry (the agents
themselves live in ``autoquant.agents``, which imports this package, never the reverse).

The public run API::

    config = RunConfig(policy="dqn_pong.pt", env_id="PongNoFrameskip-v4", agent="tpe", n_trials=50)
    run = start_run(Path("runs/pong"), config)        # or load_run(Path("runs/pong")) to resume
    run.search()
    best = run.confirm()
    run.write_report()
    compare(Path("runs/cmp"), config, methods=["prune", "joint"], agents=["tpe", "random"])
"""

from __future__ import annotations

from autoquant.search._agent import Agent, AgentContext
from autoquant.search._agents import AGENTS, AgentEntry, agent_help, agent_names, make_agent, register_agent
from autoquant.search._compare import compare
from autoquant.search._problem import ProblemSettings, SearchProblem, fidelity_score, plan_key
from autoquant.search._record import TrialRecord, TrialResult
from autoquant.search._run import CONFIRM_FORMAT, RUN_FORMAT, Run, RunConfig, load_run, read_confirm, start_run
from autoquant.search._space import LayerChoices, SearchSpace, available_spaces, load_space
from autoquant.search._study import (
    SEARCH_SECONDS,
    ProposalSampler,
    SearchRunner,
    TrialOutcome,
    disk_full,
    open_study,
    trial_records,
)

__all__ = [
    "AGENTS",
    "CONFIRM_FORMAT",
    "RUN_FORMAT",
    "SEARCH_SECONDS",
    "Agent",
    "AgentEntry",
    "AgentContext",
    "LayerChoices",
    "ProblemSettings",
    "ProposalSampler",
    "Run",
    "RunConfig",
    "SearchProblem",
    "SearchRunner",
    "SearchSpace",
    "TrialOutcome",
    "TrialRecord",
    "TrialResult",
    "agent_help",
    "agent_names",
    "available_spaces",
    "compare",
    "disk_full",
    "fidelity_score",
    "load_run",
    "read_confirm",
    "load_space",
    "make_agent",
    "open_study",
    "plan_key",
    "register_agent",
    "start_run",
    "trial_records",
]
