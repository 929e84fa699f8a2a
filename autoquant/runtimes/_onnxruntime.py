"""onnxruntime: sessions, which kernels actually ran (from the profile), and its own
uniform int8 quantization (the reference a user would otherwise pick)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.runtimes._base import Runner, register_runtime

__all__ = ["FLOAT_OPS", "INTEGER_OPS", "KernelReport", "OnnxRuntime", "OrtRunner", "OrtSession", "kernel_report",
           "make_session", "quiet_logs", "session_options"]

# Kernels that compute in integers; with the float ones, the kernels that hold a layer.
INTEGER_OPS = frozenset({
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
})
FLOAT_OPS = frozenset({"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})
LAYER_OPS = INTEGER_OPS | FLOAT_OPS


def session_options(threads: int) -> dict[str, Any]:
    """The onnxruntime session options every latency here is measured with (recorded with it)."""
    return {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"]}


def make_session(model: bytes, *, threads: int = 1, profile_prefix: str | None = None,
                 initializers: Mapping[str, np.ndarray] | None = None, optimize: bool = True,
                 save_optimized: str | None = None) -> Any:
    """A CPU onnxruntime session with a fixed thread count.

    ``initializers`` supplies the graph's external-data initializers by name (a recipe
    graph's slots); the session reads them from the arrays, which must outlive it: they
    are kept on the session as ``_autoquant_buffers``. ``optimize=False`` opens a graph
    that is already optimized (one ``save_optimized`` wrote, a file path) without
    optimizing it again.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    if save_optimized is not None:
        options.optimized_model_filepath = save_optimized
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    buffers: list[Any] = []
    if initializers:
        names = list(initializers)
        arrays = [np.ascontiguousarray(initializers[name]) for name in names]
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        options.add_external_initializers(names, values)
        buffers = [arrays, values]
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    if buffers:
        session._autoquant_buffers = buffers
    return session


def quiet_logs() -> None:
    """onnxruntime's default logger at errors only (benchmarks print their own tables)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)


class OrtSession:
    """An onnxruntime session behind the runtime boundary's Session."""

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        self.session = make_session(model, threads=threads)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def bind(self, x: np.ndarray) -> Any:
        run, feed = self.session.run, {self.input_name: np.ascontiguousarray(x[:1], dtype=np.float32)}

        def call() -> object:
            return run(None, feed)[0]

        return call


@register_runtime("onnxruntime")
class OnnxRuntime:
    name = "onnxruntime"
    suffix = ".onnx"

    def missing(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "pip install onnxruntime"
        return None

    def version(self) -> str:
        import onnxruntime as ort

        return str(ort.__version__)

    def compile(self, onnx: bytes) -> bytes:
        return onnx

    def session(self, model: bytes, *, threads: int = 1) -> OrtSession:
        return OrtSession(model, threads=threads)

    def session_options(self, threads: int) -> dict[str, Any]:
        return session_options(threads)


class OrtRunner(Runner):
    """Runs an ONNX policy network on batches of prepared observations with onnxruntime."""

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        super().__init__(model, runtime="onnxruntime", threads=threads)


@dataclass(frozen=True)
class KernelReport:
    """Which kernel computed each layer, read from an onnxruntime profile."""

    layers: dict[str, str]  # layer -> "int8" | "float" | "unknown"
    ops: dict[str, list[str]]  # layer -> kernel op types that ran for it
    kernel_us: dict[str, float]  # op type -> mean microseconds per call, all nodes

    def integer_layers(self) -> list[str]:
        return [name for name, kind in self.layers.items() if kind == "int8"]

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "ops": self.ops, "kernel_us": self.kernel_us}


def kernel_report(model: bytes, x: np.ndarray, layers: Sequence[str], *, runs: int = 5,
                  threads: int = 1) -> KernelReport:
    """Run ``model`` under the profiler and name the kernel that computed each layer.

    Node names do not survive onnxruntime's fusions and layout transforms, but a
    policy network is a chain: the layer kernels run in the layers' order, one each.
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(model, threads=threads, profile_prefix=os.path.join(tmp, "prof"))
        name = session.get_inputs()[0].name
        feed = {name: np.ascontiguousarray(x[:1], dtype=np.float32)}
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    sequence: list[str] = []
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "")
        totals[op] = totals.get(op, 0.0) + float(event.get("dur", 0))
        if op in LAYER_OPS:
            sequence.append(op)
    per_run = len(sequence) // runs
    ops: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    if per_run == len(layers):
        for layer, op in zip(layers, sequence[:per_run]):
            ops[layer] = [op]
            kinds[layer] = "int8" if op in INTEGER_OPS else "float"
    else:  # not a one-kernel-per-layer graph: say so rather than guess
        kinds = {layer: "unknown" for layer in layers}
        ops = {layer: sequence[:per_run] for layer in layers}
    return KernelReport(layers=kinds, ops=ops,
                        kernel_us={op: round(t / runs, 2) for op, t in sorted(totals.items())})
