"""The graph builder's ONNX chain as a LiteRT (.tflite) flatbuffer, written directly.

No TensorFlow and no converter tracing: the ONNX graph autoquant builds (or exports in
fp32) is a chain of Conv / Gemm / activations / Flatten with QuantizeLinear and
DequantizeLinear marking what is integer. Each piece maps to one LiteRT builtin, and the
flatbuffer is written with the schema module LiteRT itself ships
(``ai_edge_litert.schema_py_generated``), so the file follows the runtime it runs on.

What maps to what:

- ``QuantizeLinear -> DequantizeLinear`` on an activation: an int8 tensor with that scale.
  uint8 with zero point z becomes int8 with zero point z - 128 (the same real values).
- ``Conv`` / ``Gemm`` whose input is such a tensor, whose weights are constant integers
  (per output channel, zero point 0) and whose output (after an optional Relu) is
  quantized again: one int8 CONV_2D / FULLY_CONNECTED with the Relu fused and the int32
  bias at ``input scale * weight scale``, as onnxruntime's QLinearConv / QGemm compute it.
- The same layer with a float output (the action head) runs in float on the dequantized
  input and the dequantized weights: the values onnxruntime's float-output QGemm returns.
- Float layers stay float; a quantizer between float and int8 is a QUANTIZE or a
  DEQUANTIZE.
- Layout: LiteRT convolutions are NHWC. The model's input is NHWC (the session moves the
  axes of the NCHW observation before feeding it) and the first fully connected layer
  after Flatten has its weight columns permuted from (C, H, W) to (H, W, C) order.
- The batch dimension is dynamic (shape signature -1).

Anything else (other ops, branches, grouped convolutions) is refused with the op named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoquant.errors import ExportError

__all__ = ["TFLITE_INPUT_LAYOUT", "ConversionError", "onnx_to_tflite"]

TFLITE_INPUT_LAYOUT = "NHWC"
_REL = 1e-6  # two scales this close are the same quantizer


class ConversionError(ExportError):
    """The ONNX graph has something the LiteRT writer cannot express."""


@dataclass
class _Value:
    """An ONNX tensor as the writer knows it.

    kind: "const" (array), "qconst" (integers, scale, zero point, axis), "float" (a float
    tflite tensor), "quant" (an int8 tflite tensor, scale, zero point), "deq" (the float
    view of a quant value: a DEQUANTIZE is written only if a float consumer needs it).
    ``shape`` is the tflite shape (NHWC for images); ``chw`` the (C, H, W) a flattened
    NHWC tensor came from (for the next layer's weight columns).
    """

    kind: str
    array: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero: np.ndarray | None = None
    axis: int = 0
    tensor: int = -1
    shape: tuple[int, ...] = ()
    chw: tuple[int, int, int] | None = None
    base: _Value | None = None  # deq: the quant value it views
    materialized: int | None = None  # deq: its float tensor once written


@dataclass
class _Writer:
    schema: Any
    tensors: list[Any] = field(default_factory=list)
    buffers: list[Any] = field(default_factory=list)
    operators: list[Any] = field(default_factory=list)
    codes: dict[tuple[int, int], int] = field(default_factory=dict)
    code_list: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.buffers.append(self.schema.BufferT())  # buffer 0: the empty sentinel

    def tensor(self, name: str, shape: tuple[int, ...], dtype: str, *, data: np.ndarray | None = None,
               scale: np.ndarray | float | None = None, zero: np.ndarray | int | None = None,
               axis: int = 0, dynamic_batch: bool = False) -> int:
        s = self.schema
        t = s.TensorT()
        t.name = name
        t.shape = np.asarray(shape, dtype=np.int32)
        if dynamic_batch:
            t.shapeSignature = np.asarray((-1, *shape[1:]), dtype=np.int32)
        t.type = {"float32": s.TensorType.FLOAT32, "int8": s.TensorType.INT8,
                  "int32": s.TensorType.INT32}[dtype]
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
            q.zeroPoint = np.atleast_1d(np.asarray(zero if zero is not None else 0, dtype=np.int64))
            if len(q.zeroPoint) != len(q.scale):
                q.zeroPoint = np.full(len(q.scale), int(q.zeroPoint[0]), dtype=np.int64)
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: str, inputs: list[int], outputs: list[int], *, version: int = 1,
           options: tuple[str, Any] | None = None) -> None:
        s = self.schema
        builtin = getattr(s.BuiltinOperator, code)
        key = (builtin, version)
        if key not in self.codes:
            c = s.OperatorCodeT()
            c.builtinCode = builtin
            c.deprecatedBuiltinCode = min(builtin, 127)
            c.version = version
            self.codes[key] = len(self.code_list)
            self.code_list.append(c)
        o = s.OperatorT()
        o.opcodeIndex = self.codes[key]
        o.inputs = np.asarray(inputs, dtype=np.int32)
        o.outputs = np.asarray(outputs, dtype=np.int32)
        if options is not None:
            o.builtinOptionsType = getattr(s.BuiltinOptions, options[0])
            o.builtinOptions = options[1]
        self.operators.append(o)

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        s = self.schema
        g = s.SubGraphT()
        g.tensors, g.operators = self.tensors, self.operators
        g.inputs = np.asarray(inputs, dtype=np.int32)
        g.outputs = np.asarray(outputs, dtype=np.int32)
        g.name = "main"
        m = s.ModelT()
        m.version = 3
        m.description = description
        m.subgraphs = [g]
        m.buffers = self.buffers
        m.operatorCodes = self.code_list
        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise ConversionError("writing a .tflite model needs LiteRT: pip install 'autoquant[litert]' "
                              "(the ai-edge-litert wheel)") from exc
    return schema_py_generated


def _same(a: np.ndarray | float, b: np.ndarray | float) -> bool:
    a, b = np.atleast_1d(np.asarray(a, np.float64)), np.atleast_1d(np.asarray(b, np.float64))
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= _REL * np.maximum(np.abs(a), np.abs(b))))


def _int8_zero(zero: np.ndarray) -> int:
    """An activation's zero point in int8 (uint8 z is int8 z - 128)."""
    z = np.asarray(zero)
    if z.size != 1:
        raise ConversionError("an activation quantizer with a zero point per channel is not expressible")
    return int(z.reshape(-1)[0]) - (128 if z.dtype == np.uint8 else 0)


def onnx_to_tflite(model: bytes, *, description: str = "autoquant") -> bytes:
    """The LiteRT flatbuffer of an ONNX policy chain (see the module's docstring)."""
    import onnx
    from onnx import numpy_helper

    s = _schema()
    try:
        proto = onnx.load_from_string(model)
    except Exception as exc:  # noqa: BLE001 - a protobuf error of any kind
        raise ConversionError(f"not an ONNX model ({type(exc).__name__})") from exc
    graph = proto.graph
    w = _Writer(s)
    values: dict[str, _Value] = {i.name: _Value("const", array=numpy_helper.to_array(i)) for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    real_inputs = [i for i in graph.input if i.name not in values]
    if len(real_inputs) != 1 or len(graph.output) != 1:
        raise ConversionError("the LiteRT writer takes a chain with one input and one output")
    dims = [d.dim_value for d in real_inputs[0].type.tensor_type.shape.dim][1:]
    if not dims or any(d <= 0 for d in dims):
        raise ConversionError(f"input {real_inputs[0].name!r} needs a fixed shape after the batch dimension")
    shape = (1, dims[1], dims[2], dims[0]) if len(dims) == 3 else (1, *dims)
    x_in = w.tensor(real_inputs[0].name, shape, "float32", dynamic_batch=True)
    values[real_inputs[0].name] = _Value("float", tensor=x_in, shape=shape)
    fused: set[int] = set()  # nodes (by id) folded into an earlier one

    def attrs(node: Any) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def only_consumer(name: str) -> Any | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 else None

    def as_float(v: _Value, name: str) -> int:
        if v.kind == "float":
            return v.tensor
        if v.kind == "deq":
            if v.materialized is None:
                assert v.base is not None
                v.materialized = w.tensor(f"{name}/dequantized", v.shape, "float32", dynamic_batch=True)
                w.op("DEQUANTIZE", [v.base.tensor], [v.materialized], version=2)
            return v.materialized
        raise ConversionError(f"{name}: a constant where an activation was expected")

    def const_array(v: _Value) -> np.ndarray:
        if v.kind == "const":
            assert v.array is not None
            return v.array.astype(np.float32)
        if v.kind == "qconst":
            assert v.array is not None and v.scale is not None and v.zero is not None
            shape = [1] * v.array.ndim
            if v.scale.size > 1:
                shape[v.axis] = -1
            return ((v.array.astype(np.float32) - v.zero.astype(np.float32).reshape(shape))
                    * v.scale.astype(np.float32).reshape(shape)).astype(np.float32)
        raise ConversionError("a layer's weights must be constants")

    def output_quantizer(name: str) -> tuple[Any | None, str, list[Any]]:
        """After a layer: (the QuantizeLinear its output meets, fused activation, nodes passed)."""
        passed: list[Any] = []
        activation = "NONE"
        nxt = only_consumer(name)
        if nxt is not None and nxt.op_type == "Relu":
            activation, passed = "RELU", [nxt]
            nxt = only_consumer(nxt.output[0])
        if nxt is not None and nxt.op_type == "QuantizeLinear":
            return nxt, activation, passed
        return None, activation, passed

    def layer(node: Any) -> None:
        a = attrs(node)
        conv = node.op_type == "Conv"
        x, weight = values[node.input[0]], values[node.input[1]]
        bias = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        if conv:
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise ConversionError(f"{node.name}: grouped or dilated convolutions are not written")
            if len(x.shape) != 4:
                raise ConversionError(f"{node.name}: a convolution of a {len(x.shape)}-d tensor")
        else:
            if a.get("transA", 0) or not a.get("transB", 0) or a.get("alpha", 1.0) != 1.0 \
                    or a.get("beta", 1.0) != 1.0:
                raise ConversionError(f"{node.name}: only Gemm(x, W^T) + b is written")
        quant_after, activation, passed = output_quantizer(node.output[0])
        integer = (x.kind == "deq" and weight.kind == "qconst" and quant_after is not None
                   and (bias is None or bias.kind in ("qconst", "const")))
        wf_shape: tuple[int, ...]
        if weight.kind == "qconst":
            assert weight.array is not None and weight.zero is not None
            ints = np.asarray(weight.array)
            if np.any(weight.zero != 0) or ints.dtype != np.int8:
                integer = False
        # weights in tflite layout
        raw = weight.array if integer else const_array(weight)
        assert raw is not None
        if conv:
            raw = np.transpose(raw, (0, 2, 3, 1))  # OIHW -> OHWI
        elif x.chw is not None:  # columns of an NHWC flatten
            c, h, ww = x.chw
            raw = raw.reshape(len(raw), c, h, ww).transpose(0, 2, 3, 1).reshape(len(raw), -1)
        wf_shape = tuple(int(d) for d in raw.shape)
        out_channels = wf_shape[0]
        if conv:
            kh, kw = wf_shape[1], wf_shape[2]
            sh, sw = a.get("strides", [1, 1])
            pads = list(a.get("pads", [0, 0, 0, 0]))
            n, h, width, _ = x.shape
            oh = (h + pads[0] + pads[2] - kh) // sh + 1
            ow = (width + pads[1] + pads[3] - kw) // sw + 1
            out_shape: tuple[int, ...] = (n, oh, ow, out_channels)
        else:
            out_shape = (x.shape[0], out_channels)
        if integer:
            assert x.base is not None and x.base.scale is not None and weight.scale is not None
            s_in = float(x.base.scale.reshape(-1)[0])
            s_w = np.asarray(weight.scale, dtype=np.float32).reshape(-1)
            if s_w.size == 1:
                s_w = np.full(out_channels, s_w[0], dtype=np.float32)
            w_idx = w.tensor(f"{node.name}/weight", wf_shape, "int8", data=raw.astype(np.int8), scale=s_w,
                             zero=np.zeros(out_channels, np.int64), axis=0)
            bias_scale = (np.float32(s_in) * s_w).astype(np.float32)
            if bias is None:
                b_ints = np.zeros(out_channels, np.int32)
            elif bias.kind == "qconst" and bias.scale is not None and _same(bias.scale, bias_scale) \
                    and bias.array is not None and bias.array.dtype == np.int32:
                b_ints = bias.array.astype(np.int32)
            else:
                b_ints = np.clip(np.rint(const_array(bias) / bias_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            b_idx = w.tensor(f"{node.name}/bias", (out_channels,), "int32", data=b_ints, scale=bias_scale,
                             zero=np.zeros(out_channels, np.int64), axis=0)
            assert quant_after is not None
            s_out = values[quant_after.input[1]].array
            z_out = values[quant_after.input[2]].array if len(quant_after.input) > 2 else np.array(0, np.uint8)
            assert s_out is not None and z_out is not None
            zero_out = _int8_zero(z_out)
            y = w.tensor(quant_after.output[0], out_shape, "int8", scale=float(s_out), zero=zero_out,
                         dynamic_batch=True)
            x_idx = x.base.tensor
            result = _Value("quant", tensor=y, shape=out_shape, scale=np.asarray([s_out], np.float32),
                            zero=np.asarray([zero_out]))
            fused.update(id(n) for n in passed)
            fused.add(id(quant_after))
            target = quant_after.output[0]
            dtype = "int8"
        else:
            x_idx = as_float(x, node.name)
            w_idx = w.tensor(f"{node.name}/weight", wf_shape, "float32", data=raw.astype(np.float32))
            b_idx = -1 if bias is None else w.tensor(f"{node.name}/bias", (out_channels,), "float32",
                                                     data=const_array(bias))
            target = passed[-1].output[0] if passed else node.output[0]
            y = w.tensor(target, out_shape, "float32", dynamic_batch=True)
            fused.update(id(n) for n in passed)
            result = _Value("float", tensor=y, shape=out_shape)
            dtype = "float32"
        fuse = getattr(s.ActivationFunctionType, activation)
        if conv:
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if any(pads):
                p = w.tensor(f"{node.name}/pads", (4, 2), "int32",
                             data=np.asarray([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], np.int32))
                n, h, width, c = x.shape
                padded_shape = (n, h + pads[0] + pads[2], width + pads[1] + pads[3], c)
                src = w.tensor(f"{node.name}/padded", padded_shape, dtype,
                               **({"scale": x.base.scale, "zero": x.base.zero} if integer and x.base else {}),
                               dynamic_batch=True)
                w.op("PAD", [x_idx, p], [src], version=2 if integer else 1,
                     options=("PadOptions", s.PadOptionsT()))
                x_idx = src
            opt = s.Conv2DOptionsT()
            opt.padding = s.Padding.VALID
            opt.strideH, opt.strideW = int(sh), int(sw)
            opt.dilationHFactor = opt.dilationWFactor = 1
            opt.fusedActivationFunction = fuse
            w.op("CONV_2D", [x_idx, w_idx, b_idx], [y], version=3 if integer else 1,
                 options=("Conv2DOptions", opt))
        else:
            opt = s.FullyConnectedOptionsT()
            opt.fusedActivationFunction = fuse
            opt.weightsFormat = s.FullyConnectedOptionsWeightsFormat.DEFAULT
            opt.keepNumDims = False
            w.op("FULLY_CONNECTED", [x_idx, w_idx, b_idx], [y], version=4 if integer else 1,
                 options=("FullyConnectedOptions", opt))
        values[target] = result

    for node in graph.node:
        if id(node) in fused:
            continue
        op = node.op_type
        if op == "Constant":
            values[node.output[0]] = _Value("const", array=numpy_helper.to_array(attrs(node)["value"]))
        elif op == "Clip" and values.get(node.input[0], _Value("x")).kind == "const":
            lo = values[node.input[1]].array if len(node.input) > 1 and node.input[1] else None
            hi = values[node.input[2]].array if len(node.input) > 2 and node.input[2] else None
            src = values[node.input[0]].array
            assert src is not None
            values[node.output[0]] = _Value("const", array=np.clip(src, lo, hi).astype(src.dtype))
        elif op == "DequantizeLinear":
            src = values[node.input[0]]
            scale = values[node.input[1]].array
            zero = values[node.input[2]].array if len(node.input) > 2 and node.input[2] else None
            assert scale is not None
            if src.kind == "const":
                assert src.array is not None
                values[node.output[0]] = _Value(
                    "qconst", array=src.array, scale=np.asarray(scale, np.float32).reshape(-1),
                    zero=np.zeros(1, src.array.dtype) if zero is None else np.asarray(zero).reshape(-1),
                    axis=int(attrs(node).get("axis", 1)))
            elif src.kind == "quant":
                values[node.output[0]] = _Value("deq", base=src, shape=src.shape, chw=src.chw)
            else:
                raise ConversionError(f"{node.name}: DequantizeLinear of a float tensor")
        elif op == "QuantizeLinear":
            src = values[node.input[0]]
            scale = values[node.input[1]].array
            zero_raw = values[node.input[2]].array if len(node.input) > 2 and node.input[2] else np.array(0, np.uint8)
            assert scale is not None and zero_raw is not None
            if np.asarray(scale).size != 1:
                raise ConversionError(f"{node.name}: an activation quantized per channel")
            zero = _int8_zero(zero_raw)
            if src.kind == "deq" and src.base is not None and _same(src.base.scale, scale) \
                    and int(src.base.zero[0]) == zero:  # type: ignore[index]
                values[node.output[0]] = src.base
                continue
            y = w.tensor(node.output[0], src.shape, "int8", scale=float(scale), zero=zero, dynamic_batch=True)
            if src.kind == "deq" and src.base is not None:
                w.op("QUANTIZE", [src.base.tensor], [y], version=2)  # int8 -> int8: requantize
            else:
                w.op("QUANTIZE", [as_float(src, node.name)], [y], version=1)
            values[node.output[0]] = _Value("quant", tensor=y, shape=src.shape, chw=src.chw,
                                            scale=np.asarray([scale], np.float32), zero=np.asarray([zero]))
        elif op in ("Conv", "Gemm"):
            layer(node)
        elif op in ("Flatten", "Reshape"):
            src = values[node.input[0]]
            if op == "Flatten" and attrs(node).get("axis", 1) != 1:
                raise ConversionError(f"{node.name}: Flatten other than at axis 1")
            if op == "Reshape":
                target_shape = values[node.input[1]].array
                if target_shape is None or len(target_shape) != 2 or int(target_shape[0]) not in (0, -1, 1):
                    raise ConversionError(f"{node.name}: only a flattening Reshape is written")
            if len(src.shape) == 2:
                values[node.output[0]] = src
                continue
            n, h, width, c = src.shape if len(src.shape) == 4 else (src.shape[0], 1, 1, int(np.prod(src.shape[1:])))
            flat = (n, h * width * c)
            base = src.base if src.kind == "deq" else src
            assert base is not None
            integer = base.kind == "quant"
            shape_t = w.tensor(f"{node.name}/shape", (2,), "int32", data=np.asarray([-1, flat[1]], np.int32))
            y = w.tensor(node.output[0], flat, "int8" if integer else "float32",
                         **({"scale": base.scale, "zero": base.zero} if integer else {}), dynamic_batch=True)
            opt = s.ReshapeOptionsT()
            opt.newShape = np.asarray([-1, flat[1]], np.int32)
            w.op("RESHAPE", [base.tensor if integer else as_float(src, node.name), shape_t], [y],
                 options=("ReshapeOptions", opt))
            chw = (c, h, width) if len(src.shape) == 4 else None
            flat_value = _Value("quant" if integer else "float", tensor=y, shape=flat, chw=chw,
                                scale=base.scale if integer else None, zero=base.zero if integer else None)
            values[node.output[0]] = _Value("deq", base=flat_value, shape=flat, chw=chw) if integer else flat_value
        elif op in ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu"):
            src = values[node.input[0]]
            code = {"Relu": "RELU", "Tanh": "TANH", "Sigmoid": "LOGISTIC", "LeakyRelu": "LEAKY_RELU",
                    "Elu": "ELU"}[op]
            y = w.tensor(node.output[0], src.shape, "float32", dynamic_batch=True)
            options = None
            if op == "LeakyRelu":
                opt = s.LeakyReluOptionsT()
                opt.alpha = float(attrs(node).get("alpha", 0.01))
                options = ("LeakyReluOptions", opt)
            elif op == "Elu" and float(attrs(node).get("alpha", 1.0)) != 1.0:
                raise ConversionError(f"{node.name}: ELU with alpha != 1")
            w.op(code, [as_float(src, node.name)], [y], options=options)
            values[node.output[0]] = _Value("float", tensor=y, shape=src.shape, chw=src.chw)
        elif op == "Mul" and all(values.get(i, _Value("x")).kind in ("float", "deq") for i in node.input):
            a_, b_ = (values[i] for i in node.input)
            y = w.tensor(node.output[0], a_.shape, "float32", dynamic_batch=True)
            w.op("MUL", [as_float(a_, node.name), as_float(b_, node.name)], [y],
                 options=("MulOptions", s.MulOptionsT()))
            values[node.output[0]] = _Value("float", tensor=y, shape=a_.shape, chw=a_.chw)
        else:
            raise ConversionError(f"{node.name or op}: ONNX op {op} has no LiteRT mapping in autoquant; "
                                  "use the onnxruntime runtime for this network")
    out_name = graph.output[0].name
    if out_name not in values:
        raise ConversionError(f"the graph's output {out_name!r} was folded away")
    result = values[out_name]
    out_tensor = as_float(result, "output") if result.kind in ("deq", "float") else None
    if out_tensor is None:
        raise ConversionError("the graph's output is neither float nor a dequantized tensor")
    w.tensors[out_tensor].name = out_name
    return w.finish([x_in], [out_tensor], description)
