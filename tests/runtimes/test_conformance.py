"""The conformance suite every runtime passes, on this CPU and under Arm emulation.

A runtime computes what the ONNX graph says: float layers to float rounding, integer
layers to one quantization step of their output (the runtimes' requantization rounds
ties differently: onnxruntime in float, LiteRT in fixed point). Each integer layer is
checked alone against exact integer arithmetic in numpy, on inputs that sit on the
input quantizer's grid (no rounding ties there), so one step is the whole allowance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoquant.compress import CompressionPlan, LayerSpec, build_graph, export_reference
from autoquant.runtimes import Runner, available_runtimes, get_runtime
from autoquant.targets import HostTarget, MeasureProtocol, get_target

RUNTIMES = available_runtimes()


def test_both_runtimes_are_registered() -> None:
    assert RUNTIMES == ["litert", "onnxruntime"]


# --- single integer layers, against exact integer arithmetic ---------------------------------


def _layer_graph(kind: str, *, signed_in: bool, relu: bool, pads: int, seed: int) -> tuple[bytes, dict]:
    """One QDQ layer: x -> Q/DQ -> Conv|Gemm (int8 weights per channel, int32 bias) -> [Relu]
    -> Q/DQ -> out, with its parameters for the numpy reference."""
    rng = np.random.default_rng(seed)
    if kind == "conv":
        shape, w_shape = (3, 9, 9), (5, 3, 3, 3)
    else:
        shape, w_shape = (24,), (7, 24)
    s_in = np.float32(0.037)
    z_dtype = np.int8 if signed_in else np.uint8
    w_int = rng.integers(-127, 128, size=w_shape).astype(np.int8)
    s_w = rng.uniform(0.002, 0.02, size=w_shape[0]).astype(np.float32)
    b_int = rng.integers(-2000, 2000, size=w_shape[0]).astype(np.int32)
    s_out = np.float32(rng.uniform(0.05, 0.2))
    out_signed = not relu
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name=name))
        return name

    zin = const("zin", np.array(0, z_dtype))
    nodes += [helper.make_node("QuantizeLinear", ["obs", const("sin", np.array(s_in)), zin], ["xq"], name="qin"),
              helper.make_node("DequantizeLinear", ["xq", "sin", zin], ["xd"], name="dqin")]
    nodes.append(helper.make_node("DequantizeLinear", [const("wi", w_int), const("sw", s_w),
                                                       const("zw", np.zeros(w_shape[0], np.int8))], ["wd"],
                                  name="dqw", axis=0))
    nodes.append(helper.make_node("DequantizeLinear", [const("bi", b_int), const("sb", (s_in * s_w).astype(np.float32)),
                                                       const("zb", np.zeros(w_shape[0], np.int32))], ["bd"],
                                  name="dqb", axis=0))
    if kind == "conv":
        nodes.append(helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], name="layer", kernel_shape=[3, 3],
                                      pads=[pads] * 4, strides=[2, 2]))
    else:
        nodes.append(helper.make_node("Gemm", ["xd", "wd", "bd"], ["y"], name="layer", transB=1))
    y = "y"
    if relu:
        nodes.append(helper.make_node("Relu", ["y"], ["yr"], name="relu"))
        y = "yr"
    zout = const("zout", np.array(0, np.int8 if out_signed else np.uint8))
    nodes += [helper.make_node("QuantizeLinear", [y, const("sout", np.array(s_out)), zout], ["yq"], name="qout"),
              helper.make_node("DequantizeLinear", ["yq", "sout", zout], ["out"], name="dqout")]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["b", *shape])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), dict(kind=kind, shape=shape, s_in=s_in, signed_in=signed_in, w=w_int,
                                           s_w=s_w, b=b_int, s_out=s_out, relu=relu, out_signed=out_signed,
                                           pads=pads)


def _on_grid(p: dict, n: int, seed: int) -> np.ndarray:
    """Inputs that are exact multiples of the input scale (no rounding ties)."""
    low, high = (-128, 127) if p["signed_in"] else (0, 255)
    q = np.random.default_rng(seed).integers(low, high + 1, size=(n, *p["shape"]))
    return (q.astype(np.float32) * p["s_in"]).astype(np.float32)


def _exact(p: dict, x: np.ndarray) -> np.ndarray:
    """The layer in exact integer arithmetic, requantized once, rounded half to even."""
    xq = np.rint(x.astype(np.float64) / np.float64(p["s_in"])).astype(np.int64)
    w = p["w"].astype(np.int64)
    if p["kind"] == "conv":
        xq = np.pad(xq, ((0, 0), (0, 0), (p["pads"],) * 2, (p["pads"],) * 2))
        n, c, h, wd = xq.shape
        oh, ow = (h - 3) // 2 + 1, (wd - 3) // 2 + 1
        acc = np.zeros((n, w.shape[0], oh, ow), np.int64)
        for i in range(oh):
            for j in range(ow):
                patch = xq[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                acc[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
        acc += p["b"].astype(np.int64)[None, :, None, None]
        scale = (np.float64(p["s_in"]) * p["s_w"].astype(np.float64))[None, :, None, None]
    else:
        acc = xq @ w.T + p["b"].astype(np.int64)[None, :]
        scale = (np.float64(p["s_in"]) * p["s_w"].astype(np.float64))[None, :]
    y = acc * scale
    if p["relu"]:
        y = np.maximum(y, 0)
    low, high = (-128, 127) if p["out_signed"] else (0, 255)
    return (np.clip(np.rint(y / np.float64(p["s_out"])), low, high) * np.float64(p["s_out"])).astype(np.float32)


LAYERS = [("conv", True, True, 0), ("conv", False, True, 1), ("conv", False, False, 0),
          ("gemm", False, True, 0), ("gemm", True, False, 0)]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind,signed_in,relu,pads", LAYERS)
def test_an_integer_layer_is_exact_to_one_output_step(runtime: str, kind: str, signed_in: bool, relu: bool,
                                                      pads: int) -> None:
    model, p = _layer_graph(kind, signed_in=signed_in, relu=relu, pads=pads, seed=len(kind) + pads + relu)
    x = _on_grid(p, 64, seed=1)
    got, want = Runner(model, runtime=runtime)(x), _exact(p, x)
    assert got.shape == want.shape
    steps = np.abs(got.astype(np.float64) - want) / np.float64(p["s_out"])
    assert steps.max() <= 1.0 + 1e-4, f"{runtime} {kind}: {steps.max():.2f} output steps from exact"
    assert (steps > 0.5).mean() < 0.01  # off by one step only at the rare requantization tie


# --- whole networks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pong_graphs(pong, pong_states):  # type: ignore[no-untyped-def]
    names = [n for n, m in pong.net.named_children() if hasattr(m, "weight")]
    int8 = CompressionPlan({n: LayerSpec(8, 8) for n in names})
    mixed = CompressionPlan({"conv1": LayerSpec(None, None, 0.5), "conv2": LayerSpec(4, 8, 0.25),
                             "fc1": LayerSpec(8, 8, 0.5)})
    states = pong_states.states
    return {"fp32": export_reference(pong), "int8": build_graph(pong.net, pong.input_shape, int8, states).onnx,
            "mixed": build_graph(pong.net, pong.input_shape, mixed, states).onnx}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_fp32_network_matches_torch(runtime: str, pong, pong_graphs, pong_states) -> None:  # type: ignore[no-untyped-def]
    import torch

    x = pong_states.states[:40]
    with torch.no_grad():
        want = pong.net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Runner(pong_graphs["fp32"], runtime=runtime)(x), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_quantized_networks_stay_close_to_onnxruntime(runtime: str, pong_graphs, pong_states) -> None:  # type: ignore[no-untyped-def]
    """End to end, a step of difference in one layer (a tie, or float rounding just before a
    quantizer) moves later layers by a few steps; measured on these plans, LiteRT stays
    within 2.3 % of the output range at worst and 0.5 % on average."""
    x = pong_states.states
    for name in ("int8", "mixed"):
        got, ref = Runner(pong_graphs[name], runtime=runtime)(x), Runner(pong_graphs[name])(x)
        span = np.abs(ref).max()
        assert np.abs(got - ref).max() < 0.05 * span, name
        assert np.abs(got - ref).mean() < 0.01 * span, name


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batches_and_bound_calls_compute_the_same(runtime: str, pong_graphs, pong_states) -> None:  # type: ignore[no-untyped-def]
    rt = get_runtime(runtime)
    model = rt.compile(pong_graphs["int8"])
    assert rt.compile(pong_graphs["int8"]) == model  # deterministic
    session = rt.session(model)
    x = pong_states.states[:5]
    whole = session.run(x)
    rows = np.concatenate([session.run(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(whole, rows)
    np.testing.assert_array_equal(np.asarray(session.bind(x[2:])()), whole[2:3])
    assert Runner(pong_graphs["int8"], runtime=runtime, batch_size=2)(x).shape == whole.shape


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_host_target_measures_on_its_runtime(runtime: str, pong_graphs, pong_states) -> None:  # type: ignore[no-untyped-def]
    target = HostTarget(protocol=MeasureProtocol(warmup=2, calls=20, block=5), runtime=runtime)
    result = target.measure(pong_graphs["int8"], pong_graphs["fp32"], pong_states.states[:1])
    assert result.unit == "ms" and result.ratio is not None and np.isfinite(result.ratio) and result.ratio > 0
    assert result.facts["runtime"] == runtime and result.facts[runtime] == get_runtime(runtime).version()
    assert result.facts["session"] == get_runtime(runtime).session_options(1)


# --- under emulation --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_emulated_arm_runs_each_runtime(runtime: str, emulation, pong_graphs, pong_states, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The aarch64 build of the runtime computes what the host's does (fp32 to float
    rounding; one integer layer to one step), and counts instructions deterministically."""
    from autoquant.targets import load_target_spec

    spec = (tmp_path / "a76.toml")
    spec.write_text(f'name = "a76-{runtime}"\nreach = "emulated"\nemulated_cpu = "cortex-a76"\n'
                    f'runtime = "{runtime}"\ncost_unit = "instructions"\n[protocol]\nwarmup = 1\ncalls = 3\n')
    assert load_target_spec(spec).runtime == runtime
    target = get_target(str(spec))
    model, p = _layer_graph("conv", signed_in=False, relu=True, pads=1, seed=3)
    xs = _on_grid(p, 16, seed=2)
    steps = np.abs(target.infer(model, xs).astype(np.float64) - _exact(p, xs)) / np.float64(p["s_out"])
    assert steps.max() <= 1.0 + 1e-4
    if runtime == "onnxruntime":  # its fp32 numerics and counts under emulation: tests/targets/test_emulated.py
        return
    x = pong_states.states[:3]
    np.testing.assert_allclose(target.infer(pong_graphs["fp32"], x), Runner(pong_graphs["fp32"], runtime=runtime)(x),
                               atol=1e-4)
    first = target.measure(pong_graphs["int8"], pong_graphs["fp32"], x)
    assert first.unit == "instructions" and first.facts["cpu"].startswith("cortex-a76")
    assert 0 < first.ratio < 1  # int8 costs fewer instructions than fp32 on an A76
    again = type(target)(target.name, target.cpu, runs=3, warmup=1, runtime=runtime).measure(
        pong_graphs["int8"], None, x)
    assert abs(again.value / first.value - 1) < 0.01  # a fresh process counts the same


# --- through the device server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def device(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.targets.device import start_device

    dev = start_device(tmp_path_factory.mktemp("device"), max_model_mb=32)  # Pong fp32 is 6.7 MB
    yield dev
    dev.stop()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_device_server_runs_each_runtime(runtime: str, device, pong_graphs, pong_states, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A board runs the runtime's model the client compiled: the same numbers as this
    machine's session, latencies as ratios to fp32 on onnxruntime, the runtime named."""
    spec = tmp_path / "board.toml"
    spec.write_text(f'name = "board"\nreach = "remote"\nruntime = ["onnxruntime", "litert"]\n'
                    f'device = "{device.address}"\nsecret_file = "{device.secret_file}"\n'
                    '[protocol]\nwarmup = 2\ncalls = 20\nblock = 5\n')
    target = get_target(str(spec), runtime=runtime)
    assert set(target.facts()["runtimes"]) == {"onnxruntime", "litert"}
    x = pong_states.states[:6]
    np.testing.assert_array_equal(target.infer(pong_graphs["int8"], x), Runner(pong_graphs["int8"], runtime=runtime)(x))
    result = target.measure(pong_graphs["int8"], pong_graphs["fp32"], x[:1])
    assert result.ratio is not None and 0 < result.ratio < 10
    assert result.facts.get("runtime", "onnxruntime") == runtime


def test_litert_refuses_what_it_cannot_express_in_one_line() -> None:
    """An op without a mapping (here Softmax) or a branch is named, with the way out."""
    from autoquant.runtimes import ConversionError

    x = helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    softmax = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["obs"], ["out"], name="sm")], "g",
                                                  [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConversionError) as info:
        get_runtime("litert").compile(softmax.SerializeToString())
    assert "Softmax" in str(info.value) and "onnxruntime" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConversionError, match="not an ONNX model"):
        get_runtime("litert").compile(b"\x00garbage")
