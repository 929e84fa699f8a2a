"""Loading policies safely, and the environments they play in."""

from __future__ import annotations

from autoquant.policy._bundle import ActionSpec, PolicyBundle
from autoquant.policy._envs import canonical_env_id, make_env, read_zoo_yaml
from autoquant.policy._layers import LayerInfo, LayerTable, analyse
from autoquant.policy._load import load_policy

__all__ = [
    "ActionSpec",
    "LayerInfo",
    "LayerTable",
    "PolicyBundle",
    "analyse",
    "canonical_env_id",
    "load_policy",
    "make_env",
    "read_zoo_yaml",
]
