"""Exported ONNX runs the integer kernels the plan asks for, and is faster for it."""

from __future__ import annotations

import numpy as np
import pytest

from autoquant.compress import CompressionPlan, LayerSpec, compress, export_reference, onnx_metadata
from autoquant.errors import KernelMismatchError
from autoquant.policy import analyse
from autoquant.targets import HostTarget, MeasureProtocol
from autoquant.runtimes import OrtRunner, kernel_report


def test_nature_cnn_pruned_int8_runs_int8_and_is_faster(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    table = analyse(pong)
    plan = CompressionPlan.uniform(table, prune_ratio=0.5)
    compressed = compress(pong, plan, pong_states.states)
    assert compressed.kernels.layers == {name: "int8" for name in table.names}
    assert compressed.table.total_macs < 0.5 * table.total_macs
    from autoquant.compress import weight_bytes
    assert compressed.size_bytes < 0.2 * weight_bytes(table, CompressionPlan())
    reference = export_reference(pong)
    assert set(kernel_report(reference, pong_states.states, table.names).layers.values()) == {"float"}
    result = HostTarget(protocol=MeasureProtocol(warmup=20, calls=500, block=20)).measure(
        compressed.onnx, reference, pong_states.states[:1])
    assert result.ratio is not None and result.ratio < 1.0, result.to_json()
    assert result.facts["onnxruntime"] and result.facts["threads"] == 1
    meta = onnx_metadata(compressed.onnx)
    assert CompressionPlan.from_json(meta["plan"]) == plan
    assert meta["action"]["kind"] == "argmax"


def test_mixed_plan_reports_each_layer(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan({"conv2": LayerSpec(4, 8), "fc1": LayerSpec(8, None)})
    compressed = compress(pong, plan, pong_states.states)
    layers = compressed.kernels.layers
    assert layers["conv2"] == "int8"
    assert layers["fc1"] == "float"  # weight-only: dequantized weights, float Gemm
    assert layers["conv1"] == layers["conv3"] == layers["fc2"] == "float"


@pytest.mark.slow
def test_quantized_onnx_matches_the_brevitas_model(cartpole_dqn, cartpole_states) -> None:  # type: ignore[no-untyped-def]
    import torch

    from autoquant.compress._compress import _compress_brevitas

    plan = CompressionPlan.uniform(analyse(cartpole_dqn))
    compressed = compress(cartpole_dqn, plan, cartpole_states.states)  # the graph builder
    brevitas = _compress_brevitas(cartpole_dqn, plan, cartpole_states.states, rounding="gptq")
    x = cartpole_states.states[:256]
    with torch.no_grad():
        want = brevitas.net(torch.as_tensor(x)).numpy()  # Brevitas' fake-quantized torch model
    got = OrtRunner(compressed.onnx)(x)
    # Same integers, same scales: equal to float rounding, except where an activation lands
    # within float error of a rounding boundary, which torch and onnxruntime may then round
    # to neighbouring integers (one quantization step: measured 0.04 on outputs near 107).
    close = np.isclose(got, want, rtol=0, atol=1e-3)
    assert close.mean() >= 0.99, f"{(~close).sum()} of {close.size} outputs differ by more than 1e-3"
    np.testing.assert_allclose(got, want, rtol=1e-3)
    assert np.mean(got.argmax(axis=1) == want.argmax(axis=1)) >= 0.99


@pytest.mark.slow
def test_float_kernels_for_an_int8_plan_fail_loudly(cartpole_dqn, cartpole_states, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """If the graph loses its fusion (here: the placement puts no activation quantizers at
    all), the plan's promise is broken and compress says so instead of reporting a result."""
    from autoquant.compress import _build

    real = _build.placement

    def unfused(net, plan, *, input_nonnegative):  # type: ignore[no-untyped-def]
        weight_only = CompressionPlan({n: LayerSpec(s.weight_bits, None) for n, s in plan.layers.items()})
        return real(net, weight_only, input_nonnegative=input_nonnegative)

    monkeypatch.setattr(_build, "placement", unfused)
    with pytest.raises(KernelMismatchError, match="fc1"):
        compress(cartpole_dqn, CompressionPlan.uniform(analyse(cartpole_dqn)), cartpole_states.states)
