"""The local target: one runtime (onnxruntime or LiteRT) on this machine's CPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from autoquant.targets._base import LatencyResult, MeasureProtocol, host_facts

__all__ = ["HostTarget", "time_interleaved"]


def time_interleaved(calls: list[Callable[[], object]], protocol: MeasureProtocol) -> list[np.ndarray]:
    """Per-call seconds of each bound inference (a runtime session's ``bind``), run in
    alternating blocks in one window.

    Blocks rotate (A B, then B A, ...) so no model always runs right after the other.
    """
    for call in calls:
        for _ in range(protocol.warmup):
            call()
    times = [np.empty(protocol.calls) for _ in calls]
    done = 0
    order = list(range(len(calls)))
    clock = time.perf_counter
    while done < protocol.calls:
        n = min(protocol.block, protocol.calls - done)
        for k in order:
            run, out = calls[k], times[k]
            for i in range(done, done + n):
                start = clock()
                run()
                out[i] = clock() - start
        order.reverse()
        done += n
    return times


class HostTarget:
    """A runtime on this machine's CPU, with a fixed thread count."""

    def __init__(self, name: str = "host", *, threads: int = 1, protocol: MeasureProtocol | None = None,
                 runtime: str = "onnxruntime", reference_runtime: str | None = None) -> None:
        from autoquant.runtimes import get_runtime

        self.name = name
        self.threads = threads
        self.protocol = protocol or MeasureProtocol()
        self.runtime = get_runtime(runtime)
        # the reference (fp32) runs on this one: ratios on a target's several runtimes share it
        self.reference_runtime = get_runtime(reference_runtime or runtime)

    def facts(self) -> dict[str, Any]:
        facts = host_facts(self.threads, self.runtime.name)
        if self.reference_runtime is not self.runtime:
            facts["reference_runtime"] = self.reference_runtime.name
            facts[self.reference_runtime.name] = self.reference_runtime.version()
        return facts

    def measure(self, candidate: bytes, reference: bytes | None, x: np.ndarray) -> LatencyResult:
        rt, ref_rt = self.runtime, self.reference_runtime
        sessions = [rt.session(rt.compile(candidate), threads=self.threads)]
        if reference is not None:
            sessions.append(ref_rt.session(ref_rt.compile(reference), threads=self.threads))
        times = time_interleaved([s.bind(x) for s in sessions], self.protocol)
        return LatencyResult.from_times(
            target=self.name, candidate=times[0], reference=times[1] if reference is not None else None,
            statistic=self.protocol.statistic,
            facts={**self.facts(), "protocol": self.protocol.to_json(), "session": rt.session_options(self.threads)},
        )
