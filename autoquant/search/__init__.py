"""Search: the run (its folder, config, resume, confirmation), the plan -> trial problem,
the trial record, the study, the spaces and the agents.

The public run API::

    config = RunConfig(policy="dqn_pong.pt", env_id="PongNoFrameskip-v4", agent="tpe", n_trials=50)
    run = start_run(Path("runs/pong"), config)        # or load_run(Path("runs/pong")) to resume
    run.search()
    best = run.confirm()
    run.write_report()
    compare(Path("runs/cmp"), config, methods=["prune", "joint"], agents=["tpe", "random"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoquant.search._agent import Agent, AgentContext
from autoquant.search._agents import AGENTS, agent_names, make_agent, register_agent
from autoquant.search._compare import compare
from autoquant.search._cost import plan_cost
from autoquant.search._problem import ProblemSettings, SearchProblem, fidelity_score, plan_key
from autoquant.search._record import TrialRecord, TrialResult
from autoquant.search._run import CONFIRM_FORMAT, RUN_FORMAT, Run, RunConfig, load_run, read_confirm, start_run
from autoquant.search._space import LayerChoices, SearchSpace, available_spaces, load_space
from autoquant.search._latency import LatencyModel
from autoquant.search._study import (
    SEARCH_SECONDS,
    ProposalSampler,
    SearchRunner,
    TrialOutcome,
    disk_full,
    open_study,
    trial_records,
)
from autoquant.search._surrogate import Boundary, Choice, Surrogate, latency_model, layer_choices, sensitivities

if TYPE_CHECKING:
    from autoquant.search._rl import CompressionEnv, RLAgent, bin_centre, bin_index, trial_reward

# The meta-RL agent's pieces load stable-baselines3: imported when first named.
_RL_NAMES = ("CompressionEnv", "RLAgent", "bin_centre", "bin_index", "trial_reward")


def __getattr__(name: str) -> Any:
    if name in _RL_NAMES:
        from autoquant.search import _rl

        return getattr(_rl, name)
    raise AttributeError(f"module 'autoquant.search' has no attribute {name!r}")


__all__ = [
    "AGENTS",
    "CONFIRM_FORMAT",
    "CompressionEnv",
    "RUN_FORMAT",
    "SEARCH_SECONDS",
    "Agent",
    "AgentContext",
    "Boundary",
    "Choice",
    "LatencyModel",
    "LayerChoices",
    "ProblemSettings",
    "ProposalSampler",
    "RLAgent",
    "Run",
    "RunConfig",
    "SearchProblem",
    "SearchRunner",
    "SearchSpace",
    "Surrogate",
    "TrialOutcome",
    "TrialRecord",
    "TrialResult",
    "agent_names",
    "available_spaces",
    "bin_centre",
    "bin_index",
    "compare",
    "disk_full",
    "fidelity_score",
    "latency_model",
    "layer_choices",
    "load_run",
    "read_confirm",
    "load_space",
    "make_agent",
    "open_study",
    "plan_cost",
    "plan_key",
    "register_agent",
    "sensitivities",
    "start_run",
    "trial_records",
    "trial_reward",
]
