"""The runtime boundary: what executes a plan's graph.

A plan's graph is ONNX (the builder's QDQ chain, or an fp32 export). A runtime turns it
into its own model format (``compile``), opens an inference session on it, runs batches
of prepared observations through it (numerics for fidelity and episodes), and binds one
batch-1 inference to a call for timing. Targets time those calls (wall-clock on a host
or a board, guest instructions under emulation); they never name a runtime's library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["Runner", "Runtime", "Session", "available_runtimes", "get_runtime", "register_runtime"]


class Session(Protocol):
    """An open model of one runtime."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs (float32) of a batch of prepared observations, in the policy's own layout."""
        ...

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        """One inference of ``x[:1]``, input prepared once: the call a latency times. It
        returns the output as the runtime hands it over (its own layout)."""
        ...


class Runtime(Protocol):
    """One execution engine. ``name`` is what a target's TOML ``runtime`` says."""

    name: str
    suffix: str  # the file suffix of its model format (".onnx", ".tflite")

    def missing(self) -> str | None:
        """None when the runtime is installed here; else the one-line fix."""
        ...

    def version(self) -> str:
        ...

    def compile(self, onnx: bytes) -> bytes:
        """The runtime's model of an ONNX graph (deterministic; the ONNX bytes themselves for
        onnxruntime)."""
        ...

    def session(self, model: bytes, *, threads: int = 1) -> Session:
        """A CPU session on ``model`` (already compiled), with a fixed thread count."""
        ...

    def session_options(self, threads: int) -> dict[str, Any]:
        """The settings every session of this runtime runs with (recorded beside a latency)."""
        ...


class Runner:
    """Numerics of an ONNX graph on a runtime: ``Runner(onnx)(x)`` -> outputs, in batches."""

    def __init__(self, onnx: bytes, *, runtime: str | Runtime = "onnxruntime", threads: int = 1,
                 batch_size: int = 256) -> None:
        self.runtime = get_runtime(runtime) if isinstance(runtime, str) else runtime
        self.session = self.runtime.session(self.runtime.compile(onnx), threads=threads)
        self.batch_size = batch_size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = [self.session.run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


_RUNTIMES: dict[str, Callable[[], Runtime]] = {}
_MADE: dict[str, Runtime] = {}


def register_runtime(name: str) -> Callable[[Callable[[], Runtime]], Callable[[], Runtime]]:
    def deco(factory: Callable[[], Runtime]) -> Callable[[], Runtime]:
        _RUNTIMES[name] = factory
        return factory
    return deco


def available_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def get_runtime(name: str, *, require: bool = True) -> Runtime:
    """The runtime called ``name``; with ``require``, refused (one line, with the fix) when
    it is not installed here."""
    from autoquant.errors import TargetError

    factory = _RUNTIMES.get(name)
    if factory is None:
        raise TargetError(f"unknown runtime {name!r}; autoquant runs {available_runtimes()}")
    runtime = _MADE.get(name)
    if runtime is None:
        runtime = _MADE[name] = factory()
    if require:
        why = runtime.missing()
        if why is not None:
            raise TargetError(f"runtime {name!r} is not installed: {why}")
    return runtime
