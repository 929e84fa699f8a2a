"""Target: where a model's latency is measured, and LatencyResult: what it says."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["LatencyResult", "MeasureProtocol", "Target", "host_facts", "target_fingerprint"]

STATISTICS = ("p10", "median", "min")


@dataclass(frozen=True)
class MeasureProtocol:
    """How a latency is measured: warm-up, calls, interleaving, statistic."""

    warmup: int = 50
    calls: int = 600
    block: int = 20
    statistic: str = "p10"

    def __post_init__(self) -> None:
        from autoquant.errors import TargetError

        if self.statistic not in STATISTICS:
            raise TargetError(f"protocol statistic must be one of {STATISTICS}, got {self.statistic!r}")
        for key in ("warmup", "calls", "block"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "warmup" else 1):
                raise TargetError(f"protocol {key} must be a positive integer, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "calls": self.calls, "block": self.block, "statistic": self.statistic}


def _stats(times_s: np.ndarray) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    return {"p10": float(np.percentile(ms, 10)), "median": float(np.median(ms)), "min": float(ms.min())}


@dataclass(frozen=True)
class LatencyResult:
    """Latency of a candidate next to the reference measured in the same window.

    ``ratio`` is candidate / reference of the protocol's statistic: the figure to
    compare across runs; absolute milliseconds drift with the machine's load.
    """

    target: str
    unit: str
    candidate: dict[str, float]
    reference: dict[str, float] | None
    statistic: str
    calls: int
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return self.candidate[self.statistic]

    @property
    def ratio(self) -> float | None:
        if self.reference is None:
            return None
        return self.candidate[self.statistic] / self.reference[self.statistic]

    @classmethod
    def from_times(cls, *, target: str, candidate: np.ndarray, reference: np.ndarray | None,
                   statistic: str, facts: dict[str, Any]) -> LatencyResult:
        return cls(target=target, unit="ms", candidate=_stats(candidate),
                   reference=None if reference is None else _stats(reference),
                   statistic=statistic, calls=len(candidate), facts=facts)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "unit": self.unit, "statistic": self.statistic,
            "calls": self.calls, "candidate": self.candidate, "reference": self.reference,
            "ratio": self.ratio, "facts": self.facts,
        }


class Target(Protocol):
    """Something that measures ONNX models. A Target measures; it decides nothing."""

    name: str

    def measure(self, candidate: bytes, reference: bytes | None, x: np.ndarray) -> LatencyResult:
        """Latency of ``candidate`` (and ``reference``, interleaved) on input ``x`` (batch 1)."""
        ...

    def facts(self) -> dict[str, Any]:
        """What the measurement ran on (CPU, cores, runtime version)."""
        ...


def target_fingerprint(target: Target) -> str:
    """What makes two targets' latencies comparable: name, CPU, runtime version, threads (the
    key of a latency model measured on it)."""
    facts = target.facts()
    runtime = facts.get("runtime", "onnxruntime")
    engine = facts.get("onnxruntime") if runtime == "onnxruntime" else f"{runtime} {facts.get(runtime)}"
    if facts.get("reference_runtime"):  # ratios to fp32 on another runtime
        engine += f" vs {facts['reference_runtime']} {facts.get(facts['reference_runtime'])}"
    return f"{target.name}|{facts.get('cpu')}|{engine}|{facts.get('threads')}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_facts(threads: int, runtime: str = "onnxruntime") -> dict[str, Any]:
    """This machine, and the version of the runtime that measures on it."""
    from autoquant.runtimes import get_runtime

    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "runtime": runtime,
        runtime: get_runtime(runtime).version(),
        "python": platform.python_version(),
    }
