"""Recipes: how a layer's graph initializers follow from its fp32 weights, in numpy.

A compressed network's QDQ graph (kept channels, activation quantizers, operators) is
fixed by its plan; its weight initializers are a pure function of the fp32 weights:
per-output-channel symmetric narrow-range integers with ``scale = max|w| / int_max``,
rounded half to even, int32 biases at the accumulator's scale, all sliced to the kept
channels. ``recipe_graph`` reads that layout from an exported graph and gives each
layer's initializers a slot of its own; ``encode_layer`` recomputes a layer's slots from
weights, exactly as the exporter wrote them for round-to-nearest. ActorQ applies it to
every broadcast of learner weights; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.errors import ActorQError

__all__ = ["EXTERNAL_LOCATION", "LayerRecipe", "RecipeGraph", "SlotSpec", "as_array", "encode_layer", "recipe_graph"]

_SCALE_MIN = np.float32(1e-10)  # Brevitas' scaling_min_val: an all-zero channel keeps a finite scale
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1


@dataclass(frozen=True)
class SlotSpec:
    """One graph initializer that each broadcast supplies."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SlotSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(v) for v in data["shape"]))


@dataclass(frozen=True, eq=False)
class LayerRecipe:
    """How one layer's initializers follow from the learner's weights."""

    name: str
    type: str  # "conv" | "linear"
    weight_key: str
    bias_key: str | None
    weight_shape: tuple[int, ...]  # full, unpruned, as in the learner
    bias_shape: tuple[int, ...] | None
    weight_bits: int | None
    act_bits: int | None
    int_max: int | None  # weights clipped to ±int_max; None: a float layer
    input_scale: float | None  # the input activation's scale, for int32 biases
    kept_out: np.ndarray | None  # kept output channels (None: all)
    kept_in: np.ndarray | None  # kept input columns of the learner's weight (None: all)
    slots: dict[str, SlotSpec]  # role (weight, weight_scale, bias, bias_scale) -> slot


def as_array(value: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like -> float32 numpy array, without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def encode_layer(recipe: LayerRecipe, weight: np.ndarray, bias: np.ndarray | None) -> dict[str, np.ndarray]:
    """One layer's graph initializers (slot name -> array) from its full fp32 weight and bias.

    The weight is sliced to the kept output channels and to the inputs that survive the
    previous layer's pruning; quantized layers get ``scale = max(|w|) / (2^(b-1) - 1)``
    per output channel, integers rounded half to even and clipped to ``±(2^(b-1) - 1)``,
    and, where the layer runs an integer kernel, ``bias_int = round(bias / (s_in * scale))``.
    """
    w = weight
    if recipe.kept_out is not None:
        w = np.take(w, recipe.kept_out, axis=0)
    if recipe.kept_in is not None:
        w = np.take(w, recipe.kept_in, axis=1)
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = None
    if bias is not None:
        b = bias if recipe.kept_out is None else np.take(bias, recipe.kept_out, axis=0)
        b = np.ascontiguousarray(b, dtype=np.float32)
    slots = recipe.slots
    out: dict[str, np.ndarray] = {}
    if recipe.int_max is None:  # a float layer: its sliced weights as they are
        out[slots["weight"].name] = w
        if b is not None and "bias" in slots:
            out[slots["bias"].name] = b
        return out
    flat = w.reshape(len(w), -1)
    absmax = np.maximum(flat.max(axis=1), -flat.min(axis=1))  # max |w| without an |w| copy
    scale = np.maximum(absmax, _SCALE_MIN) / np.float32(recipe.int_max)
    if not np.all(np.isfinite(scale)):
        raise ActorQError(f"the learner's weights of layer {recipe.name} ({recipe.weight_key}) are not finite: "
                          "the learner diverged; do not broadcast these weights")
    q = np.rint(flat / scale[:, None])
    np.clip(q, -recipe.int_max, recipe.int_max, out=q)
    out[slots["weight"].name] = q.astype(np.int8).reshape(w.shape)
    out[slots["weight_scale"].name] = scale.astype(np.float32, copy=False)
    if b is not None and "bias_scale" in slots:
        bias_scale = np.float32(recipe.input_scale) * scale
        bq = np.rint(b / bias_scale).astype(np.float64)
        np.clip(bq, _INT32_MIN, _INT32_MAX, out=bq)
        out[slots["bias"].name] = bq.astype(np.int32)
        out[slots["bias_scale"].name] = bias_scale.astype(np.float32, copy=False)
    elif b is not None and "bias" in slots:
        out[slots["bias"].name] = b
    return out


class _Graph:
    """The exported ONNX graph with a lookup of producers and initializers."""

    def __init__(self, model: bytes) -> None:
        import onnx
        from onnx import numpy_helper

        self.onnx, self.numpy_helper = onnx, numpy_helper
        self.proto = onnx.load_from_string(model)
        self.graph = self.proto.graph
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.inits = {t.name: t for t in self.graph.initializer}

    def array(self, name: str, where: str) -> np.ndarray:
        if name not in self.inits:
            raise ActorQError(f"{where}: input {name!r} is not an initializer of the exported graph; "
                              "this export layout is not supported by ActorQ")
        return self.numpy_helper.to_array(self.inits[name])

    def node_of(self, name: str) -> Any:
        return self.producer.get(name)

    def attr(self, node: Any, key: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == key:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def dedicate(self, node: Any, index: int, new_name: str, value: np.ndarray) -> SlotSpec:
        """Give ``node``'s input ``index`` its own initializer (the exporter shares equal ones)."""
        tensor = self.numpy_helper.from_array(np.ascontiguousarray(value), name=new_name)
        self.graph.initializer.append(tensor)
        self.inits[new_name] = tensor
        node.input[index] = new_name
        return SlotSpec(new_name, str(value.dtype), tuple(int(v) for v in value.shape))

    def drop_unused(self) -> None:
        """Remove the initializers no node reads any more (and their graph inputs, which
        the TorchScript exporter declares for float parameters)."""
        used = {name for node in self.graph.node for name in node.input}
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        inputs = [i for i in self.graph.input if i.name in used]
        del self.graph.input[:]
        self.graph.input.extend(inputs)


def _activations(g: _Graph) -> dict[str, dict[str, Any]]:
    """Every activation quantizer of the graph (QuantizeLinear): output name -> its record."""
    consumers: dict[str, list[Any]] = {}
    for node in g.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = {}
    for node in g.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        scale = g.array(node.input[1], node.name)
        zero = g.array(node.input[2], node.name)
        signed = zero.dtype == np.int8
        bits = 8
        low, high = (-128, 127) if signed else (0, 255)
        for after in consumers.get(node.output[0], []):  # Brevitas narrows sub-8-bit with a Clip
            if after.op_type == "Clip" and len(after.input) == 3:
                low = int(g.array(after.input[1], after.name))
                high = int(g.array(after.input[2], after.name))
                bits = int(np.ceil(np.log2(high - low + 1)))
        quantizer = node.name.split("/")[1] if node.name.startswith("/") else node.name
        record = {"quantizer": quantizer, "node": node.name, "scale": float(scale), "zero_point": int(zero),
                  "bits": bits, "signed": bool(signed), "int_range": [low, high], "granularity": "per_tensor"}
        dq_outputs = [c.output[0] for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        for name in [node.output[0], *dq_outputs]:
            out[name] = record
    return out


def _layer_entry(g: _Graph, node: Any, name: str, spec: Any, activations: dict[str, dict[str, Any]]
                 ) -> dict[str, Any]:
    """Dedicate the layer's weight initializers to slots and describe how they are made."""
    where = f"layer {name} ({node.op_type})"
    if node.op_type == "Gemm" and int(g.attr(node, "transB", 0)) != 1:
        raise ActorQError(f"{where}: Gemm without transB=1 is not a layout ActorQ rebuilds")
    entry: dict[str, Any] = {"op": node.op_type, "weight_bits": spec.weight_bits, "act_bits": spec.act_bits,
                             "prune_ratio": spec.prune_ratio, "weight_quant": None, "bias_quant": None,
                             "input_activation": None, "slots": {}}
    slots: dict[str, SlotSpec] = {}
    w_node = g.node_of(node.input[1])
    if w_node is not None and w_node.op_type == "DequantizeLinear":
        source = g.node_of(w_node.input[0])
        if source is not None and source.op_type == "Clip":
            int_max = int(g.array(source.input[2], where))
            int_min = int(g.array(source.input[1], where))
            holder, index = source, 0
        else:
            int_max, int_min, holder, index = (2 ** (spec.weight_bits - 1) - 1), None, w_node, 0
        want = 2 ** (int(spec.weight_bits) - 1) - 1 if spec.weight_bits else None
        if want is None or int_max != want or (int_min is not None and int_min != -want):
            raise ActorQError(f"{where}: weights clipped to [{int_min}, {int_max}], the plan's {spec.weight_bits} "
                              "bits need a symmetric narrow range; the export does not follow the plan")
        if int(g.attr(w_node, "axis", 1)) != 0 or g.array(w_node.input[1], where).ndim != 1:
            raise ActorQError(f"{where}: weight scales are not per output channel (axis 0)")
        slots["weight"] = g.dedicate(holder, index, f"actorq/{name}/weight", g.array(holder.input[index], where))
        slots["weight_scale"] = g.dedicate(w_node, 1, f"actorq/{name}/weight_scale",
                                           g.array(w_node.input[1], where))
        entry["weight_quant"] = {"granularity": "per_channel", "axis": 0, "symmetric": True, "narrow_range": True,
                                 "bits": spec.weight_bits, "int_max": int_max, "scale": "max|w| / int_max",
                                 "rounding": "nearest (half to even)", "zero_point": 0}
    else:
        if spec.weight_bits is not None:
            raise ActorQError(f"{where}: the plan quantizes its weights to {spec.weight_bits} bits but the export "
                              "holds float weights; the export does not follow the plan")
        slots["weight"] = g.dedicate(node, 1, f"actorq/{name}/weight", g.array(node.input[1], where))
    if len(node.input) > 2 and node.input[2]:
        b_node = g.node_of(node.input[2])
        if b_node is not None and b_node.op_type == "DequantizeLinear":
            act = activations.get(node.input[0])
            if act is None or "weight_scale" not in slots:
                raise ActorQError(f"{where}: an int32 bias without a quantized input and weight")
            slots["bias"] = g.dedicate(b_node, 0, f"actorq/{name}/bias", g.array(b_node.input[0], where))
            slots["bias_scale"] = g.dedicate(b_node, 1, f"actorq/{name}/bias_scale", g.array(b_node.input[1], where))
            entry["bias_quant"] = {"bits": 32, "scale": "input_activation.scale * weight_scale", "zero_point": 0}
        else:
            slots["bias"] = g.dedicate(node, 2, f"actorq/{name}/bias", g.array(node.input[2], where))
    act = activations.get(node.input[0])
    if act is not None:
        entry["input_activation"] = dict(act)
    entry["slots"] = {role: slot.to_json() for role, slot in slots.items()}
    return entry


@dataclass(eq=False)
class RecipeGraph:
    """An exported QDQ graph split into what is fixed and what each set of weights supplies.

    ``template``: the complete graph with the export-time weights; ``graph``: the same with
    every slot marked as external data (each build supplies it); ``layers``: per layer
    (in order) its bit widths, quantizers, slots and kept channels, as JSON; ``arrays``:
    the kept output-channel indices the layers name; ``activations``: every activation
    quantizer of the graph.
    """

    template: bytes
    graph: bytes
    layers: dict[str, dict[str, Any]]
    arrays: dict[str, np.ndarray]
    activations: list[dict[str, Any]]
    _exported: _Graph

    @property
    def slot_names(self) -> list[str]:
        return sorted(s["name"] for e in self.layers.values() for s in e["slots"].values())

    def exported(self, name: str, where: str) -> np.ndarray:
        """The initializer ``name`` as the exporter wrote it."""
        return self._exported.array(name, where)


EXTERNAL_LOCATION = "autoquant-slot"  # never read: the initializers come with each build


def recipe_graph(onnx_model: bytes, table: Any, plan: Any, kept: Mapping[str, Sequence[int]]) -> RecipeGraph:
    """Read the per-layer recipe of an exported compressed network.

    ``table`` is the fp32 network's LayerTable, ``plan`` its CompressionPlan, ``kept`` the
    kept output channels of its pruned layers. Raises ActorQError where the graph is not
    a plain chain of Conv/Gemm layers laid out as the plan says.
    """
    g = _Graph(onnx_model)
    nodes = [n for n in g.graph.node if n.op_type in ("Conv", "Gemm")]
    names = [layer.name for layer in table]
    labelled = [n.name.split("/")[1] if n.name.startswith("/") else None for n in nodes]
    if len(nodes) != len(names) or any(label not in (None, want) for label, want in zip(labelled, names)):
        raise ActorQError(f"the exported graph's layers {labelled} are not the network's {names}: "
                          "a recipe needs a plain chain of Conv/Gemm layers")
    activations = _activations(g)
    layers: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    previous = None
    for node, info in zip(nodes, table):
        entry = _layer_entry(g, node, info.name, plan.spec(info.name), activations)
        entry["source"] = info.source
        kept_out = kept.get(info.name)
        entry["kept_out"] = None
        if kept_out is not None:
            key = f"kept/{info.name}"
            arrays[key] = np.asarray(kept_out, dtype=np.int64)
            entry["kept_out"] = key
            entry["kept_count"] = len(kept_out)
        entry["kept_in"] = None
        if previous is not None and previous.name in kept:
            # A conv's weight takes input channels; a Linear after Flatten takes channel * H * W + position.
            channels = previous.out_shape[0]
            inputs = int(info.in_shape[0]) if info.type == "conv" else int(np.prod(info.in_shape))
            spatial = inputs // channels
            if spatial * channels != inputs:
                raise ActorQError(f"layer {info.name}: input {info.in_shape} is not a whole number of the "
                                  f"previous layer's {channels} channels")
            entry["kept_in"] = {"from": previous.name, "spatial": spatial}
        layers[info.name] = entry
        previous = info
    g.drop_unused()
    template = g.proto.SerializeToString()
    graph_proto = g.onnx.ModelProto()
    graph_proto.CopyFrom(g.proto)
    from onnx.external_data_helper import set_external_data

    slot_names = {s["name"] for e in layers.values() for s in e["slots"].values()}
    for tensor in graph_proto.graph.initializer:
        if tensor.name in slot_names:
            set_external_data(tensor, location=EXTERNAL_LOCATION)
            tensor.ClearField("raw_data")
            tensor.data_location = g.onnx.TensorProto.EXTERNAL
    records = {r["node"]: r for r in activations.values()}
    return RecipeGraph(template=template, graph=graph_proto.SerializeToString(), layers=layers, arrays=arrays,
                       activations=list(records.values()), _exported=g)
