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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import atomic_write, write_json
from autoquant._untrusted import load_npz, loads_json, read_file_in, short_repr
from autoquant._version import __version__
from autoquant.compress import LayerRecipe, SlotSpec, encode_layer, recipe_graph
from autoquant.errors import ActorQError, BundleFormatError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "ActorBundle",
    "LADDER",
    "conv_strides",
    "is_ladder",
    "load_bundle",
    "load_ladder",
    "target_entry",
    "write_bundle",
    "write_ladder",
]

BUNDLE_FORMAT = "autoquant.actorq"
BUNDLE_VERSION = 1
MANIFEST = "actorq.json"
GRAPH = "graph.onnx"
TEMPLATE = "template.onnx"
ARRAYS = "arrays.npz"
FILE_ROLES = ("graph", "template", "arrays")  # the files a manifest names, each a plain name in the folder
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILE_BYTES = 1 << 30  # a graph, template or arrays file
LADDER = "ladder.json"  # a folder of bundles, cheapest first: the monitor's precision levels
LADDER_FORMAT = "autoquant.actorq.ladder"
LADDER_VERSION = 1
MAX_LADDER_LEVELS = 64

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

    def files(self) -> list[Path]:
        """The bundle's files, once written (empty before)."""
        if self.folder is None:
            return []
        return [self.folder / name for name in (MANIFEST, GRAPH, TEMPLATE, ARRAYS, "plan.json")]

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


def conv_strides(layer: Mapping[str, Any]) -> list[int]:
    """A conv layer's strides from its fingerprint (no padding), or an ActorQError."""
    kernel = layer["weight_shape"][2:]
    strides = []
    for size_in, size_out, k in zip(layer["in_shape"][1:], layer["out_shape"][1:], kernel):
        found = [s for s in range(1, int(k) + 1) if (int(size_in) - int(k)) // s + 1 == int(size_out)]
        if not found:
            raise ActorQError(f"layer {layer['name']}: {layer['in_shape']} -> {layer['out_shape']} with kernel "
                              f"{kernel} is not an unpadded convolution; fp32 actors support the Nature CNN "
                              "and MLPs")
        strides.append(found[0])
    return strides


# --- reading ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bundle(folder: str | Path) -> ActorBundle:
    """Read a bundle folder; a missing, altered, newer or hostile bundle (a manifest naming
    files outside the folder, symlinks, oversized or malformed JSON and arrays) is a
    BundleFormatError."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file() and not path.is_symlink():
        raise BundleFormatError(f"{folder} is not an ActorQ bundle (no {MANIFEST}): make one with "
                                "autoquant export RUN --format actorq --out DIR")
    manifest = loads_json(read_file_in(folder, MANIFEST, what=f"{folder}: the bundle manifest",
                                       error=BundleFormatError, max_bytes=MAX_MANIFEST_BYTES),
                          what=str(path), error=BundleFormatError, max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleFormatError(f"{path}: not an ActorQ bundle manifest (expected \"format\": \"{BUNDLE_FORMAT}\")")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleFormatError(f"{path}: bundle version {short_repr(manifest.get('version'), 20)} is not "
                                f"supported (this autoquant {__version__} reads {BUNDLE_VERSION}); export the "
                                "bundle again")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(FILE_ROLES) or not all(
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in files.values()):
        raise BundleFormatError(f"{path}: \"files\" must name exactly the {', '.join(FILE_ROLES)} files, each with "
                                "a path and a sha256; export the bundle again")
    blobs: dict[str, bytes] = {}
    for role in FILE_ROLES:
        entry = files[role]
        data = read_file_in(folder, entry.get("path"), what=f"{path}: the bundle's {role} file",
                            error=BundleFormatError, max_bytes=MAX_FILE_BYTES)
        if _sha256(data) != entry["sha256"]:
            raise BundleFormatError(f"{folder / entry['path']}: sha256 differs from the manifest: the file was "
                                    "altered or truncated; export the bundle again")
        blobs[role] = data
    arrays = load_npz(blobs["arrays"], where=str(folder / files["arrays"]["path"]), error=BundleFormatError)
    try:
        return ActorBundle(manifest, blobs["graph"], blobs["template"], arrays, folder)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise BundleFormatError(f"{path}: the manifest lacks or garbles {short_repr(str(exc), 80)}; export the "
                                "bundle again") from exc


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
    from autoquant.targets import find_target_spec

    precisions = list(find_target_spec(name).accelerated_precisions)
    return {"name": name, "accelerated_precisions": precisions, "facts": dict(facts or {})}


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

    from autoquant.policy import analyse

    bundle, plan = compressed.bundle, compressed.plan
    if compressed.finetune is not None:
        raise ActorQError("a fine-tuned plan's weights are not the learner's: ActorQ rebuilds from learner weights, "
                          "so export the plan without fine-tuning")
    table = analyse(bundle)
    fingerprint = _fingerprint(bundle, table)
    recipe = recipe_graph(compressed.onnx, table, plan, compressed.kept)
    layers, arrays, graph, template = recipe.layers, recipe.arrays, recipe.graph, recipe.template
    names = [layer.name for layer in table]
    slot_names = recipe.slot_names
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    arrays_bytes = buffer.getvalue()

    fp32_bytes = sum(4 * (int(np.prod(e["weight_shape"])) + int(np.prod(e["bias_shape"] or [0])))
                     for e in fingerprint["layers"])
    quant_bytes = sum(int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize
                      for e in layers.values() for s in e["slots"].values())
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
        "layers": layers,
        "activations": recipe.activations,
        "broadcast": {**BROADCAST, "slots": slot_names,
                      "payload_bytes": {"fp32_state_dict": fp32_bytes, "central": quant_bytes}},
        "files": {
            "graph": {"path": GRAPH, "sha256": _sha256(graph)},
            "template": {"path": TEMPLATE, "sha256": _sha256(template)},
            "arrays": {"path": ARRAYS, "sha256": _sha256(arrays_bytes)},
        },
    }
    result = ActorBundle(manifest, graph, template, arrays)
    _self_check(result, bundle, recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / GRAPH, graph)
    atomic_write(out / TEMPLATE, template)
    atomic_write(out / ARRAYS, arrays_bytes)
    write_json(out / "plan.json", plan.to_json())
    write_json(out / MANIFEST, manifest)
    result.folder = out
    return result


def _self_check(result: ActorBundle, bundle: Any, recipe: Any) -> None:
    """The initializers recomputed from the export-time weights must be the exported ones."""
    modules = dict(bundle.net.named_children())
    for layer in result.layers:
        module = modules[layer.name]
        weight = module.weight.detach().numpy()
        bias = module.bias.detach().numpy() if module.bias is not None else None
        for name, value in encode_layer(layer, weight, bias).items():
            exported = recipe.exported(name, f"layer {layer.name}")
            if exported.dtype != value.dtype or exported.shape != value.shape or not np.array_equal(exported, value):
                raise ActorQError(
                    f"layer {layer.name}: the exported {name.rsplit('/', 1)[1]} differs from round-to-nearest of the "
                    "learner weights: compress the plan with rounding='nearest' and no fine-tuning for a bundle")


# --- ladders: bundles of one network from a search's Pareto front, cheapest first -----------------


def is_ladder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a ladder (``ladder.json``) rather than one bundle."""
    path = Path(folder) / LADDER
    return path.is_file() or path.is_symlink()


def write_ladder(folder: str | Path, levels: list[dict[str, Any]]) -> Path:
    """``folder/ladder.json`` naming the bundle folders in ``folder``, cheapest first (each level:
    ``path``, a plain folder name, and what the search measured for it)."""
    path = Path(folder) / LADDER
    write_json(path, {"format": LADDER_FORMAT, "version": LADDER_VERSION, "autoquant_version": __version__,
                      "order": "cheapest first: ascending latency, ascending reward retention (the Pareto front)",
                      "levels": levels})
    return path


def load_ladder(folder: str | Path) -> list[ActorBundle]:
    """The bundles of a ladder, cheapest first. A ladder naming folders outside itself, symlinks,
    bundles of different networks or no level at all is a BundleFormatError."""
    folder = Path(folder)
    where = f"{folder}: the ladder"
    data = loads_json(read_file_in(folder, LADDER, what=where, error=BundleFormatError, max_bytes=MAX_MANIFEST_BYTES),
                      what=str(folder / LADDER), error=BundleFormatError, max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(data, dict) or data.get("format") != LADDER_FORMAT or data.get("version") != LADDER_VERSION:
        raise BundleFormatError(f"{folder / LADDER}: not a version-{LADDER_VERSION} ActorQ ladder; export it again "
                                "(autoquant export RUN --trial front --format actorq --out DIR)")
    levels = data.get("levels")
    if not isinstance(levels, list) or not 1 <= len(levels) <= MAX_LADDER_LEVELS:
        raise BundleFormatError(f"{folder / LADDER}: \"levels\" must list 1 to {MAX_LADDER_LEVELS} bundle folders")
    bundles = []
    for level in levels:
        name = level.get("path") if isinstance(level, dict) else None
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
                or not name.isprintable() or len(name.encode("utf-8", "surrogatepass")) > 255):
            raise BundleFormatError(f"{where} names the level {short_repr(name)}: only a plain folder name inside "
                                    "the ladder is allowed; the ladder is not one autoquant wrote")
        path = folder / name
        if path.is_symlink() or not path.is_dir() or path.resolve().parent != folder.resolve():
            what = "a symlink" if path.is_symlink() else "not a folder inside it"
            raise BundleFormatError(f"{where}: level {short_repr(name)} is {what}; a ladder's levels are folders "
                                    "inside it")
        bundles.append(load_bundle(path))
    first = bundles[0].fingerprint_id
    for name, bundle in zip((level["path"] for level in levels), bundles):
        if bundle.fingerprint_id != first:
            raise BundleFormatError(f"{where}: level {short_repr(name)} was made for another network (fingerprint "
                                    f"{bundle.fingerprint_id}, the first level's {first}); export it again")
    return bundles
