"""Agents: what proposes plans, and the models they propose from.

- the integer program over the measured latency model and the accuracy surrogate (``ilp``);
- Optuna's samplers (``tpe``, ``nsga2``, ``random``);
- the meta-RL agents (``ddpg``, ``td3``, ``sac``, ``ppo``), pretrained on surrogates of a
  corpus of networks (``pretrain``, shipped weights in ``pretrained/``);
- the models: per-layer latency measured on the target (``LatencyModel``), per-layer
  sensitivities and the surrogate built from them, the size and cost of a plan.

Every agent is behind ``autoquant.search.Agent``: it gives the study its sampler and drives
``SearchRunner.run_trial``. The search names agents by entry point
(``autoquant.search.register_agent``); it never imports this package.

Pretraining, as ``tools/pretrain_agent.py`` runs it::

    entry = surrogate_of("cartpole", "mlp", bundle, states, held, HostTarget(), fingerprint=target_fingerprint(t))
    result = pretrain("ddpg", [entry], episodes=2000)
    save_weights("ddpg", result.model, meta, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=out)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoquant.agents._cost import layer_costs, plan_cost
from autoquant.agents._latency import LATENCY_MODEL_FORMAT, LatencyModel, LatencyOption, latency_options
from autoquant.agents._optuna import OptunaAgent, nsga2_agent, random_agent, tpe_agent
from autoquant.agents._surrogate import Boundary, Choice, Surrogate, latency_model, layer_choices, plan_of, sensitivities
from autoquant.agents._weights import PRETRAINED_DIR, WEIGHTS_FORMAT, load_weights, save_weights
from autoquant.search import Agent, AgentContext

if TYPE_CHECKING:
    from autoquant.agents._ilp import ILPAgent, solve
    from autoquant.agents._pretrain import (CorpusEntry, PretrainEnv, PretrainResult, generated_networks, pretrain,
                                            surrogate_of, zero_shot)
    from autoquant.agents._rl import (OBS_DIM, OBS_VERSION, CompressionEnv, RLAgent, bin_centre, bin_index,
                                      trial_reward)

# The ILP needs scipy, the meta-RL agents and pretraining stable-baselines3: imported when first named.
_LAZY = {
    "ILPAgent": "_ilp", "solve": "_ilp",
    "CorpusEntry": "_pretrain", "PretrainEnv": "_pretrain", "PretrainResult": "_pretrain",
    "generated_networks": "_pretrain", "pretrain": "_pretrain", "surrogate_of": "_pretrain", "zero_shot": "_pretrain",
    "OBS_DIM": "_rl", "OBS_VERSION": "_rl", "CompressionEnv": "_rl", "RLAgent": "_rl", "bin_centre": "_rl",
    "bin_index": "_rl", "trial_reward": "_rl",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"autoquant.agents.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autoquant.agents' has no attribute {name!r}")


def ilp_agent(ctx: AgentContext) -> Agent:
    from autoquant.agents._ilp import ILPAgent

    return ILPAgent(ctx)


def _meta_rl(algo: str, ctx: AgentContext) -> Agent:
    from autoquant.agents._rl import RLAgent

    return RLAgent(algo, ctx)


def ddpg_agent(ctx: AgentContext) -> Agent:
    return _meta_rl("ddpg", ctx)


def td3_agent(ctx: AgentContext) -> Agent:
    return _meta_rl("td3", ctx)


def sac_agent(ctx: AgentContext) -> Agent:
    return _meta_rl("sac", ctx)


def ppo_agent(ctx: AgentContext) -> Agent:
    return _meta_rl("ppo", ctx)


__all__ = [
    "LATENCY_MODEL_FORMAT",
    "OBS_DIM",
    "OBS_VERSION",
    "PRETRAINED_DIR",
    "WEIGHTS_FORMAT",
    "Boundary",
    "Choice",
    "CompressionEnv",
    "CorpusEntry",
    "ILPAgent",
    "LatencyModel",
    "LatencyOption",
    "OptunaAgent",
    "PretrainEnv",
    "PretrainResult",
    "RLAgent",
    "Surrogate",
    "bin_centre",
    "bin_index",
    "ddpg_agent",
    "generated_networks",
    "ilp_agent",
    "latency_model",
    "latency_options",
    "layer_choices",
    "layer_costs",
    "load_weights",
    "nsga2_agent",
    "plan_cost",
    "plan_of",
    "ppo_agent",
    "pretrain",
    "random_agent",
    "sac_agent",
    "save_weights",
    "sensitivities",
    "solve",
    "surrogate_of",
    "td3_agent",
    "tpe_agent",
    "trial_reward",
    "zero_shot",
]
