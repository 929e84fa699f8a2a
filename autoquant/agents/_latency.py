"""A measured latency model of one network on one target.

The latency of a plan on a chain network depends on each layer's kernel (float, or an
integer kernel: every weight width of 2-8 bits is stored and run as int8), on the
channels it keeps, and on its neighbours (a pruned layer cuts the next one's inputs;
quantize/dequantize steps sit where float and integer layers meet). So the model
measures, on the target and in context, every option of every layer alone and every
pair of options of adjacent layers (the rest of the network fp32), and predicts a plan
by inclusion and exclusion along the chain::

    r(plan) = 1 + sum over adjacent pairs (r_pair - 1) - sum over inner layers (r_single - 1)

which is exact for costs that are sums of per-layer and adjacent-pair terms. Latencies
are ratios to the fp32 export measured in the same window, as every trial's are. Every
end-to-end measurement of a real trial corrects the model: predictions are scaled by the
median ratio of measured to predicted over the trials seen, and the error of each
prediction made before its trial was measured is recorded.

The measured tables are stored under the cache folder (``AUTOQUANT_CACHE``, else
``~/.cache/autoquant``), keyed by the policy's SHA-256, the target's fingerprint and the
options, and reused by every later run of the same network on the same target.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import write_json
from autoquant._untrusted import loads_json, read_file_in
from autoquant.errors import AutoquantError, UsageError
from autoquant.compress import INT_ACT_BITS, CompressionPlan, LayerSpec, kept_count
from autoquant.policy import LayerTable

__all__ = ["LATENCY_MODEL_FORMAT", "LatencyModel", "LatencyOption", "cache_dir", "keep_ratios", "latency_options",
           "option_of"]

LATENCY_MODEL_FORMAT = "autoquant.latency_model"
LATENCY_MODEL_VERSION = 1
_PROBE_BITS = 8  # every integer weight width runs the same int8 kernel: probes use 8


@dataclass(frozen=True, order=True)
class LatencyOption:
    """What decides a layer's latency: integer kernel or float, and the channels kept."""

    integer: bool
    keep: int

    def key(self) -> str:
        return f"{'int' if self.integer else 'float'}:{self.keep}"

    @classmethod
    def parse(cls, text: str) -> LatencyOption:
        kind, keep = text.split(":")
        return cls(kind == "int", int(keep))


def latency_options(table: LayerTable, space: Any) -> list[list[LatencyOption]]:
    """Per layer, the distinct latency options the space allows."""
    by_name = {layer.name: layer for layer in space.layers}
    out = []
    for info in table:
        choices = by_name.get(info.name)
        bits = choices.weight_bits if choices is not None else (None,)
        ratios = choices.prune_ratios if choices is not None else (0.0,)
        keeps = sorted({kept_count(info.channels, r, space.channel_multiple) for r in ratios}, reverse=True)
        kinds = sorted({b is not None for b in bits})
        out.append([LatencyOption(k, keep) for k in kinds for keep in keeps])
    return out


def option_of(table: LayerTable, plan: CompressionPlan, index: int) -> LatencyOption:
    info = list(table)[index]
    spec = plan.spec(info.name)
    return LatencyOption(spec.integer, kept_count(info.channels, spec.prune_ratio, plan.channel_multiple))


def keep_ratios(table: LayerTable, space: Any) -> list[dict[int, float]]:
    """Per layer, a pruning ratio of the space for each number of channels it can keep."""
    by_name = {layer.name: layer for layer in space.layers}
    out = []
    for info in table:
        ratios = by_name[info.name].prune_ratios if info.name in by_name else (0.0,)
        found: dict[int, float] = {}
        for r in sorted(ratios):
            found.setdefault(kept_count(info.channels, r, space.channel_multiple), r)
        out.append(found)
    return out


def _probe_plan(table: LayerTable, fixed: Mapping[int, LatencyOption], multiple: int,
                ratios: Sequence[Mapping[int, float]]) -> CompressionPlan:
    """A plan with the given layers at the given options and the rest fp32."""
    layers = list(table)
    specs = {}
    for index, option in fixed.items():
        info = layers[index]
        ratio = ratios[index][option.keep]
        bits = _PROBE_BITS if option.integer else None
        specs[info.name] = LayerSpec(bits, INT_ACT_BITS if bits else None, ratio)
    return CompressionPlan(specs, channel_multiple=multiple)


def cache_dir() -> Path:
    root = os.environ.get("AUTOQUANT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "autoquant"


@dataclass
class LatencyModel:
    """Single- and pair-option latency ratios of one network on one target."""

    options: list[list[LatencyOption]]
    singles: list[dict[LatencyOption, float]]
    pairs: list[dict[tuple[LatencyOption, LatencyOption], float]]
    key: str = ""
    measured_s: float = 0.0
    observations: list[tuple[float, float]] = field(default_factory=list)  # (raw prediction, measured)
    errors: list[float] = field(default_factory=list)  # |corrected prediction - measured| / measured, before

    # --- prediction ---------------------------------------------------------------------

    def raw(self, chosen: Sequence[LatencyOption]) -> float:
        """The uncorrected prediction for one option per layer."""
        n = len(chosen)
        if n == 1:
            return self.singles[0][chosen[0]]
        total = 1.0
        for i in range(n - 1):
            total += self.pairs[i][(chosen[i], chosen[i + 1])] - 1.0
        for i in range(1, n - 1):
            total -= self.singles[i][chosen[i]] - 1.0
        return total

    @property
    def correction(self) -> float:
        """Median measured / predicted over the real trials seen (1 before any)."""
        if not self.observations:
            return 1.0
        return float(np.median([m / p for p, m in self.observations if p > 0]))

    def predict_options(self, chosen: Sequence[LatencyOption]) -> float:
        return self.correction * self.raw(chosen)

    def predict(self, table: LayerTable, plan: CompressionPlan) -> float:
        """Predicted latency ratio of ``plan`` (to fp32) on the target."""
        return self.predict_options([option_of(table, plan, i) for i in range(len(self.options))])

    def observe(self, table: LayerTable, plan: CompressionPlan, measured: float) -> float:
        """Take in a real trial's measured ratio; returns the relative error the model made
        on it before seeing it."""
        chosen = [option_of(table, plan, i) for i in range(len(self.options))]
        raw = self.raw(chosen)
        error = abs(self.correction * raw - measured) / measured
        self.errors.append(float(error))
        self.observations.append((raw, float(measured)))
        return float(error)

    # --- measuring ------------------------------------------------------------------------

    @classmethod
    def measure(cls, table: LayerTable, space: Any, ratio_of: Callable[[CompressionPlan], float], *,
                key: str = "", log: Callable[[str], None] = lambda s: None,
                fp32_is_reference: bool = True) -> LatencyModel:
        """Measure every single and adjacent pair of options; ``ratio_of(plan)`` builds the
        plan and returns its latency ratio to fp32 on the target.

        ``fp32_is_reference``: the unchanged network is the reference the ratios are taken
        to, 1.0 by definition. A second runtime's ratios are to fp32 on the first, so its own
        fp32 (LiteRT's: 0.80-0.83 of onnxruntime's instructions on emulated Arm) is measured
        like any probe and stands for every layer left as it is."""
        start = time.perf_counter()
        options = latency_options(table, space)
        ratios = keep_ratios(table, space)
        n = len(options)
        multiple = space.channel_multiple
        memo: dict[tuple[tuple[int, LatencyOption], ...], float] = {}

        def measure(fixed: dict[int, LatencyOption]) -> float:
            layers = list(table)
            # options that leave a layer as fp32 is are dropped from the probe key
            real = tuple(sorted((i, o) for i, o in fixed.items()
                                if o.integer or o.keep < layers[i].channels))
            if not real and fp32_is_reference:
                return 1.0
            if real not in memo:
                memo[real] = float(ratio_of(_probe_plan(table, dict(real), multiple, ratios)))
            return memo[real]

        singles = [{o: measure({i: o}) for o in options[i]} for i in range(n)]
        pairs = []
        for i in range(n - 1):
            log(f"latency model: layers {i + 1}-{i + 2} of {n}")
            pairs.append({(a, b): measure({i: a, i + 1: b}) for a in options[i] for b in options[i + 1]})
        return cls(options=options, singles=singles, pairs=pairs, key=key,
                   measured_s=time.perf_counter() - start)

    @property
    def probes(self) -> int:
        return sum(len(s) for s in self.singles) + sum(len(p) for p in self.pairs)

    # --- storage --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LATENCY_MODEL_FORMAT, "version": LATENCY_MODEL_VERSION, "key": self.key,
            "measured_s": self.measured_s,
            "options": [[o.key() for o in layer] for layer in self.options],
            "singles": [{o.key(): v for o, v in layer.items()} for layer in self.singles],
            "pairs": [{f"{a.key()}|{b.key()}": v for (a, b), v in layer.items()} for layer in self.pairs],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyModel:
        if data.get("format") != LATENCY_MODEL_FORMAT or data.get("version") != LATENCY_MODEL_VERSION:
            raise ValueError("not a latency model of this autoquant version")
        options = [[LatencyOption.parse(t) for t in layer] for layer in data["options"]]
        singles = [{LatencyOption.parse(k): float(v) for k, v in layer.items()} for layer in data["singles"]]
        pairs = []
        for layer in data["pairs"]:
            table: dict[tuple[LatencyOption, LatencyOption], float] = {}
            for k, v in layer.items():
                a, b = k.split("|")
                table[(LatencyOption.parse(a), LatencyOption.parse(b))] = float(v)
            pairs.append(table)
        return cls(options=options, singles=singles, pairs=pairs, key=str(data.get("key", "")),
                   measured_s=float(data.get("measured_s", 0.0)))

    @staticmethod
    def cache_key(policy_sha256: str, target_fingerprint: str, options: Iterable[Iterable[LatencyOption]], *,
                  fp32_measured: bool = False) -> str:
        """``fp32_measured`` (a second runtime's model) changes the key: such models stored
        before fp32 was measured for them took it as 1.0 and are measured again."""
        data: dict[str, Any] = {"policy": policy_sha256, "target": target_fingerprint,
                                "options": [[o.key() for o in layer] for layer in options]}
        if fp32_measured:
            data["fp32"] = "measured"
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @classmethod
    def load_or_measure(cls, table: LayerTable, space: Any, ratio_of: Callable[[CompressionPlan], float], *,
                        policy_sha256: str, target_fingerprint: str, folder: Path | None = None,
                        log: Callable[[str], None] = lambda s: None, fp32_is_reference: bool = True) -> LatencyModel:
        """The stored model of this network, target and options, or a new one measured now
        (and stored for the next run). ``fp32_is_reference``: see ``measure``."""
        key = cls.cache_key(policy_sha256, target_fingerprint, latency_options(table, space),
                            fp32_measured=not fp32_is_reference)
        path = (folder or cache_dir() / "latency") / f"{key}.json"
        if path.is_file() and not path.is_symlink():
            try:
                model = cls.from_json(loads_json(read_file_in(path.parent, path.name, what=str(path),
                                                              error=UsageError, max_bytes=16 << 20),
                                                 what=str(path), error=UsageError))
                if model.key == key:
                    return model
            except (AutoquantError, ValueError, KeyError, TypeError, AttributeError):
                pass  # unreadable, hostile or of another version: measure again
        model = cls.measure(table, space, ratio_of, key=key, log=log, fp32_is_reference=fp32_is_reference)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, model.to_json())
        except OSError:
            pass  # a read-only cache costs the next run a measurement, nothing else
        return model
