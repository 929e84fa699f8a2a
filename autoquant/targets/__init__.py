"""Hardware targets: where latency is measured, and how."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoquant.targets._base import LatencyResult, MeasureProtocol, Target, host_facts, target_fingerprint
from autoquant.targets._host import HostTarget, time_interleaved
from autoquant.targets._registry import TargetSpec, available_targets, find_target_spec, get_target, load_target_spec

if TYPE_CHECKING:
    from autoquant.targets._emulated import setup_emulation
    from autoquant.targets._server import DeviceLimits, serve

# The device server and the emulation set-up: loaded when a command first names them.
_LAZY = {"DeviceLimits": "_server", "serve": "_server", "setup_emulation": "_emulated"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"autoquant.targets.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autoquant.targets' has no attribute {name!r}")


__all__ = [
    "DeviceLimits",
    "HostTarget",
    "LatencyResult",
    "MeasureProtocol",
    "Target",
    "TargetSpec",
    "available_targets",
    "find_target_spec",
    "get_target",
    "host_facts",
    "target_fingerprint",
    "load_target_spec",
    "serve",
    "setup_emulation",
    "time_interleaved",
]
