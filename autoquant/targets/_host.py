"""The local target: onnxruntime on this machine's CPU."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from autoquant.targets._base import LatencyResult, MeasureProtocol, host_facts
from autoquant.targets._ort import make_session, session_options

__all__ = ["HostTarget", "time_interleaved"]


def time_interleaved(sessions: list[Any], x: np.ndarray, protocol: MeasureProtocol) -> list[np.ndarray]:
    """Per-call seconds of each session, run in alternating blocks in one window.

    Blocks rotate (A B, then B A, ...) so no model always runs right after the other.
    """
    feeds = [{s.get_inputs()[0].name: np.ascontiguousarray(x[:1], dtype=np.float32)} for s in sessions]
    for session, feed in zip(sessions, feeds):
        for _ in range(protocol.warmup):
            session.run(None, feed)
    times = [np.empty(protocol.calls) for _ in sessions]
    done = 0
    order = list(range(len(sessions)))
    clock = time.perf_counter
    while done < protocol.calls:
        n = min(protocol.block, protocol.calls - done)
        for k in order:
            run, feed, out = sessions[k].run, feeds[k], times[k]
            for i in range(done, done + n):
                start = clock()
                run(None, feed)
                out[i] = clock() - start
        order.reverse()
        done += n
    return times


class HostTarget:
    """onnxruntime on this machine's CPU, with a fixed thread count."""

    def __init__(self, name: str = "host", *, threads: int = 1,
                 protocol: MeasureProtocol | None = None) -> None:
        self.name = name
        self.threads = threads
        self.protocol = protocol or MeasureProtocol()

    def facts(self) -> dict[str, Any]:
        return host_facts(self.threads)

    def measure(self, candidate: bytes, reference: bytes | None, x: np.ndarray) -> LatencyResult:
        sessions = [make_session(candidate, threads=self.threads)]
        if reference is not None:
            sessions.append(make_session(reference, threads=self.threads))
        times = time_interleaved(sessions, x, self.protocol)
        return LatencyResult.from_times(
            target=self.name, candidate=times[0], reference=times[1] if reference is not None else None,
            statistic=self.protocol.statistic,
            facts={**self.facts(), "protocol": self.protocol.to_json(), "session": session_options(self.threads)},
        )
