"""Search: the run (its folder, config, resume, confirmation), the plan -> trial problem,
the trial record, the study, the spaces, and the agent interface and registry (the agents
themselves live in ``autoquant.agents``, which imports this package, never the reverse).

The public run API::

    config = RunConfig(policy=Path("dqn_pong.pt"), env_id="PongNoFrameskip-v4", agent="tpe", n_trials=50,
                       settings=ProblemSettings(min_retention=0.95))
    run = start_run(Path("runs/pong"), config)        # or load_run(Path("runs/pong")) to resume
    run.search()
    best = run.confirm()                               # a ConfirmedPlan, or None: fp32 stays the best
    run.write_report()
    compare(Path("runs/cmp"), config, methods=["prune", "joint"], agents=["tpe", "random"])

What a run folder holds is read through its types: ``run.info`` (a ``RunInfo``: run.json),
``run.confirmation()`` / ``read_confirm`` (a ``Confirmation``: best/confirm.json).
"""

from __future__ import annotations

from autoquant.search._agent import Agent, AgentContext
from autoquant.search._agents import AGENTS, AgentEntry, agent_help, agent_names, make_agent, register_agent
from autoquant.search._artifacts import (
    CONFIRM_FORMAT,
    RUN_FORMAT,
    RUN_VERSION,
    Attempt,
    ConfirmedPlan,
    ConfirmFigures,
    Confirmation,
    PolicyInfo,
    References,
    RunConfig,
    RunInfo,
    SearchFigures,
    TargetInfo,
    read_confirm,
    read_run_info,
)
from autoquant.search._compare import compare
from autoquant.search._fleet import Fleet, FleetInfo, fleet_member, is_fleet, load_fleet, parse_targets, start_fleet
from autoquant.search._problem import ProblemSettings, SearchProblem, fidelity_score, plan_key
from autoquant.search._record import TrialRecord, TrialResult
from autoquant.search._run import Run, load_run, start_run
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
    "RUN_VERSION",
    "SEARCH_SECONDS",
    "Agent",
    "AgentEntry",
    "AgentContext",
    "Attempt",
    "Fleet",
    "FleetInfo",
    "ConfirmFigures",
    "Confirmation",
    "ConfirmedPlan",
    "LayerChoices",
    "PolicyInfo",
    "ProblemSettings",
    "ProposalSampler",
    "References",
    "Run",
    "RunConfig",
    "RunInfo",
    "SearchFigures",
    "SearchProblem",
    "SearchRunner",
    "SearchSpace",
    "TargetInfo",
    "TrialOutcome",
    "TrialRecord",
    "TrialResult",
    "agent_help",
    "agent_names",
    "available_spaces",
    "compare",
    "disk_full",
    "fidelity_score",
    "fleet_member",
    "is_fleet",
    "load_fleet",
    "parse_targets",
    "start_fleet",
    "load_run",
    "read_confirm",
    "read_run_info",
    "load_space",
    "make_agent",
    "open_study",
    "plan_key",
    "register_agent",
    "start_run",
    "trial_records",
]
