"""Hardware targets: where latency is measured, and how."""

from __future__ import annotations

from autoquant.targets._base import LatencyResult, MeasureProtocol, Target, host_facts
from autoquant.targets._host import HostTarget, time_interleaved
from autoquant.targets._ort import KernelReport, OrtRunner, kernel_report, make_session
from autoquant.targets._registry import TargetSpec, available_targets, get_target, load_target_spec

__all__ = [
    "HostTarget",
    "KernelReport",
    "LatencyResult",
    "MeasureProtocol",
    "OrtRunner",
    "Target",
    "TargetSpec",
    "available_targets",
    "get_target",
    "host_facts",
    "kernel_report",
    "load_target_spec",
    "make_session",
    "time_interleaved",
]
