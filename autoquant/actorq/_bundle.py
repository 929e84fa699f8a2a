"""The ActorQ bundle: a plan made into a recipe that actors apply to every broadcast.

A bundle is a folder of versioned JSON, ONNX and ``.npz`` arrays (no pickles)::

    actorq.json     manifest: format, version, autoquant and library versions; the plan;
                    per layer the bit widths, quantizer granularity, kept channels and the
                    calibrated activation quantizers; the learner network's fingerprint;
                    the target and its accelerated precisions; the latency and reward
                    measured for the plan; what each broadcast recomputes and what is fixed
    graph.onnx      the fixed graph (QCDQ) whose weight initializers are left out, marked
                    as external data: each broadcast supplies them
    template.onnx   the same graph with the export-time learner weights, complete: the
                    plan as exported with round-to-nearest weights, the reference a
                    rebuild reproduces
    arrays.npz      kept output-channel indices of pruned layers (``allow_pickle=False``)
    plan.json       the plan

The writer checks itself: the initializers numpy recomputes from the export-time weights
must equal the exported ones bit for bit, so a bundle never claims a recipe that the
exporter did not follow.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._version import __version__
from autoquant.errors import AutoquantError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "ActorBundle",
    "ActorQError",
    "BundleFormatError",
    "LayerRecipe",
    "NetworkMismatchError",
    "SlotSpec",
    "export_run",
    "load_bundle",
    "target_entry",
    "write_bundle",
]

BUNDLE_FORMAT = "autoquant.actorq"
BUNDLE_VERSION = 1
MANIFEST = "actorq.json"
GRAPH = "graph.onnx"
TEMPLATE = "template.onnx"
ARRAYS = "arrays.npz"
_EXTERNAL_LOCATION = "actorq-broadcast"  # never read: the initializers come with each build

BROADCAST = {
    "recomputed": [
        "per-output-channel weight scales of quantized layers: max|w| / (2^(bits-1) - 1)",
        "integer weights of quantized layers: round half to even of w / scale, clipped to ±(2^(bits-1) - 1)",
        "int32 biases of integer layers: round(bias / (input_activation_scale * weight_scale)), and their scales",
        "float weights and biases of float layers",
        "all of them sliced to the kept output channels and to the inputs kept by the previous layer's pruning",
    ],
    "fixed": [
        "kept channel indices of pruned layers (chosen by L2 norm on the export-time weights)",
        "activation quantizers: scale, zero point, bits, signedness (calibrated on recorded states)",
        "the graph: layers, operators, shapes, bit widths",
    ],
    "quantizes": (
        "either side. Central (recommended when the broadcast size matters): the learner calls "
        "ActorQuantizer.quantize(state_dict) and broadcasts int8 weights + scales + int32 biases, actors "
        "call build_quantized(payload). Actor side: actors receive the fp32 state dict and call build(state_dict)."
    ),
}


class ActorQError(AutoquantError):
    """An ActorQ bundle cannot be made or applied."""


class BundleFormatError(ActorQError):
    """A folder is not an ActorQ bundle this autoquant reads (missing, corrupt, other version)."""


class NetworkMismatchError(ActorQError):
    """Learner weights do not fit the network a bundle was made for."""


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


@dataclass(eq=False)
class ActorBundle:
    """A loaded bundle: the manifest, both graphs, the arrays, and the layer recipes."""

    manifest: dict[str, Any]
    graph: bytes
    template: bytes
    arrays: dict[str, np.ndarray]
    folder: Path | None = None

    def __post_init__(self) -> None:
        self.layers: tuple[LayerRecipe, ...] = tuple(self._recipes())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.manifest["policy"]["input_shape"])

    @property
    def obs_scale(self) -> float:
        return float(self.manifest["policy"]["obs_scale"])

    @property
    def algo(self) -> str:
        return str(self.manifest["policy"]["algo"])

    @property
    def fingerprint_id(self) -> str:
        return str(self.manifest["fingerprint"]["sha256"])[:16]

    @property
    def payload_bytes(self) -> dict[str, int]:
        """Bytes one broadcast sends: ``fp32_state_dict``, the fp32 weights of the network's
        layers; ``central``, the payload of ``ActorQuantizer.quantize`` (int8 weights, scales,
        int32 biases; float layers' sliced fp32 weights)."""
        return dict(self.manifest["broadcast"]["payload_bytes"])

    def _recipes(self) -> list[LayerRecipe]:
        layers = self.manifest["layers"]
        fingerprint = {entry["name"]: entry for entry in self.manifest["fingerprint"]["layers"]}
        recipes = []
        previous: str | None = None
        for name in self.manifest["layer_order"]:
            entry, fp = layers[name], fingerprint[name]
            kept_out = self._indices(entry["kept_out"])
            kept_in = None
            if previous is not None and layers[previous]["kept_out"] is not None:
                channels = self._indices(layers[previous]["kept_out"])
                spatial = int(entry["kept_in"]["spatial"])
                kept_in = (channels[:, None] * spatial + np.arange(spatial)[None, :]).reshape(-1)
            act = entry.get("input_activation")
            weight_quant = entry.get("weight_quant")
            recipes.append(LayerRecipe(
                name=name, type=fp["type"], weight_key=fp["weight_key"], bias_key=fp["bias_key"],
                weight_shape=tuple(fp["weight_shape"]),
                bias_shape=tuple(fp["bias_shape"]) if fp["bias_shape"] is not None else None,
                weight_bits=entry["weight_bits"], act_bits=entry["act_bits"],
                int_max=int(weight_quant["int_max"]) if weight_quant else None,
                input_scale=float(act["scale"]) if act and entry.get("bias_quant") else None,
                kept_out=kept_out, kept_in=kept_in,
                slots={role: SlotSpec.from_json(s) for role, s in entry["slots"].items()},
            ))
            previous = name
        return recipes

    def _indices(self, key: str | None) -> np.ndarray | None:
        if key is None:
            return None
        if key not in self.arrays:
            raise BundleFormatError(f"bundle arrays lack {key!r}: the bundle is incomplete; export it again")
        return np.asarray(self.arrays[key], dtype=np.intp)


# --- reading ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bundle(folder: str | Path) -> ActorBundle:
    """Read a bundle folder; a missing, altered or newer bundle is a BundleFormatError."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleFormatError(f"{folder} is not an ActorQ bundle (no {MANIFEST}): make one with "
                                "autoquant export RUN --format actorq --out DIR")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleFormatError(f"{path}: not an ActorQ bundle manifest (expected \"format\": \"{BUNDLE_FORMAT}\")")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleFormatError(f"{path}: bundle version {manifest.get('version')!r} is not supported "
                                f"(this autoquant {__version__} reads {BUNDLE_VERSION}); export the bundle again")
    blobs: dict[str, bytes] = {}
    for role, entry in manifest["files"].items():
        file = folder / entry["path"]
        if not file.is_file():
            raise BundleFormatError(f"{folder}: the bundle's {role} file {entry['path']} is missing; export it again")
        data = file.read_bytes()
        if _sha256(data) != entry["sha256"]:
            raise BundleFormatError(f"{file}: sha256 differs from the manifest: the file was altered or "
                                    "truncated; export the bundle again")
        blobs[role] = data
    try:
        import io

        with np.load(io.BytesIO(blobs["arrays"]), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise BundleFormatError(f"{folder / ARRAYS}: not a plain .npz of arrays ({exc})") from exc
    try:
        return ActorBundle(manifest, blobs["graph"], blobs["template"], arrays, folder)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleFormatError(f"{path}: the manifest lacks or garbles {exc}; export the bundle again") from exc


# --- writing ------------------------------------------------------------------------------------


def _libraries() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("onnx", "onnxruntime", "numpy", "torch", "brevitas"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def target_entry(name: str, *, facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A target as a bundle records it: its name, accelerated precisions and device facts."""
    from autoquant.targets._registry import available_targets, load_target_spec

    path = Path(name) if name.endswith(".toml") else available_targets().get(name)
    precisions = list(load_target_spec(Path(path)).accelerated_precisions) if path else ["fp32", "int8"]
    return {"name": name, "accelerated_precisions": precisions, "facts": dict(facts or {})}


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


def _fingerprint(bundle: Any, table: Any) -> dict[str, Any]:
    modules = dict(bundle.net.named_children())
    layers = []
    for info in table:
        module = modules[info.name]
        has_bias = getattr(module, "bias", None) is not None
        source = info.source
        layers.append({
            "name": info.name, "type": info.type, "source": source,
            "weight_key": f"{source}.weight" if source else "weight",
            "bias_key": (f"{source}.bias" if source else "bias") if has_bias else None,
            "weight_shape": [int(v) for v in module.weight.shape],
            "bias_shape": [int(v) for v in module.bias.shape] if has_bias else None,
            "in_shape": list(info.in_shape), "out_shape": list(info.out_shape),
        })
    digest = _sha256(json.dumps({"input_shape": list(table.input_shape), "layers": layers},
                                sort_keys=True).encode())
    return {"input_shape": list(table.input_shape), "layers": layers, "sha256": digest}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_bundle(
    compressed: Any,
    out: str | Path,
    *,
    target: Mapping[str, Any] | None = None,
    measured: Mapping[str, Any] | None = None,
    template_fidelity: Mapping[str, Any] | None = None,
    origin: Mapping[str, Any] | None = None,
) -> ActorBundle:
    """Write the ActorQ bundle of a CompressedPolicy (compressed with ``rounding="nearest"``,
    not fine-tuned) to the folder ``out`` and return it loaded.

    ``target`` is ``target_entry(...)`` (default: this machine, ``host``); ``measured`` the
    latency and reward that justified the plan; ``template_fidelity`` the template's
    agreement with fp32; ``origin`` where the plan came from (run, trial).
    """
    import io

    from autoquant.actorq._quantizer import encode_layer
    from autoquant.policy._layers import analyse

    bundle, plan = compressed.bundle, compressed.plan
    if compressed.finetune is not None:
        raise ActorQError("a fine-tuned plan's weights are not the learner's: ActorQ rebuilds from learner weights, "
                          "so export the plan without fine-tuning")
    table = analyse(bundle)
    fingerprint = _fingerprint(bundle, table)
    g = _Graph(compressed.onnx)
    nodes = [n for n in g.graph.node if n.op_type in ("Conv", "Gemm")]
    names = [layer.name for layer in table]
    labelled = [n.name.split("/")[1] if n.name.startswith("/") else None for n in nodes]
    if len(nodes) != len(names) or any(label not in (None, want) for label, want in zip(labelled, names)):
        raise ActorQError(f"the exported graph's layers {labelled} are not the network's {names}: "
                          "ActorQ needs a plain chain of Conv/Gemm layers")
    activations = _activations(g)
    layers: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    previous = None
    for node, info in zip(nodes, table):
        entry = _layer_entry(g, node, info.name, plan.spec(info.name), activations)
        entry["source"] = info.source
        kept = compressed.kept.get(info.name)
        entry["kept_out"] = None
        if kept is not None:
            key = f"kept/{info.name}"
            arrays[key] = np.asarray(kept, dtype=np.int64)
            entry["kept_out"] = key
            entry["kept_count"] = len(kept)
        entry["kept_in"] = None
        if previous is not None and previous.name in compressed.kept:
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
    manifest_layers = dict(layers)
    graph_proto = g.onnx.ModelProto()
    graph_proto.CopyFrom(g.proto)
    from onnx.external_data_helper import set_external_data

    slot_names = {s["name"] for e in layers.values() for s in e["slots"].values()}
    for tensor in graph_proto.graph.initializer:
        if tensor.name in slot_names:
            set_external_data(tensor, location=_EXTERNAL_LOCATION)
            tensor.ClearField("raw_data")
            tensor.data_location = g.onnx.TensorProto.EXTERNAL
    graph = graph_proto.SerializeToString()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    arrays_bytes = buffer.getvalue()

    fp32_bytes = sum(4 * (int(np.prod(e["weight_shape"])) + int(np.prod(e["bias_shape"] or [0])))
                     for e in fingerprint["layers"])
    quant_bytes = sum(int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize
                      for e in layers.values() for s in e["slots"].values())
    act_records = {r["node"]: r for r in activations.values()}
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "autoquant_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "libraries": _libraries(),
        "origin": dict(origin or {}),
        "policy": {"path": str(bundle.source), "algo": bundle.algo, "env_id": bundle.env_id,
                   "input_shape": list(bundle.input_shape), "obs_scale": bundle.obs_scale,
                   "action": bundle.action.to_json()},
        "plan": plan.to_json(), "summary": plan.describe(),
        "rounding": "nearest",
        "target": dict(target) if target is not None else target_entry("host"),
        "measured": dict(measured) if measured is not None else None,
        "template_fidelity": dict(template_fidelity) if template_fidelity is not None else None,
        "fingerprint": fingerprint,
        "layer_order": names,
        "layers": manifest_layers,
        "activations": list(act_records.values()),
        "broadcast": {**BROADCAST, "slots": sorted(slot_names),
                      "payload_bytes": {"fp32_state_dict": fp32_bytes, "central": quant_bytes}},
        "files": {
            "graph": {"path": GRAPH, "sha256": _sha256(graph)},
            "template": {"path": TEMPLATE, "sha256": _sha256(template)},
            "arrays": {"path": ARRAYS, "sha256": _sha256(arrays_bytes)},
        },
    }
    result = ActorBundle(manifest, graph, template, arrays)
    _self_check(result, bundle, g, encode_layer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / GRAPH, graph)
    _write_atomic(out / TEMPLATE, template)
    _write_atomic(out / ARRAYS, arrays_bytes)
    _write_atomic(out / "plan.json", (json.dumps(plan.to_json(), indent=2) + "\n").encode())
    _write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2, default=str) + "\n").encode())
    result.folder = out
    return result


def _self_check(result: ActorBundle, bundle: Any, g: _Graph, encode_layer: Any) -> None:
    """The initializers recomputed from the export-time weights must be the exported ones."""
    modules = dict(bundle.net.named_children())
    for recipe in result.layers:
        module = modules[recipe.name]
        weight = module.weight.detach().numpy()
        bias = module.bias.detach().numpy() if module.bias is not None else None
        for name, value in encode_layer(recipe, weight, bias).items():
            exported = g.array(name, f"layer {recipe.name}")
            if exported.dtype != value.dtype or exported.shape != value.shape or not np.array_equal(exported, value):
                raise ActorQError(
                    f"layer {recipe.name}: the exported {name.rsplit('/', 1)[1]} differs from round-to-nearest of the "
                    "learner weights: compress the plan with rounding='nearest' and no fine-tuning for a bundle")


# --- from a search run ------------------------------------------------------------------------


def _measured(run: Any, number: int) -> dict[str, Any]:
    """What the search measured for trial ``number`` (and its confirmation, if it is the best)."""
    out: dict[str, Any] = {"trial": number, "rounding": "gptq",
                           "note": "measured by the search on GPTQ-rounded weights; the bundle rounds to nearest "
                                   "(see template_fidelity)"}
    for trial in run.study().get_trials(deepcopy=False):
        if trial.number != number:
            continue
        out["state"] = trial.state.name
        if "result" in trial.user_attrs:
            result = json.loads(trial.user_attrs["result"])
            for key in ("latency_ratio", "latency", "retention", "reward", "played", "skip_reason", "fidelity",
                        "size_bytes", "size_ratio", "macs_ratio"):
                out[key] = result.get(key)
    reference = run.info.get("reference", {})
    out["fp32_reward"] = reference.get("fp32")
    out["random_reward"] = reference.get("random")
    confirm = run.folder / "best" / "confirm.json"
    if confirm.is_file():
        data = json.loads(confirm.read_text())
        if int(data.get("trial", -1)) == number:
            out["confirm"] = data.get("confirm")
    return out


def export_run(run: Any, trial: int | str, *, out: Path) -> dict[str, Any]:
    """``autoquant export RUN --format actorq``: the bundle of a run's plan."""
    from autoquant.compress import compress
    from autoquant.evaluate import fidelity
    from autoquant.targets._ort import OrtRunner

    number, plan = run.plan_of(trial if trial == "best" else int(trial))
    bundle = run.problem.bundle
    compressed = compress(bundle, plan, run.states.states, rounding="nearest", seed=run.config.seed)
    fid = fidelity(run.problem.reference_outputs, OrtRunner(compressed.onnx)(run.held_out), bundle.action)
    target = target_entry(run.config.target, facts=run.info["target"].get("facts"))
    target["fingerprint"] = run.info["target"].get("fingerprint")
    origin = {"run": str(run.folder), "trial": number, "policy_sha256": run.info["policy"]["sha256"]}
    written = write_bundle(compressed, out, target=target, measured=_measured(run, number), origin=origin,
                           template_fidelity={**fid, "against": "fp32 on the run's held-out states"})
    folder = Path(out)
    files = [str(folder / name) for name in (MANIFEST, GRAPH, TEMPLATE, ARRAYS, "plan.json")]
    return {"trial": number, "summary": plan.describe(), "format": "actorq", "files": files,
            "payload_bytes": written.payload_bytes, "template_fidelity": fid}
