"""Loading policies safely, and the environments they play in."""

from __future__ import annotations

from autoquant.policy._arch import Block, build_chain
from autoquant.policy._bundle import ActionSpec, PolicyBundle
from autoquant.policy._envs import (NOOP_STARTS, Protocol, canonical_env_id, is_atari, make_env, read_zoo_yaml,
                                    resolve_protocol)
from autoquant.policy._layers import LayerInfo, LayerTable, analyse, analyse_module
from autoquant.policy._load import load_policy

__all__ = [
    "NOOP_STARTS",
    "ActionSpec",
    "Block",
    "LayerInfo",
    "LayerTable",
    "PolicyBundle",
    "Protocol",
    "analyse",
    "analyse_module",
    "build_chain",
    "canonical_env_id",
    "is_atari",
    "load_policy",
    "make_env",
    "read_zoo_yaml",
    "resolve_protocol",
]
