"""The graph builder: a plan and fp32 weights become the QDQ ONNX graph directly.

No torch module is rebuilt and no exporter traces anything. The steps, each in numpy
(the float forward of calibration runs through torch's functional ops):

1. **Placement** (``placement``): where the activation quantizers go so that onnxruntime
   fuses every integer layer into one kernel (QLinearConv / QGemm). The Brevitas model
   of ``_quant.quantize`` is made from the same placement, so both agree by construction.
2. **Kept channels** (``kept_channels``): the output channels with the largest L2 weight
   norm, and with them the matching inputs of the next layer (across Flatten).
3. **Calibration** (``calibrate_activations``): each activation quantizer's scale from the
   float activations of the pruned network on recorded states, with Brevitas' statistic
   (the 99.999th percentile of |x| per batch of 256, averaged over batches, divided by 128
   signed or 255 unsigned), so the scales are Brevitas' own.
4. **Weights** (``encode_weights``): per output channel symmetric narrow-range integers,
   ``scale = max|w| / (2^(b-1) - 1)``, rounded half to even; int32 biases at the
   accumulator's scale. Rounding that needs data (GPTQ) or fine-tuned weights come from
   the Brevitas model instead (``QuantizedLayer.from_brevitas``); the builder only
   serialises them. With ``bias_correction`` (``correct_bias``), each layer's bias then
   absorbs the mean output shift its rounded weights cause on the recorded states.
5. **Emission** (``emit``): the graph, laid out as Brevitas' QCDQ export lays it out
   (integer weights -> Clip -> DequantizeLinear, QuantizeLinear -> DequantizeLinear on
   activations, int32 biases -> DequantizeLinear), with the same node names per layer.

On the Pong Nature CNN this takes about 0.1 s where the Brevitas route took 1 - 13 s.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoquant.compress._plan import CompressionPlan, LayerSpec
from autoquant.errors import ExportError

__all__ = [
    "CALIBRATION_BATCH",
    "ActivationCache",
    "BuiltGraph",
    "QuantizedLayer",
    "Step",
    "build_graph",
    "emit",
    "input_scales",
    "calibrate_activations",
    "percentile_scale",
    "correct_bias",
    "encode_weights",
    "kept_channels",
    "placement",
    "pruned_net",
    "slice_net",
    "supported",
]

CALIBRATION_BATCH = 256  # states per calibration batch (Brevitas' statistic is per batch)
PERCENTILE = 99.999  # Brevitas' runtime-percentile activation scaling
SCALE_MIN = 1e-10  # Brevitas' scaling_min_val
OPSET = 17
IR_VERSION = 8
INPUT_NAME = "obs"
OUTPUT_NAME = "out"
_COMPUTE = (nn.Conv2d, nn.Linear)
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1


@dataclass(frozen=True, eq=False)
class Step:
    """One element of the quantized chain.

    ``kind``: "quant" (an activation quantizer, QuantIdentity), "layer" (a Conv2d/Linear),
    "relu" (a ReLU; ``quantized`` when its output is quantized, a QuantReLU), "flatten",
    or "op" (any other module, run in float).
    """

    kind: str
    name: str
    module: nn.Module | None = None
    signed: bool = False
    quantized: bool = False
    spec: LayerSpec | None = None
    head: bool = False


def placement(net: nn.Sequential, plan: CompressionPlan, *, input_nonnegative: bool) -> list[Step]:
    """The chain with its activation quantizers placed for fused integer kernels.

    An integer layer's input is quantized (a QuantReLU when a ReLU precedes it, else a
    QuantIdentity, also right after Flatten), and so is the output of every integer
    layer but the action head, which returns float.
    """
    children = list(net.named_children())
    compute = [i for i, (_, m) in enumerate(children) if isinstance(m, _COMPUTE)]
    head = compute[-1]

    def next_integer(i: int) -> bool:
        later = [j for j in compute if j > i]
        return bool(later) and plan.spec(children[later[0]][0]).integer

    steps: list[Step] = []
    nonneg = input_nonnegative  # is the running tensor known to be >= 0?
    quantized_in = False  # does the last step return a quantized tensor?
    pending_out: str | None = None  # an integer layer whose output still needs a quantizer

    def act_quant(name: str) -> None:
        nonlocal quantized_in
        steps.append(Step("quant", name, signed=not nonneg))
        quantized_in = True

    for i, (name, module) in enumerate(children):
        if pending_out is not None and not isinstance(module, nn.ReLU):
            act_quant(f"{pending_out}_out_quant")
            pending_out = None
        if isinstance(module, _COMPUTE):
            spec = plan.spec(name)
            if spec.weight_bits is not None:
                if spec.act_bits is not None and not quantized_in:
                    act_quant(f"{name}_in_quant")
                if spec.integer and i != head:
                    pending_out = name
            steps.append(Step("layer", name, module, spec=spec, head=i == head))
            quantized_in = False
            nonneg = False
        elif isinstance(module, nn.ReLU):
            quantize = pending_out is not None or next_integer(i)
            steps.append(Step("relu", name, module, quantized=quantize))
            quantized_in = quantize
            pending_out = None
            nonneg = True
        elif isinstance(module, nn.Flatten):
            steps.append(Step("flatten", name, module))
            quantized_in = False  # re-quantize after Flatten (else a float Gemm runs)
        else:
            steps.append(Step("op", name, module))
            quantized_in = False
            nonneg = isinstance(module, nn.Sigmoid)
    return steps


def supported(net: nn.Module) -> str | None:
    """None when the builder can emit ``net``; else what it cannot (the caller falls back
    to the Brevitas export)."""
    if not isinstance(net, nn.Sequential):
        return f"{type(net).__name__} is not an nn.Sequential chain"
    for name, module in net.named_children():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros" \
                    or isinstance(module.padding, str):
                return f"layer {name}: grouped, dilated, string-padded or non-zero-padded convolutions"
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                return f"layer {name}: Flatten other than (1, -1)"
        elif not isinstance(module, (nn.Linear, *_ACTIVATIONS)):
            return f"layer {name}: {type(module).__name__} is not a module the builder emits"
    return None


# --- kept channels --------------------------------------------------------------------------


def kept_channels(weight: torch.Tensor | np.ndarray, keep: int) -> list[int]:
    """The ``keep`` output channels with the largest L2 weight norm, in index order."""
    w = torch.as_tensor(np.asarray(weight) if not isinstance(weight, torch.Tensor) else weight.detach())
    norms = w.flatten(1).norm(dim=1)
    order = torch.argsort(norms, descending=True)
    return sorted(int(i) for i in order[:keep])


@dataclass(frozen=True, eq=False)
class _Sliced:
    """A layer's fp32 weight and bias sliced to the kept outputs and inputs."""

    weight: np.ndarray
    bias: np.ndarray | None


def _slice(net: nn.Sequential, plan: CompressionPlan) -> tuple[dict[str, _Sliced], dict[str, list[int]]]:
    """Each layer's weights sliced to the kept channels, and the kept output channels of
    every pruned layer. Layers are pruned in order, and a layer's norms are taken after
    the previous layer's pruning removed its inputs (as the dependency graph prunes)."""
    from autoquant.compress._prune import kept_count

    out: dict[str, _Sliced] = {}
    kept: dict[str, list[int]] = {}
    previous: tuple[str, int] | None = None  # (name, output channels before pruning)
    flatten_after_previous = False
    for name, module in net.named_children():
        if isinstance(module, nn.Flatten):
            flatten_after_previous = True
            continue
        if not isinstance(module, _COMPUTE):
            continue
        w = module.weight.detach().cpu().numpy().astype(np.float32, copy=False)
        b = module.bias.detach().cpu().numpy().astype(np.float32, copy=False) if module.bias is not None else None
        if previous is not None and previous[0] in kept:
            idx = np.asarray(kept[previous[0]], dtype=np.int64)
            channels = previous[1]
            if isinstance(module, nn.Linear) and flatten_after_previous:
                spatial = w.shape[1] // channels
                if spatial * channels != w.shape[1]:
                    raise ExportError(f"layer {name}: {w.shape[1]} inputs are not a whole number of the "
                                      f"previous layer's {channels} channels")
                cols = (idx[:, None] * spatial + np.arange(spatial)[None, :]).reshape(-1)
                w = w[:, cols]
            else:
                w = w[:, idx]
        ratio = plan.spec(name).prune_ratio
        if ratio > 0:
            channels = int(w.shape[0])
            keep = kept_count(channels, ratio, plan.channel_multiple)
            if keep < channels:
                kept[name] = kept_channels(w, keep)
                idx = np.asarray(kept[name], dtype=np.int64)
                w = w[idx]
                b = b[idx] if b is not None else None
        out[name] = _Sliced(np.ascontiguousarray(w), None if b is None else np.ascontiguousarray(b))
        previous = (name, int(module.weight.shape[0]))
        flatten_after_previous = False
    return out, kept


# --- calibration ----------------------------------------------------------------------------

_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.GELU)


def _abs_percentile(x: torch.Tensor) -> torch.Tensor:
    """Brevitas' AbsPercentile over the whole tensor: the k-th smallest |x|, 1-indexed."""
    k = int(math.floor(.01 * PERCENTILE * x.numel() + 0.5))
    return torch.kthvalue(x.abs().reshape(-1), k)[0]


class ActivationCache:
    """Float activations and their statistics, remembered across plans of one network.

    In calibration every quantizer is off, so the activations at a point of the chain
    depend only on which channels the layers before it keep. A search compresses many
    plans of one network on the same states: the statistic of the input quantizer is
    computed once, and the activations after a layer are kept for the plans that prune
    the layers up to it alike (the ``keep`` most recent, least recently used dropped).
    """

    def __init__(self, net: nn.Module, states: np.ndarray, *, keep: int = 8) -> None:
        self.net = net
        self.states = states
        self.keep = keep
        self._activations: OrderedDict[tuple[Any, ...], list[torch.Tensor]] = OrderedDict()
        self._stats: dict[tuple[Any, ...], list[torch.Tensor]] = {}

    def matches(self, net: nn.Module, states: np.ndarray) -> bool:
        return net is self.net and states is self.states

    def activations(self, key: tuple[Any, ...]) -> list[torch.Tensor] | None:
        found = self._activations.get(key)
        if found is not None:
            self._activations.move_to_end(key)
        return found

    def remember(self, key: tuple[Any, ...], batches: list[torch.Tensor]) -> None:
        self._activations[key] = batches
        self._activations.move_to_end(key)
        while len(self._activations) > self.keep:
            self._activations.popitem(last=False)

    def stats(self, key: tuple[Any, ...], batches: list[torch.Tensor]) -> list[torch.Tensor]:
        found = self._stats.get(key)
        if found is None:
            found = self._stats[key] = [torch.clamp(_abs_percentile(x), min=SCALE_MIN) for x in batches]
        return found


CALIBRATIONS = ("percentile", "mse")


MSE_GRID = 200  # clipping ranges tried, max|x| * k / MSE_GRID for k = 1 .. MSE_GRID
MSE_BINS = 8192  # histogram of |x| the error is computed from


def _mse_range(batches: Sequence[torch.Tensor], *, signed: bool) -> torch.Tensor:
    """The clipping range c (the scale is c / 128 signed, c / 255 unsigned, as the
    percentile's) whose quantization error over all the states' activations is least,
    among ``MSE_GRID`` fractions of max|x|. The error is computed from a histogram of |x|:
    (|x| - c)^2 beyond the range, x^2 for values that round to zero, and s^2 / 12 (rounding
    noise of step s) for the rest; exact zeros (ReLU's) cost nothing."""
    a = np.abs(torch.cat([b.reshape(-1) for b in batches]).numpy().astype(np.float64))
    top = float(a.max()) if a.size else 0.0
    if top <= SCALE_MIN:
        return torch.tensor(SCALE_MIN, dtype=torch.float32)
    counts, edges = np.histogram(a[a > 0], bins=MSE_BINS, range=(0.0, top))
    centers = (edges[:-1] + edges[1:]) / 2
    steps = 128.0 if signed else 255.0
    clips = top * np.arange(1, MSE_GRID + 1)[:, None] / MSE_GRID  # one row per clipping range
    step = clips / steps
    err = np.where(centers > clips, (centers - clips) ** 2,
                   np.where(centers < step / 2, centers ** 2, step * step / 12.0))
    return torch.tensor(float(clips[int(np.argmin(err @ counts)), 0]), dtype=torch.float32)


def calibrate_activations(steps: Sequence[Step], sliced: Mapping[str, _Sliced], states: np.ndarray,
                          *, kept: Mapping[str, Sequence[int]] | None = None, cache: ActivationCache | None = None,
                          batch_size: int = CALIBRATION_BATCH, method: str = "percentile") -> dict[str, float]:
    """Quantizer name -> scale, from the float activations of the pruned network.

    ``method="percentile"`` (Brevitas'): per batch the 99.999th percentile of |x|, clamped
    at 1e-10 and averaged over batches in float32 exactly as Brevitas' calibration mode
    does; then divided by 128 (signed int8) or 255 (uint8). ``"mse"``: the clipping range
    whose quantization error on all the states' activations is least (``_mse_range``).
    With a ``cache`` (made for the same unpruned network and states, and ``kept`` the
    channels the plan keeps) activations and percentile statistics are reused across plans.
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")
    if method != "percentile":
        cache = None  # the cache keeps percentile statistics only
    wanted = [s for s in steps if s.kind == "quant" or (s.kind == "relu" and s.quantized)]
    if not wanted:
        return {}
    last = max(i for i, s in enumerate(steps) if s in wanted)
    kept = kept or {}
    # The key of a point of the chain: each module passed, with the channels a layer keeps.
    keys: list[tuple[Any, ...]] = []
    key: tuple[Any, ...] = ()
    for step in steps:
        if step.kind != "quant":
            key = key + ((step.name, tuple(kept[step.name]) if step.name in kept else None),)
        keys.append(key)
    start = 0
    batches: list[torch.Tensor] | None = None
    if cache is not None:
        for i in range(last, -1, -1):  # resume from the latest activations remembered
            if steps[i].kind == "layer" and keys[i] in cache._activations \
                    and all(keys[j] in cache._stats for j, s in enumerate(steps[:i + 1]) if s in wanted):
                batches, start = cache.activations(keys[i]), i + 1
                break
    if batches is None:
        x_all = torch.as_tensor(np.ascontiguousarray(states, dtype=np.float32))
        batches = [x_all[i:i + batch_size] for i in range(0, len(x_all), batch_size)]
    per_batch: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i, step in enumerate(steps[:last + 1]):
            if i >= start:
                if step.kind == "layer":
                    w = torch.from_numpy(sliced[step.name].weight)
                    bias = sliced[step.name].bias
                    b = None if bias is None else torch.from_numpy(bias)
                    m = step.module
                    if isinstance(m, nn.Conv2d):
                        batches = [F.conv2d(x, w, b, stride=m.stride, padding=m.padding) for x in batches]
                    else:
                        batches = [F.linear(x, w, b) for x in batches]
                    if cache is not None:
                        cache.remember(keys[i], batches)
                elif step.kind == "flatten":
                    batches = [torch.flatten(x, 1) for x in batches]
                elif step.kind in ("relu", "op"):
                    inplace = bool(getattr(step.module, "inplace", False))  # never write into remembered tensors
                    batches = [step.module(x.clone() if inplace else x) for x in batches]  # type: ignore[misc]
            if step in wanted:
                if i < start:  # before the resumed point: only from the cache of statistics
                    assert cache is not None
                    per_batch[step.name] = cache._stats[keys[i]]
                elif method == "mse":
                    per_batch[step.name] = [_mse_range(batches, signed=step.signed)]
                elif cache is not None:
                    per_batch[step.name] = cache.stats(keys[i], batches)
                else:
                    per_batch[step.name] = [torch.clamp(_abs_percentile(x), min=SCALE_MIN) for x in batches]
    return {step.name: _scale_of(per_batch[step.name], signed=step.signed) for step in wanted}


def _scale_of(values: Sequence[torch.Tensor], *, signed: bool) -> float:
    """A quantizer's scale from its per-batch statistics: Brevitas' running average, in its
    order, divided by 128 (signed) or 255 (unsigned)."""
    total = torch.ones(()) * values[0]
    for counter, value in enumerate(values[1:], start=1):
        total.mul_(counter / (counter + 1))
        total.add_(value / (counter + 1))
    threshold = 128.0 if signed else 255.0
    return float(torch.clamp(total, min=SCALE_MIN) / threshold)


def percentile_scale(activations: np.ndarray, *, signed: bool, batch_size: int = CALIBRATION_BATCH) -> float:
    """The scale ``calibrate_activations``' percentile method gives a quantizer whose float
    inputs over the calibration states are ``activations`` (one row per state, in order):
    what re-calibrating a quantizer on new states computes."""
    x = torch.as_tensor(np.ascontiguousarray(activations, dtype=np.float32))
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    if not batches:
        raise ValueError("percentile_scale needs at least one state")
    return _scale_of([torch.clamp(_abs_percentile(b), min=SCALE_MIN) for b in batches], signed=signed)


# --- weights --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class QuantizedLayer:
    """A layer's weights as the graph stores them.

    Float layers: ``weight`` and ``bias`` float32. Quantized ones: ``weight`` int8 within
    ±``int_max``, ``weight_scale`` per output channel; ``bias`` int32 with ``bias_scale``
    when the layer runs an integer kernel, else float32.
    """

    weight: np.ndarray
    bias: np.ndarray | None
    weight_scale: np.ndarray | None = None
    bias_scale: np.ndarray | None = None
    int_max: int | None = None

    @classmethod
    def from_brevitas(cls, layer: nn.Module, bits: int) -> QuantizedLayer:
        """The integers a calibrated Brevitas layer holds (GPTQ-rounded or fine-tuned); its
        bias stays float here and becomes int32 at the input's scale when emitted."""
        with torch.no_grad():
            qw = layer.quant_weight()
            scale = qw.scale.detach().reshape(-1).numpy().astype(np.float32)
            ints = qw.int().detach().numpy()
        int_max = 2 ** (bits - 1) - 1
        bias = None if layer.bias is None else layer.bias.detach().numpy().astype(np.float32)
        return cls(weight=np.clip(ints, -int_max, int_max).astype(np.int8), bias=bias, weight_scale=scale,
                   int_max=int_max)


def encode_weights(sliced: _Sliced, spec: LayerSpec, input_scale: float | None) -> QuantizedLayer:
    """Round to nearest: ``scale = max|w| / int_max`` per output channel, integers half to even."""
    if spec.weight_bits is None:
        return QuantizedLayer(weight=sliced.weight, bias=sliced.bias)
    int_max = 2 ** (spec.weight_bits - 1) - 1
    w = sliced.weight
    flat = w.reshape(len(w), -1)
    absmax = np.abs(flat).max(axis=1)
    scale = (np.maximum(absmax, np.float32(SCALE_MIN)) / np.float32(int_max)).astype(np.float32)
    q = np.rint(flat / scale[:, None])
    np.clip(q, -int_max, int_max, out=q)
    return _with_bias(QuantizedLayer(weight=q.astype(np.int8).reshape(w.shape), bias=sliced.bias,
                                     weight_scale=scale, int_max=int_max), spec, input_scale)


def _with_bias(layer: QuantizedLayer, spec: LayerSpec, input_scale: float | None) -> QuantizedLayer:
    """An integer kernel's bias in int32 at ``input_scale * weight_scale``."""
    if layer.bias is None or not spec.integer or input_scale is None or layer.bias.dtype == np.int32:
        return layer
    bias_scale = (np.float32(input_scale) * layer.weight_scale).astype(np.float32)
    bq = np.rint(layer.bias.astype(np.float32) / bias_scale).astype(np.float64)
    np.clip(bq, _INT32_MIN, _INT32_MAX, out=bq)
    return QuantizedLayer(weight=layer.weight, bias=bq.astype(np.int32), weight_scale=layer.weight_scale,
                          bias_scale=bias_scale, int_max=layer.int_max)


# --- emission -------------------------------------------------------------------------------


class _Emitter:
    """Nodes and initializers, equal constants shared (as the exporter shares them)."""

    def __init__(self) -> None:
        import onnx
        from onnx import helper, numpy_helper

        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    def const(self, name: str, value: np.ndarray, *, share: bool = True) -> str:
        value = np.array(value, order="C")  # (ascontiguousarray would make scalars 1-d)
        key = (str(value.dtype), tuple(value.shape), value.tobytes())
        if share and key in self._consts:
            return self._consts[key]
        self.inits.append(self.numpy_helper.from_array(value, name=name))
        if share:
            self._consts[key] = name
        return name

    def node(self, op: str, name: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        out = output or f"{name}_output_0"
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _act_qdq(e: _Emitter, x: str, prefix: str, scale: float, signed: bool) -> str:
    s = e.const(f"{prefix}/export_handler/Constant_output_0", np.array(scale, dtype=np.float32))
    z = e.const(f"{prefix}/export_handler/Constant_1_output_0",
                np.array(0, dtype=np.int8 if signed else np.uint8))
    q = e.node("QuantizeLinear", f"{prefix}/export_handler/QuantizeLinear", [x, s, z])
    return e.node("DequantizeLinear", f"{prefix}/export_handler/DequantizeLinear", [q, s, z])


def _weight(e: _Emitter, name: str, layer: QuantizedLayer) -> tuple[str, str | None]:
    if layer.weight_scale is None:
        w = e.const(f"{name}.weight", layer.weight.astype(np.float32), share=False)
        b = e.const(f"{name}.bias", layer.bias.astype(np.float32), share=False) if layer.bias is not None else None
        return w, b
    prefix = f"/{name}/weight_quant/export_handler"
    channels = len(layer.weight_scale)
    ints = e.const(f"{prefix}/Constant_2_output_0", layer.weight.astype(np.int8), share=False)
    low = e.const(f"{prefix}/Constant_3_output_0", np.array(-layer.int_max, dtype=np.int8))
    high = e.const(f"{prefix}/Constant_4_output_0", np.array(layer.int_max, dtype=np.int8))
    clipped = e.node("Clip", f"{prefix}/Clip", [ints, low, high])
    scale = e.const(f"{prefix}/Constant_output_0", layer.weight_scale.astype(np.float32), share=False)
    zero = e.const(f"{prefix}/Constant_1_output_0", np.zeros(channels, dtype=np.int8))
    w = e.node("DequantizeLinear", f"{prefix}/DequantizeLinear", [clipped, scale, zero], axis=0)
    if layer.bias is None:
        return w, None
    if layer.bias_scale is None:
        return w, e.const(f"{name}.bias", layer.bias.astype(np.float32), share=False)
    bprefix = f"/{name}/bias_quant/export_handler"
    bints = e.const(f"{bprefix}/Constant_output_0", layer.bias.astype(np.int32), share=False)
    bscale = e.const(f"{bprefix}/Constant_1_output_0", layer.bias_scale.astype(np.float32), share=False)
    bzero = e.const(f"{bprefix}/Constant_2_output_0", np.zeros(channels, dtype=np.int32))
    b = e.node("DequantizeLinear", f"{bprefix}/DequantizeLinear", [bints, bscale, bzero], axis=0)
    return w, b


def _activation(e: _Emitter, x: str, name: str, module: nn.Module) -> str:
    prefix = f"/{name}"
    if isinstance(module, nn.ReLU):
        return e.node("Relu", f"{prefix}/Relu", [x])
    if isinstance(module, nn.Tanh):
        return e.node("Tanh", f"{prefix}/Tanh", [x])
    if isinstance(module, nn.Sigmoid):
        return e.node("Sigmoid", f"{prefix}/Sigmoid", [x])
    if isinstance(module, nn.ELU):
        return e.node("Elu", f"{prefix}/Elu", [x], alpha=float(module.alpha))
    if isinstance(module, nn.LeakyReLU):
        return e.node("LeakyRelu", f"{prefix}/LeakyRelu", [x], alpha=float(module.negative_slope))
    if isinstance(module, nn.SiLU):
        s = e.node("Sigmoid", f"{prefix}/Sigmoid", [x])
        return e.node("Mul", f"{prefix}/Mul", [x, s])
    if isinstance(module, nn.GELU):
        if module.approximate == "tanh":
            c = e.const(f"{prefix}/c", np.array(math.sqrt(2 / math.pi), dtype=np.float32))
            k = e.const(f"{prefix}/k", np.array(0.044715, dtype=np.float32))
            cube = e.node("Mul", f"{prefix}/Mul_cube", [e.node("Mul", f"{prefix}/Mul_sq", [x, x]), x])
            inner = e.node("Mul", f"{prefix}/Mul_c", [c, e.node("Add", f"{prefix}/Add_k",
                                                                  [x, e.node("Mul", f"{prefix}/Mul_k", [k, cube])])])
            t = e.node("Tanh", f"{prefix}/Tanh", [inner])
        else:
            r = e.const(f"{prefix}/r", np.array(1 / math.sqrt(2), dtype=np.float32))
            t = e.node("Erf", f"{prefix}/Erf", [e.node("Mul", f"{prefix}/Mul_r", [x, r])])
        one = e.const(f"{prefix}/one", np.array(1.0, dtype=np.float32))
        half = e.const(f"{prefix}/half", np.array(0.5, dtype=np.float32))
        return e.node("Mul", f"{prefix}/Mul", [e.node("Mul", f"{prefix}/Mul_half", [x, half]),
                                              e.node("Add", f"{prefix}/Add", [t, one])])
    raise ExportError(f"layer {name}: the builder cannot emit {type(module).__name__}")


def emit(steps: Sequence[Step], layers: Mapping[str, QuantizedLayer], scales: Mapping[str, float],
         input_shape: tuple[int, ...], metadata: Mapping[str, str] | None = None) -> bytes:
    """The QDQ ONNX model (batch dimension dynamic) of a placed, calibrated chain."""
    e = _Emitter()
    h = e.helper
    x = INPUT_NAME
    head = [layers[s.name] for s in steps if s.kind == "layer"][-1]
    for i, step in enumerate(steps):
        if step.kind == "quant":
            x = _act_qdq(e, x, f"/{step.name}/act_quant", scales[step.name], step.signed)
        elif step.kind == "relu":
            if step.quantized:
                x = e.node("Relu", f"/{step.name}/act_quant/activation_impl/Relu", [x])
                x = _act_qdq(e, x, f"/{step.name}/act_quant", scales[step.name], False)
            else:
                x = _activation(e, x, step.name, step.module)  # type: ignore[arg-type]
        elif step.kind == "flatten":
            x = e.node("Flatten", f"/{step.name}/Flatten", [x], axis=1)
        elif step.kind == "op":
            x = _activation(e, x, step.name, step.module)  # type: ignore[arg-type]
        else:
            layer = layers[step.name]
            w, b = _weight(e, step.name, layer)
            inputs = [x, w] + ([b] if b is not None else [])
            out = OUTPUT_NAME if i == len(steps) - 1 else None
            m = step.module
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                ph, pw = m.padding  # type: ignore[misc]
                x = e.node("Conv", f"/{step.name}/Conv", inputs, out, dilations=[1, 1], group=1,
                           kernel_shape=[kh, kw], pads=[ph, pw, ph, pw], strides=list(m.stride))
            else:
                x = e.node("Gemm", f"/{step.name}/Gemm", inputs, out, alpha=1.0, beta=1.0, transB=1)
    if x != OUTPUT_NAME:  # the chain ends in an activation: name its output
        e.nodes[-1].output[0] = OUTPUT_NAME
    fp = e.onnx.TensorProto.FLOAT
    graph = h.make_graph(
        e.nodes, "autoquant", [h.make_tensor_value_info(INPUT_NAME, fp, ["batch", *input_shape])],
        [h.make_tensor_value_info(OUTPUT_NAME, fp, ["batch", int(head.weight.shape[0])])], initializer=e.inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="autoquant")
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


# --- the whole build --------------------------------------------------------------------------


@dataclass(eq=False)
class BuiltGraph:
    """What ``build_graph`` made: the ONNX bytes and everything that went into them."""

    onnx: bytes
    steps: list[Step]
    kept: dict[str, list[int]]
    layers: dict[str, QuantizedLayer]
    scales: dict[str, float]
    sliced: dict[str, _Sliced] = field(default_factory=dict)  # fp32 weights cut to the kept channels
    seconds: dict[str, float] = field(default_factory=dict)


def input_scales(steps: Sequence[Step], scales: Mapping[str, float]) -> dict[str, float | None]:
    """Layer name -> the scale of its quantized input (None where the input is float)."""
    out: dict[str, float | None] = {}
    current: float | None = None
    for step in steps:
        if step.kind == "quant" or (step.kind == "relu" and step.quantized):
            current = scales[step.name]
        elif step.kind == "layer":
            out[step.name] = current
            current = None
        elif step.kind != "flatten":
            current = None
    return out


def build_graph(net: nn.Sequential, input_shape: tuple[int, ...], plan: CompressionPlan, states: np.ndarray,
                *, metadata: Mapping[str, str] | None = None,
                weights: Mapping[str, QuantizedLayer] | None = None,
                scales: Mapping[str, float] | None = None, cache: ActivationCache | None = None,
                bias_correction: bool = False, calibration: str = "percentile") -> BuiltGraph:
    """Plan + fp32 network + recorded (prepared) states -> the QDQ graph, without Brevitas.

    ``weights`` and ``scales`` replace the round-to-nearest weights and the calibrated
    activation scales where given (GPTQ or fine-tuning made them in Brevitas). A ``cache``
    made for this ``net`` and these ``states`` (the same objects) makes calibration reuse
    what earlier builds computed. ``bias_correction``: see ``correct_bias`` (applied to
    every layer with quantized weights, after the weights are chosen). ``calibration``:
    how activation ranges are chosen (``calibrate_activations``' ``method``).
    """
    import time

    why = supported(net)
    if why is not None:
        raise ExportError(f"the graph builder cannot emit this network: {why}")
    t0 = time.perf_counter()
    states = np.asarray(states, dtype=np.float32)
    steps = placement(net, plan, input_nonnegative=bool(states.min() >= 0))
    sliced, kept = _slice(net, plan)
    t1 = time.perf_counter()
    if cache is not None and not cache.matches(net, states):
        cache = None  # made for another network or other states: not this build's
    found = dict(scales) if scales is not None else calibrate_activations(steps, sliced, states, kept=kept,
                                                                          cache=cache, method=calibration)
    t2 = time.perf_counter()
    inputs = input_scales(steps, found)
    layers: dict[str, QuantizedLayer] = {}
    for step in steps:
        if step.kind != "layer":
            continue
        spec = step.spec or LayerSpec()
        given = (weights or {}).get(step.name)
        if given is not None:
            layers[step.name] = _with_bias(given, spec, inputs[step.name])
        else:
            layers[step.name] = encode_weights(sliced[step.name], spec, inputs[step.name])
    if bias_correction:
        specs = {step.name: step.spec or LayerSpec() for step in steps if step.kind == "layer"}
        layers = correct_bias(net, sliced, layers, states, specs, inputs)
    model = emit(steps, layers, found, input_shape, metadata)
    t3 = time.perf_counter()
    return BuiltGraph(onnx=model, steps=steps, kept=kept, layers=layers, scales=found, sliced=sliced,
                      seconds={"slice": t1 - t0, "calibrate": t2 - t1, "emit": t3 - t2})


def correct_bias(net: nn.Sequential, sliced: Mapping[str, _Sliced], layers: Mapping[str, QuantizedLayer],
                 states: np.ndarray, specs: Mapping[str, LayerSpec],
                 inputs: Mapping[str, float | None]) -> dict[str, QuantizedLayer]:
    """Empirical bias correction (Nagel et al. 2019, "Data-free quantization", section 4.2,
    with data): each layer with quantized weights gets its bias minus the mean shift of its
    output, per output channel, that its dequantized weights cause on the float input it
    sees in the pruned fp32 network on ``states``. Activations stay float here: the shift
    is the weights' alone. A layer without a bias gets one.

    Measured on the +17 Pong DQN (``benchmarks/int8_recovery.md``): an all-int8 pruned
    plan in LiteRT's numerics went from 0.894 to 0.989 retention over the 30 no-op starts.
    """
    fp32, rounded = pruned_net(net, sliced), pruned_net(net, sliced, layers)
    targets = [name for name, layer in layers.items() if layer.weight_scale is not None]
    if not targets:
        return dict(layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(targets, 0)
    with torch.no_grad():
        for start in range(0, len(states), CALIBRATION_BATCH):
            h = torch.from_numpy(np.ascontiguousarray(states[start:start + CALIBRATION_BATCH]))
            for (name, m), (_, mq) in zip(fp32.named_children(), rounded.named_children()):
                y = m(h)
                if name in counts:
                    diff = (mq(h) - y).double()
                    dims = (0, 2, 3) if diff.ndim == 4 else (0,)
                    sums[name] = sums.get(name, 0) + diff.sum(dim=dims)
                    counts[name] += diff.numel() // diff.shape[1]
                h = y
    out = dict(layers)
    for name in targets:
        layer, float_bias = layers[name], sliced[name].bias
        shift = (sums[name] / counts[name]).numpy()
        base = np.zeros(len(shift)) if float_bias is None else float_bias.astype(np.float64)
        plain = QuantizedLayer(weight=layer.weight, bias=(base - shift).astype(np.float32),
                               weight_scale=layer.weight_scale, int_max=layer.int_max)
        out[name] = _with_bias(plain, specs[name], inputs[name])
    return out


def pruned_net(net: nn.Sequential, sliced: Mapping[str, Any],
               layers: Mapping[str, QuantizedLayer] | None = None) -> nn.Sequential:
    """A plain float copy of ``net`` with each layer cut to its kept channels; with ``layers``,
    weights are their dequantized values (``int * scale``), biases stay float."""
    from collections import OrderedDict

    out: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in net.named_children():
        if not isinstance(module, _COMPUTE):
            out[name] = module
            continue
        w, b = sliced[name].weight, sliced[name].bias
        q = (layers or {}).get(name)
        if q is not None and q.weight_scale is not None:
            scale = q.weight_scale.reshape((-1,) + (1,) * (q.weight.ndim - 1))
            w = (q.weight.astype(np.float32) * scale).astype(np.float32)
        if isinstance(module, nn.Conv2d):
            plain: nn.Module = nn.Conv2d(w.shape[1], w.shape[0], module.kernel_size, stride=module.stride,
                                         padding=module.padding, bias=b is not None)
        else:
            plain = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            plain.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            if b is not None:
                plain.bias.copy_(torch.from_numpy(b))
        out[name] = plain
    model = nn.Sequential(out).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def slice_net(net: nn.Sequential, plan: CompressionPlan) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Public face of the slicing step: (layer -> sliced fp32 weights, kept output channels)."""
    return _slice(net, plan)
