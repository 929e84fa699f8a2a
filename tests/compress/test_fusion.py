"""The graphs onnxruntime actually runs: integer layers fused with their ReLUs and
requantization, and no Q/DQ pair left between two integer layers (the pattern
onnxruntime's own ``quantize_static`` leaves at least one DequantizeLinear in)."""

from __future__ import annotations

import os
import tempfile

import onnx
import pytest

from autoquant.compress import CompressionPlan, LayerSpec, compress
from autoquant.policy import analyse


def optimized_ops(model: bytes) -> list[str]:
    """The node types of ``model`` after onnxruntime's optimizations (what it runs)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


FLOAT = LayerSpec(None, None)


@pytest.mark.parametrize("layers, quantize, dequantize", [
    (None, 1, 0),  # every layer int8: one QuantizeLinear at the input, integers to the end
    ({"conv1": FLOAT, "conv2": FLOAT}, 1, 0),  # float convs, then int8: one QuantizeLinear between them
    ({"fc2": FLOAT}, 1, 1),  # an int8 chain into a float head: one DequantizeLinear before it
], ids=["all-int8", "float-then-int8", "int8-then-float"])
def test_integer_layers_run_fused_with_nothing_between_them(pong, pong_states, layers, quantize,
                                                           dequantize) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan.uniform(analyse(pong))
    if layers is not None:
        plan = CompressionPlan({**plan.layers, **layers})
    ops = optimized_ops(compress(pong, plan, pong_states.states, rounding="nearest").onnx)
    integer = [name for name, spec in plan.layers.items() if spec.integer]
    assert ops.count("QLinearConv") + ops.count("QGemm") == len(integer), ops
    assert ops.count("QuantizeLinear") == quantize and ops.count("DequantizeLinear") == dequantize, ops
    assert "Relu" not in ops[ops.index("QuantizeLinear"):], ops  # ReLUs fused into the integer kernels
