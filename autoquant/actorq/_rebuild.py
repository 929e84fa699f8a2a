"""How an actor turns one broadcast's initializers into a runnable session, fast.

Opening an onnxruntime session on a bundle's graph spends most of its time optimizing
the graph: QDQ fusion into QLinearConv/QGemm, the NHWC layout of integer convolutions,
constant folding. None of that depends on the weights, so an actor does it once: on
its first build it saves the optimized graph, marks the weight initializers in it as
external again, and every later broadcast opens a session on that graph with graph
optimization off. The integer kernels are the same (the optimized graph holds them);
they still prepack each broadcast's weights, which is what they run fast on.

Updating the weights of an open session in place was measured and does not work with
the integer kernels: onnxruntime copies external initializers into its own buffers;
user-owned initializers (``add_initializer``) are read once at kernel creation
(QLinearConv and QGemm fold the weight scales into their requantization multipliers,
and NHWC transposes the conv weights), so in the Pong CNN 18 of 20 per-broadcast
initializers updated in place did not reach the outputs, with prepacking on or off.

Where optimization transforms a weight into a constant of its own (the NCHWc layout of
float convolutions, for one), the saved graph would keep the old weights. Every
pre-optimized graph is therefore checked before use: a session on it and a fresh session
on the bundle's graph, both given the same altered initializers (weights and biases
negated, scales scaled), must give bit-identical outputs on probe inputs. ``auto`` times
both paths on the actor's own machine and keeps the faster; which one ran is reported.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoquant.compress import EXTERNAL_LOCATION, SlotSpec
from autoquant.errors import ActorQError

__all__ = ["REBUILD_PATHS", "Rebuilder"]

REBUILD_PATHS = ("auto", "session", "preoptimized")
_PROBES = 8  # probe inputs of the check
_TIMED = 3  # builds of each path timed by "auto"


class Rebuilder:
    """Sessions on a fixed graph whose external initializers (``slots``) each build supplies.

    ``path`` is ``"session"`` (optimize the bundle's graph every build), ``"preoptimized"``
    (optimize once, then open sessions on the optimized graph; an ActorQError where the
    check fails) or ``"auto"`` (check, time both, keep the faster). The choice is made on
    the first build, in the process that builds: pickling drops it, so each actor decides
    on its own machine. ``choice`` says what was chosen and why.
    """

    def __init__(self, graph: bytes, slots: Mapping[str, SlotSpec], *, input_shape: tuple[int, ...],
                 obs_scale: float, threads: int = 1, path: str = "auto") -> None:
        if path not in REBUILD_PATHS:
            raise ActorQError(f"rebuild path {path!r} is not one of {', '.join(REBUILD_PATHS)}")
        self.graph = graph
        self.slots = dict(slots)
        self.input_shape = tuple(input_shape)
        self.obs_scale = float(obs_scale)
        self.threads = threads
        self.path = path
        self._reset()

    def _reset(self) -> None:
        self.choice: dict[str, Any] | None = None
        self._optimized: bytes | None = None
        self._optimized_slots: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(choice=None, _optimized=None, _optimized_slots=())
        return state

    @property
    def ran(self) -> str | None:
        """The path builds take: "session" or "preoptimized" (None before the first build)."""
        return None if self.choice is None else str(self.choice["path"])

    @property
    def optimized_graph(self) -> bytes | None:
        """The graph optimized once (weight initializers external), when builds use it."""
        return self._optimized

    def session(self, arrays: Mapping[str, np.ndarray]) -> Any:
        if self.choice is None:
            self._choose(arrays)
        if self.ran == "preoptimized":
            return self._preoptimized_session(arrays)
        return self._plain_session(arrays)

    # --- the two paths ----------------------------------------------------------------------

    def _plain_session(self, arrays: Mapping[str, np.ndarray]) -> Any:
        from autoquant.runtimes import make_session

        return make_session(self.graph, threads=self.threads, initializers=arrays)

    def _preoptimized_session(self, arrays: Mapping[str, np.ndarray]) -> Any:
        from autoquant.runtimes import make_session

        assert self._optimized is not None
        return make_session(self._optimized, threads=self.threads, optimize=False,
                            initializers={name: arrays[name] for name in self._optimized_slots})

    # --- the choice ---------------------------------------------------------------------------

    def _choose(self, arrays: Mapping[str, np.ndarray]) -> None:
        if self.path == "session":
            self.choice = {"path": "session", "reason": "asked for (rebuild='session')"}
            return
        reason = self._prepare(arrays)
        if reason is not None:
            if self.path == "preoptimized":
                raise ActorQError(f"this bundle cannot be rebuilt on a pre-optimized graph: {reason}; "
                                  "use rebuild='auto' or 'session'")
            self._reset()
            self.choice = {"path": "session", "reason": reason}
            return
        if self.path == "preoptimized":
            self.choice = {"path": "preoptimized", "reason": "asked for (rebuild='preoptimized'); check passed"}
            return
        timed: dict[str, list[float]] = {"session": [], "preoptimized": []}
        builders = {"session": self._plain_session, "preoptimized": self._preoptimized_session}
        for i in range(2 * _TIMED):
            key = ("session", "preoptimized")[i % 2]
            start = time.perf_counter()
            builders[key](arrays)
            timed[key].append(time.perf_counter() - start)
        ms = {key: 1e3 * float(np.median(values)) for key, values in timed.items()}
        faster = min(ms, key=lambda key: ms[key])
        if faster == "session":
            self._reset()
        self.choice = {"path": faster, "reason": f"faster on this machine (median of {_TIMED} builds each)",
                       "session_ms": ms["session"], "preoptimized_ms": ms["preoptimized"]}

    def _prepare(self, arrays: Mapping[str, np.ndarray]) -> str | None:
        """Make the pre-optimized graph and check it; None when it can be used, else why not."""
        import onnx

        from autoquant.runtimes import make_session

        with tempfile.TemporaryDirectory(prefix="autoquant-rebuild-") as tmp:
            path = Path(tmp) / "optimized.onnx"
            make_session(self.graph, threads=self.threads, initializers=arrays, save_optimized=str(path))
            optimized = onnx.load(str(path), load_external_data=False)
        aliases = _value_aliases(onnx.load_from_string(self.graph), self.slots)
        for tensor in optimized.graph.initializer:
            if tensor.name in aliases:
                tensor.name = aliases[tensor.name]
        for node in optimized.graph.node:
            for k, name in enumerate(node.input):
                if name in aliases:
                    node.input[k] = aliases[name]
        present = {t.name for t in optimized.graph.initializer}
        baked = sorted(name for name, spec in self.slots.items()
                       if name not in present and not name.endswith("/bias_scale"))
        if baked:
            return (f"graph optimization turns {', '.join(baked[:3])}{' ...' if len(baked) > 3 else ''} into "
                    "constants of its own (a float layer's weight layout, for one)")
        used = tuple(name for name in self.slots if name in present)
        for tensor in optimized.graph.initializer:
            if tensor.name in used:
                _make_external(tensor)
        self._optimized, self._optimized_slots = optimized.SerializeToString(), used
        altered = _altered(arrays, self.slots)
        x = _probe_inputs(self.input_shape, self.obs_scale)
        fresh = make_session(self.graph, threads=self.threads, initializers=altered)
        fast = self._preoptimized_session(altered)
        want = fresh.run(None, {fresh.get_inputs()[0].name: x})[0]
        got = fast.run(None, {fast.get_inputs()[0].name: x})[0]
        if not np.array_equal(want, got):
            return ("a session on the pre-optimized graph does not reproduce a fresh session with other weights "
                    f"(largest output difference {float(np.abs(want - got).max()):.3g})")
        return None


def _value_aliases(graph: Any, slots: Mapping[str, SlotSpec]) -> dict[str, str]:
    """Outputs of the graph's Clip/Identity nodes on slots (the QCDQ exporter clips integer
    weights to their range; constant folding names the result after the Clip) -> the slot.
    The recipe encodes weights inside that range, so the folded constant is the slot's value;
    the check in ``_prepare`` confirms it."""
    out: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for node in graph.graph.node:
            if node.op_type in ("Clip", "Identity") and node.input:
                source = node.input[0]
                root = source if source in slots else out.get(source)
                if root is not None and node.output[0] not in out:
                    out[node.output[0]] = root
                    changed = True
    return out


def _make_external(tensor: Any) -> None:
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    if not tensor.HasField("raw_data"):  # constant folding may write typed fields; external data needs raw
        value = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    set_external_data(tensor, location=EXTERNAL_LOCATION)
    tensor.ClearField("raw_data")
    tensor.data_location = tensor.EXTERNAL


def _altered(arrays: Mapping[str, np.ndarray], slots: Mapping[str, SlotSpec]) -> dict[str, np.ndarray]:
    """Other valid initializers: weights and biases negated, scales times 1.25."""
    out: dict[str, np.ndarray] = {}
    for name in slots:
        value = np.asarray(arrays[name])
        if name.endswith("_scale"):
            out[name] = (value * np.float32(1.25)).astype(value.dtype)
        elif value.dtype == np.int32:
            out[name] = np.clip(-value.astype(np.int64), -(2 ** 31 - 1), 2 ** 31 - 1).astype(np.int32)
        else:
            out[name] = np.negative(value)
    return out


def _probe_inputs(shape: tuple[int, ...], obs_scale: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    if obs_scale != 1.0:  # images: pixels scaled to [0, 1]
        return (rng.integers(0, 256, size=(_PROBES, *shape)) * obs_scale).astype(np.float32)
    return rng.normal(0.0, 1.0, size=(_PROBES, *shape)).astype(np.float32)
