"""The graph builder against Brevitas' own export: the same graph, bit for bit.

Held to the route it replaces (torch pruning, Brevitas quantizers and calibration, the
TorchScript QCDQ exporter): for round-to-nearest, every node in the same order, every
initializer equal, and identical outputs under onnxruntime; for GPTQ and fine-tuning,
the builder serialises what the Brevitas model holds, with the same outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from autoquant.compress import CompressionPlan, LayerSpec, compress
from autoquant.compress._compress import _compress_brevitas
from autoquant.compress._build import build_graph, placement
from autoquant.runtimes import OrtRunner

PONG_PLANS = [
    {"conv1": LayerSpec(8, 8, 0.5), "conv2": LayerSpec(6, 8, 0.25), "conv3": LayerSpec(6, 8),
     "fc1": LayerSpec(4, 8, 0.5), "fc2": LayerSpec(8, 8)},
    {"conv2": LayerSpec(4, None, 0.5), "fc1": LayerSpec(8, 8, 0.25)},  # weight-only, float neighbours
    {"conv1": LayerSpec(None, None, 0.75), "conv3": LayerSpec(2, 8), "fc2": LayerSpec(3, 8)},
]
MLP_PLANS = [
    {"fc1": LayerSpec(8, 8, 0.5), "fc2": LayerSpec(5, 8, 0.25), "fc3": LayerSpec(8, 8)},
    {"fc2": LayerSpec(8, 8)},  # an integer layer between float ones: its own in/out quantizers
]


def _strip_parameter_inputs(model: bytes) -> bytes:
    """The TorchScript exporter also declares float parameters as graph inputs (callers
    could override them), which changes onnxruntime's float kernels' rounding; the
    builder does not. Remove them to compare the arithmetic."""
    proto = onnx.load_from_string(model)
    inits = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in inits]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    return proto.SerializeToString()


def _by_position(model: bytes) -> list[tuple[str, int, np.ndarray]]:
    proto = onnx.load_from_string(model)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return [(node.op_type, i, inits[name]) for node in proto.graph.node for i, name in enumerate(node.input)
            if name in inits]


def _assert_same_graph(built: bytes, exported: bytes, states: np.ndarray) -> None:
    a, b = onnx.load_from_string(built), onnx.load_from_string(exported)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert [n.name for n in a.graph.node if n.op_type in ("Conv", "Gemm")] == \
        [n.name for n in b.graph.node if n.op_type in ("Conv", "Gemm")]
    mine, theirs = _by_position(built), _by_position(exported)
    assert len(mine) == len(theirs)
    for (op, i, x), (op2, i2, y) in zip(mine, theirs):
        assert (op, i, x.dtype, x.shape) == (op2, i2, y.dtype, y.shape)
        np.testing.assert_array_equal(x, y, err_msg=f"{op} input {i}")
    np.testing.assert_array_equal(OrtRunner(built)(states), OrtRunner(_strip_parameter_inputs(exported))(states))


@pytest.mark.slow
@pytest.mark.parametrize("layers", PONG_PLANS, ids=lambda p: CompressionPlan(p).describe())
def test_builder_equals_brevitas_export_on_the_pong_cnn(pong, pong_states, layers) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan(layers)
    states = pong_states.states
    built = compress(pong, plan, states, rounding="nearest", verify_kernels=False)
    exported = _compress_brevitas(pong, plan, states, rounding="nearest")
    assert built.kept == exported.kept
    assert built.table.total_macs == exported.table.total_macs
    _assert_same_graph(built.onnx, exported.onnx, states)


@pytest.mark.parametrize("layers", MLP_PLANS, ids=lambda p: CompressionPlan(p).describe())
def test_builder_equals_brevitas_export_on_an_mlp(cartpole_dqn, cartpole_states, layers) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan(layers)
    states = cartpole_states.states
    built = compress(cartpole_dqn, plan, states, rounding="nearest", verify_kernels=False)
    exported = _compress_brevitas(cartpole_dqn, plan, states, rounding="nearest")
    assert built.kept == exported.kept
    _assert_same_graph(built.onnx, exported.onnx, states)


@pytest.mark.slow
def test_builder_serialises_gptq_rounding(cartpole_dqn, cartpole_states) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan(MLP_PLANS[0])
    states = cartpole_states.states
    built = compress(cartpole_dqn, plan, states, rounding="gptq", verify_kernels=False)
    exported = _compress_brevitas(cartpole_dqn, plan, states, rounding="gptq")
    nearest = compress(cartpole_dqn, plan, states, rounding="nearest", verify_kernels=False)
    _assert_same_graph(built.onnx, exported.onnx, states)
    # GPTQ moved some integers away from nearest rounding, and the builder kept them.
    gptq_ints = [x for op, i, x in _by_position(built.onnx) if op == "Clip" and i == 0]
    nearest_ints = [x for op, i, x in _by_position(nearest.onnx) if op == "Clip" and i == 0]
    assert any(not np.array_equal(a, b) for a, b in zip(gptq_ints, nearest_ints))


def test_placement_fuses_every_integer_layer(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    """Every integer layer reads a quantized input; every non-head integer layer's output
    is quantized before anything else reads it; the head returns float."""
    plan = CompressionPlan(PONG_PLANS[0])
    steps = placement(pong.net, plan, input_nonnegative=True)
    kinds = [(s.kind, s.name, s.quantized) for s in steps]
    assert kinds[0] == ("quant", "conv1_in_quant", False)
    assert not steps[0].signed  # Atari frames are >= 0: uint8
    assert ("quant", "fc1_in_quant", False) in kinds  # re-quantized after Flatten
    relus = [s for s in steps if s.kind == "relu"]
    assert all(s.quantized for s in relus)
    assert steps[-1].kind == "layer" and steps[-1].head
    compressed = compress(pong, plan, pong_states.states, rounding="nearest")
    assert set(compressed.kernels.layers.values()) == {"int8"}


def test_builder_is_deterministic_and_its_torch_twin_agrees(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    """Two builds are byte-identical, and the dequantized torch network it returns acts
    like the graph (activation rounding aside)."""
    import torch

    plan = CompressionPlan(PONG_PLANS[0])
    states = pong_states.states
    one = build_graph(pong.net, pong.input_shape, plan, states)
    two = build_graph(pong.net, pong.input_shape, plan, states)
    assert one.onnx == two.onnx
    compressed = compress(pong, plan, states, rounding="nearest", verify_kernels=False)
    with torch.no_grad():
        q_torch = compressed.net(torch.as_tensor(states)).numpy()
    q_onnx = OrtRunner(compressed.onnx)(states)
    assert np.mean(q_torch.argmax(1) == q_onnx.argmax(1)) >= 0.9


@pytest.mark.slow
def test_the_activation_cache_changes_nothing_but_the_time(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    """Plans that share pruned prefixes, built with one cache in a row, give the bytes a
    cold build gives; a cache of other states is not used."""
    from autoquant.compress import ActivationCache

    states = np.asarray(pong_states.states, dtype=np.float32)
    cache = ActivationCache(pong.net, states)
    plans = [CompressionPlan(p) for p in PONG_PLANS] + [
        CompressionPlan({"conv1": LayerSpec(8, 8, 0.5), "conv2": LayerSpec(8, 8), "fc1": LayerSpec(8, 8)}),
        CompressionPlan({"conv1": LayerSpec(8, 8, 0.5), "conv2": LayerSpec(6, 8, 0.25), "fc2": LayerSpec(8, 8)}),
        CompressionPlan(PONG_PLANS[0]),
    ]
    for plan in plans:
        warm = build_graph(pong.net, pong.input_shape, plan, states, cache=cache)
        cold = build_graph(pong.net, pong.input_shape, plan, states)
        assert warm.scales == cold.scales
        assert warm.onnx == cold.onnx
    assert cache._activations and cache._stats
    other = ActivationCache(pong.net, states[:64].copy())
    plan = CompressionPlan(PONG_PLANS[0])
    assert build_graph(pong.net, pong.input_shape, plan, states, cache=other).onnx == \
        build_graph(pong.net, pong.input_shape, plan, states).onnx
    assert not other._stats


def _layer_shift(net, built, states: np.ndarray) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Per layer with quantized weights, the per-channel mean of (its output as the graph
    stores it, bias included) minus (its fp32 output), both on the fp32 network's float
    input to that layer: what bias correction drives to zero."""
    import torch
    from torch import nn

    from autoquant.compress import pruned_net

    fp32 = pruned_net(net, built.sliced)
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        h = torch.from_numpy(states)
        for name, m in fp32.named_children():
            layer = built.layers.get(name)
            if layer is not None and layer.weight_scale is not None:
                scale = layer.weight_scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
                w = torch.from_numpy((layer.weight.astype(np.float64) * scale).astype(np.float32))
                b = layer.bias.astype(np.float64) * (layer.bias_scale if layer.bias_scale is not None else 1.0)
                b = torch.from_numpy(b.astype(np.float32))
                y = (nn.functional.conv2d(h, w, b, stride=m.stride, padding=m.padding) if isinstance(m, nn.Conv2d)
                     else nn.functional.linear(h, w, b))
                out[name] = (y - m(h)).double().mean(dim=(0, 2, 3) if y.ndim == 4 else (0,)).numpy()
            h = m(h)
    return out


def test_bias_correction_removes_the_mean_shift_of_rounded_weights(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    """With bias correction every quantized layer's mean output on the recorded states is
    fp32's to within half a step of its int32 bias; without, rounding shifts it by far more.
    Plans without quantized weights build the same bytes either way."""
    states = np.asarray(pong_states.states, dtype=np.float32)
    plan = CompressionPlan({"conv1": LayerSpec(8, 8, 0.75), "conv2": LayerSpec(8, 8, 0.25), "conv3": LayerSpec(8, 8),
                            "fc1": LayerSpec(4, 8, 0.5), "fc2": LayerSpec(8, None)})  # fc2: weights only, float bias
    plain = build_graph(pong.net, pong.input_shape, plan, states)
    fixed = build_graph(pong.net, pong.input_shape, plan, states, bias_correction=True)
    before, after = _layer_shift(pong.net, plain, states), _layer_shift(pong.net, fixed, states)
    assert set(after) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    for name, shift in after.items():
        layer = fixed.layers[name]
        step = layer.bias_scale if layer.bias_scale is not None else np.zeros_like(shift)
        assert np.all(np.abs(shift) <= step / 2 + 1e-4 + 1e-4 * np.abs(before[name])), name
        np.testing.assert_array_equal(fixed.layers[name].weight, plain.layers[name].weight)  # weights untouched
    assert max(np.abs(s).max() for s in before.values()) > 1e-2  # there was a shift to remove
    for other in (CompressionPlan(), CompressionPlan({"conv1": LayerSpec(None, None, 0.5)})):
        assert build_graph(pong.net, pong.input_shape, other, states, bias_correction=True).onnx == \
            build_graph(pong.net, pong.input_shape, other, states).onnx


def test_compress_corrects_biases_only_where_the_builder_rounds(pong, pong_states, cartpole_dqn,
                                                                cartpole_states) -> None:  # type: ignore[no-untyped-def]
    """``compress(bias_correction=True)`` is the builder's corrected graph on the
    round-to-nearest path; GPTQ keeps its own weights and biases."""
    states = np.asarray(pong_states.states, dtype=np.float32)
    plan = CompressionPlan(PONG_PLANS[0])
    got = compress(pong, plan, states, rounding="nearest", bias_correction=True, verify_kernels=False)
    assert got.onnx == build_graph(pong.net, pong.input_shape, plan, states, bias_correction=True,
                                   metadata=_metadata_of(got.onnx)).onnx
    assert got.onnx != compress(pong, plan, states, rounding="nearest", verify_kernels=False).onnx
    mlp = CompressionPlan(MLP_PLANS[0])
    x = cartpole_states.states[:256]
    assert compress(cartpole_dqn, mlp, x, rounding="gptq", bias_correction=True, verify_kernels=False).onnx == \
        compress(cartpole_dqn, mlp, x, rounding="gptq", verify_kernels=False).onnx


def _metadata_of(model: bytes) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_from_string(model).metadata_props}


def test_mse_ranges_are_the_least_error_ranges() -> None:
    """The MSE range is (to its histogram's resolution) the clipping range of least squared
    quantization error, signed and unsigned: no range on a fine grid does better by more
    than 1 %; on evenly spread values it is the whole range."""
    import torch

    from autoquant.compress._build import _mse_range

    def error(x: torch.Tensor, c: float, signed: bool) -> float:
        low, high, steps = (-128, 127, 128.0) if signed else (0, 255, 255.0)
        s = c / steps
        return float(torch.mean((torch.clamp(torch.round(x / s), low, high) * s - x).double() ** 2))

    gen = torch.Generator().manual_seed(0)
    laplace = torch.distributions.Laplace(0.0, 1.0)
    torch.manual_seed(0)
    for x, signed in ((laplace.sample((40_000,)).abs(), False), (laplace.sample((40_000,)), True),
                      (torch.rand(40_000, generator=gen) * 4.0, False)):
        chosen = float(_mse_range([x[:20_000], x[20_000:]], signed=signed))
        top = float(x.abs().max())
        best = min(error(x, top * k / 200, signed) for k in range(1, 201))
        assert error(x, chosen, signed) <= 1.01 * best
    assert chosen == pytest.approx(4.0, rel=0.02)  # evenly spread: nothing worth clipping


def test_mse_calibration_builds_its_own_scales(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    from autoquant.compress import ActivationCache

    states = np.asarray(pong_states.states, dtype=np.float32)
    plan = CompressionPlan(PONG_PLANS[0])
    cache = ActivationCache(pong.net, states)
    mse = build_graph(pong.net, pong.input_shape, plan, states, calibration="mse", cache=cache)
    pct = build_graph(pong.net, pong.input_shape, plan, states, cache=cache)
    assert set(mse.scales) == set(pct.scales) and mse.scales != pct.scales
    assert pct.onnx == build_graph(pong.net, pong.input_shape, plan, states).onnx  # the cache kept percentiles only
    with pytest.raises(ValueError, match="calibration must be one of"):
        build_graph(pong.net, pong.input_shape, plan, states, calibration="entropy")
