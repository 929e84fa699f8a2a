"""The monitor of ``actorq run --monitor``: it keeps the actors' policy close to the learner's.

At every broadcast, on the states the actors sent most recently:

1. **Re-calibration.** A bundle's activation quantizers were calibrated on the states it
   was made with. A learner that trains moves its activations: ranges grow past the
   quantizers (they clip) or shrink inside them (they waste levels). The monitor runs the
   learner's fp32 network, pruned as the bundle prunes, on the recent states, and computes
   each quantizer's scale as calibration does (``percentile_scale``: Brevitas' per-batch
   99.999th percentile of |x|). Where one grew by more than ``tolerance`` (a ratio; or shrank
   by more than its square), the
   level's bundle is re-made with the new scales (``recalibrated``: the graph's quantizer
   scales, and the int32 biases' scales that follow from them) and the actors rebuild on it.
2. **KL(mu || pi).** The actors' policy at the current precision, built from the weights
   being broadcast, against the learner's, over all actions of those states: the
   quantization's share of the mismatch (the learner's V-trace statistics add staleness).
3. **Precision.** The levels run from the cheapest (the bundle; then any further bundles
   given, more precise ones, e.g. from the search's Pareto front) to fp32. Above
   ``kl_bound`` the actors move one level up; after ``patience`` checks in a row where the
   level below stays under half the bound, they move back down.

Every check and every decision goes into the report (``to_json``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from autoquant.actorq._actors import Fp32ActorBuilder, hidden_activation
from autoquant.actorq._bundle import ActorBundle, conv_strides
from autoquant.actorq._impala import kl_mu_pi
from autoquant.actorq._quantizer import ActorQuantizer
from autoquant.compress import as_array, percentile_scale
from autoquant.errors import UsageError

__all__ = ["Monitor", "activation_inputs", "recalibrated"]


def activation_inputs(bundle: ActorBundle, weights: Mapping[str, Any], states: np.ndarray) -> dict[str, np.ndarray]:
    """Layer name -> the float values its input activation quantizer sees on ``states``
    (observations as the env gives them): the fp32 forward of ``weights``, pruned as the
    bundle prunes, with every quantizer off, as calibration runs it. Layers without an
    input quantizer are left out."""
    import torch
    import torch.nn.functional as F

    activation = {"Relu": torch.relu, "Tanh": torch.tanh}[hidden_activation(bundle)]
    fingerprint = {layer["name"]: layer for layer in bundle.manifest["fingerprint"]["layers"]}
    x = torch.as_tensor(np.asarray(states, dtype=np.float32) * np.float32(bundle.obs_scale))
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for i, recipe in enumerate(bundle.layers):
            layer = fingerprint[recipe.name]
            if bundle.manifest["layers"][recipe.name].get("input_activation") is not None:
                out[recipe.name] = x.reshape(len(x), -1).numpy().copy()
            w = as_array(weights[recipe.weight_key]).astype(np.float32)
            b = as_array(weights[recipe.bias_key]).astype(np.float32) if recipe.bias_key is not None else None
            if recipe.kept_out is not None:
                w = w[recipe.kept_out]
                b = b[recipe.kept_out] if b is not None else None
            if recipe.kept_in is not None:
                w = w[:, recipe.kept_in]
            wt, bt = torch.from_numpy(np.ascontiguousarray(w)), None if b is None else torch.from_numpy(b)
            if layer["type"] == "conv":
                x = F.conv2d(x, wt, bt, stride=conv_strides(layer))
            else:
                x = F.linear(torch.flatten(x, 1) if x.dim() > 2 else x, wt, bt)
            if i < len(bundle.layers) - 1:
                x = activation(x)
    return out


def recalibrated(bundle: ActorBundle, scales: Mapping[str, float]) -> ActorBundle:
    """``bundle`` with the input activation quantizers of the named layers at new scales.

    The graph's QuantizeLinear and its DequantizeLinear read the new scale; the layer's
    recipe takes it as its input scale, so the int32 bias each build encodes follows. The
    manifest says which quantizers moved, from what to what. (The template keeps its
    export-time weights, int32 biases included: a re-calibrated bundle is for actors' builds,
    not for ``write_bundle``.)"""
    import onnx
    from onnx import numpy_helper

    manifest = copy.deepcopy(bundle.manifest)
    by_node: dict[str, tuple[str, float]] = {}
    for name, scale in scales.items():
        act = manifest["layers"][name].get("input_activation")
        if act is None:
            raise UsageError(f"layer {name} has no input activation quantizer to re-calibrate")
        by_node[act["node"]] = (name, float(scale))
    graphs = []
    for blob in (bundle.graph, bundle.template):
        model = onnx.load_from_string(blob)
        g = model.graph
        consumers: dict[str, list[Any]] = {}
        for node in g.node:
            for value in node.input:
                consumers.setdefault(value, []).append(node)
        found = set()
        for node in g.node:
            if node.op_type != "QuantizeLinear" or node.name not in by_node:
                continue
            name, scale = by_node[node.name]
            initializer = f"actorq/recalibrated/{name}/input_scale"
            for holder in [node, *(c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear")]:
                holder.input[1] = initializer
            if not any(t.name == initializer for t in g.initializer):
                g.initializer.append(numpy_helper.from_array(np.asarray(scale, dtype=np.float32), name=initializer))
            else:
                for t in g.initializer:
                    if t.name == initializer:
                        t.CopyFrom(numpy_helper.from_array(np.asarray(scale, dtype=np.float32), name=initializer))
            found.add(node.name)
        missing = set(by_node) - found
        if missing:
            raise UsageError(f"the bundle's graph has no quantizer node {sorted(missing)[0]!r}: export the bundle again")
        used = {value for node in g.node for value in node.input}
        keep = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(keep)
        graphs.append(model.SerializeToString())
    moved = dict(manifest.get("recalibrated", {}))
    for name, scale in scales.items():
        act = manifest["layers"][name]["input_activation"]
        moved[name] = {"from": moved.get(name, {}).get("from", act["scale"]), "to": float(scale)}
        act["scale"] = float(np.float32(scale))
        for record in manifest.get("activations", []):
            if record.get("node") == act["node"]:
                record["scale"] = act["scale"]
    manifest["recalibrated"] = moved
    return ActorBundle(manifest=manifest, graph=graphs[0], template=graphs[1], arrays=bundle.arrays,
                       folder=bundle.folder)


class Monitor:
    """Re-calibration, KL(mu || pi) and precision levels, checked at every broadcast (module docstring).

    ``levels``: the bundles from the cheapest up; fp32 is the level above them.
    ``learner_log_probs``: states -> the learner's log pi(.|x), (N, actions)."""

    def __init__(self, levels: Sequence[ActorBundle], learner_log_probs: Callable[[np.ndarray], np.ndarray], *,
                 kl_bound: float = 0.02, patience: int = 3, tolerance: float = 1.25, threads: int = 1,
                 rebuild: str = "auto", recalibrate: bool = True) -> None:
        if not levels:
            raise UsageError("the monitor needs at least one bundle")
        if not kl_bound > 0:
            raise UsageError(f"--kl-bound must be > 0, got {kl_bound!r}")
        if not tolerance > 1.0:
            raise UsageError(f"--recalibrate-tolerance must be > 1 (a ratio of ranges), got {tolerance!r}")
        self.bundles: list[ActorBundle | None] = [*levels, None]  # None: fp32
        self.labels = [f"{i}: {b.manifest.get('summary') or 'bundle'}" for i, b in enumerate(levels)] + ["fp32"]
        self.learner_log_probs = learner_log_probs
        self.kl_bound, self.patience, self.tolerance = float(kl_bound), int(patience), float(tolerance)
        self.threads, self.rebuild, self.recalibrate = threads, rebuild, recalibrate
        self.builders: list[Any] = [self._builder(i) for i in range(len(self.bundles))]
        self.level = 0
        self.builder_id = 0  # changes with the level and with every re-calibration of it
        self.calm = 0  # checks in a row the level below stayed under half the bound
        self.checks: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.kl_by_level: dict[str, list[float]] = {}  # every KL measured of a level, in use or as the one below

    def _builder(self, level: int) -> Any:
        bundle = self.bundles[level]
        if bundle is None:
            return Fp32ActorBuilder(self.bundles[0], threads=self.threads, rebuild=self.rebuild)  # type: ignore[arg-type]
        return ActorQuantizer(bundle, threads=self.threads, rebuild=self.rebuild)

    @property
    def builder(self) -> Any:
        """The builder the actors use now."""
        return self.builders[self.level]

    def _kl(self, level: int, weights: Mapping[str, Any], states: np.ndarray, pi: np.ndarray) -> tuple[float, float]:
        actor = self.builders[level].build(weights)
        x, _ = actor.prepare(states)
        logits = actor.forward(x)
        return float(kl_mu_pi(logits, pi).mean()), float(np.mean(logits.argmax(axis=1) == pi.argmax(axis=1)))

    def _recalibrate(self, level: int, weights: Mapping[str, Any], states: np.ndarray) -> dict[str, Any] | None:
        bundle = self.bundles[level]
        if bundle is None or not self.recalibrate:
            return None
        inputs = activation_inputs(bundle, weights, states)
        moved: dict[str, list[float]] = {}
        for name, x in inputs.items():
            act = bundle.manifest["layers"][name]["input_activation"]
            new = percentile_scale(x, signed=bool(act["signed"]))
            ratio = new / float(act["scale"])
            # Grown past the tolerance: the quantizer clips. Shrunk by its square: levels wasted, and far
            # enough that a range moving back and forth over the tolerance does not re-make the graph each time.
            if ratio > self.tolerance or ratio < 1.0 / self.tolerance ** 2:
                moved[name] = [float(act["scale"]), float(new)]
        if not moved:
            return None
        self.bundles[level] = recalibrated(bundle, {name: scales[1] for name, scales in moved.items()})
        self.builders[level] = self._builder(level)
        return {"level": level, "scales": moved}

    def check(self, step: int, version: int, weights: Mapping[str, Any], states: np.ndarray | None) -> bool:
        """One check at a broadcast; True when the actors must take a new builder."""
        if states is None or len(states) == 0:
            return False
        start = time.perf_counter()
        pi = self.learner_log_probs(states)
        changed = False
        record: dict[str, Any] = {"step": step, "version": version, "level": self.level}
        before = self._kl(self.level, weights, states, pi)
        moved = self._recalibrate(self.level, weights, states)
        if moved is not None:
            after = self._kl(self.level, weights, states, pi)
            self.decisions.append({"step": step, "version": version, "action": "recalibrate", **moved,
                                   "kl_before": before[0], "kl_after": after[0], "agreement_after": after[1]})
            before, changed = after, True
        record.update(kl=before[0], agreement=before[1])
        self._seen(self.level, before[0])
        if before[0] > self.kl_bound and self.level < len(self.builders) - 1:
            self.level += 1
            self._recalibrate(self.level, weights, states)
            now = self._kl(self.level, weights, states, pi)
            self.decisions.append({"step": step, "version": version, "action": "raise",
                                   "from": self.labels[self.level - 1], "to": self.labels[self.level],
                                   "kl_before": before[0], "kl_after": now[0], "bound": self.kl_bound})
            self.calm, changed = 0, True
        elif self.level > 0:
            self._recalibrate(self.level - 1, weights, states)
            below = self._kl(self.level - 1, weights, states, pi)
            record["kl_below"] = below[0]
            self._seen(self.level - 1, below[0])
            self.calm = self.calm + 1 if below[0] < self.kl_bound / 2 else 0
            if self.calm >= self.patience:
                self.level -= 1
                self.decisions.append({"step": step, "version": version, "action": "lower",
                                       "from": self.labels[self.level + 1], "to": self.labels[self.level],
                                       "kl_below": below[0], "checks_under_half_bound": self.calm,
                                       "bound": self.kl_bound})
                self.calm, changed = 0, True
        if changed:
            self.builder_id += 1
        self.checks.append(record)
        self.seconds += time.perf_counter() - start
        return changed

    def _seen(self, level: int, kl: float) -> None:
        self.kl_by_level.setdefault(self.labels[level], []).append(kl)

    def to_json(self) -> dict[str, Any]:
        kls = np.asarray([c["kl"] for c in self.checks]) if self.checks else np.zeros(0)
        levels = [c["level"] for c in self.checks]
        return {"levels": self.labels, "kl_bound": self.kl_bound, "patience": self.patience,
                "recalibrate_tolerance": self.tolerance if self.recalibrate else None,
                "checks": len(self.checks), "seconds": self.seconds,
                "kl": ({"mean": float(kls.mean()), "max": float(kls.max()),
                        "over_bound_share": float(np.mean(kls > self.kl_bound))} if len(kls) else None),
                "checks_per_level": {self.labels[i]: levels.count(i) for i in range(len(self.labels))},
                "kl_by_level": {label: {"checks": len(v), "mean": float(np.mean(v)), "max": float(np.max(v)),
                                        "over_bound_share": float(np.mean(np.asarray(v) > self.kl_bound))}
                                for label, v in self.kl_by_level.items()},
                "final_level": self.labels[self.level], "decisions": self.decisions, "history": self.checks,
                "note": ("kl: KL(mu || pi) over all actions, mu the actors' policy at the level in use (after any "
                         "re-calibration at that check) built from the broadcast weights, pi the learner's, on the "
                         "actors' latest states; it measures quantization only (the learner's V-trace statistics "
                         "add staleness). kl_by_level: every KL measured of each level, in use or as the level "
                         "below the one in use")}
