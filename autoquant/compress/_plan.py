"""CompressionPlan: per-layer bit widths and structured pruning ratios, as versioned JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoquant._untrusted import loads_json, short_repr
from autoquant.errors import PlanError

__all__ = ["ACT_BITS", "FLOAT", "INT_ACT_BITS", "PLAN_FORMAT", "WEIGHT_BITS", "CompressionPlan", "LayerSpec"]

PLAN_FORMAT = "autoquant.plan"
PLAN_VERSION = 1
WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)
INT_ACT_BITS = 8  # activations of integer layers: what the int8 kernels take
ACT_BITS = (INT_ACT_BITS,)  # activation bit widths a plan may name
FLOAT = "float"  # a plan's word for "not quantized"
_PLAN_KEYS = frozenset({"format", "version", "channel_multiple", "layers", "runtime"})
_MAX_PLAN_BYTES = 16 << 20


@dataclass(frozen=True)
class LayerSpec:
    """What to do to one layer. ``None`` bits mean float (fp32)."""

    weight_bits: int | None = None
    act_bits: int | None = None
    prune_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.weight_bits is not None and self.weight_bits not in WEIGHT_BITS:
            raise PlanError(f"weight_bits must be one of {list(WEIGHT_BITS)} or \"float\", got {short_repr(self.weight_bits)}")
        if self.act_bits is not None and self.act_bits not in ACT_BITS:
            raise PlanError(f"act_bits must be one of {list(ACT_BITS)} or \"float\", got {short_repr(self.act_bits)}")
        if self.act_bits is not None and self.weight_bits is None:
            raise PlanError("act_bits needs weight_bits: integer activations feed an integer kernel only")
        if not isinstance(self.prune_ratio, (int, float)) or not 0.0 <= self.prune_ratio < 1.0:
            raise PlanError(f"prune_ratio must be in [0, 1), got {short_repr(self.prune_ratio)}")

    @property
    def integer(self) -> bool:
        """Runs an integer kernel (weights and input activations quantized)."""
        return self.weight_bits is not None and self.act_bits is not None

    @property
    def identity(self) -> bool:
        return self.weight_bits is None and self.prune_ratio == 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "weight_bits": FLOAT if self.weight_bits is None else self.weight_bits,
            "act_bits": FLOAT if self.act_bits is None else self.act_bits,
            "prune_ratio": self.prune_ratio,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "") -> LayerSpec:
        """A spec from its JSON object; ``where`` (e.g. "layer 'fc1': ") prefixes errors."""
        try:
            return cls._from_json(data)
        except PlanError as exc:
            raise PlanError(f"{where}{exc}") from None

    @classmethod
    def _from_json(cls, data: Mapping[str, Any]) -> LayerSpec:
        unknown = set(data) - {"weight_bits", "act_bits", "prune_ratio"}
        if unknown:
            raise PlanError(f"unknown keys {short_repr(sorted(map(str, unknown)))}: a layer takes weight_bits, "
                            "act_bits, prune_ratio")

        def bits(key: str) -> int | None:
            value = data.get(key, FLOAT)
            if value is None or (isinstance(value, str) and value == FLOAT):
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise PlanError(f"{key} must be an integer or \"float\", got {short_repr(value)}")
            return value

        ratio = data.get("prune_ratio", 0.0)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise PlanError(f"prune_ratio must be a number in [0, 1), got {short_repr(ratio)}")
        return cls(weight_bits=bits("weight_bits"), act_bits=bits("act_bits"),
                   prune_ratio=float(ratio) if 0.0 <= ratio < 1.0 else ratio)


@dataclass(frozen=True)
class CompressionPlan:
    """Layer name -> LayerSpec. Layers not named stay fp32 and unpruned. ``runtime``: the
    runtime the plan is deployed with, where a target offers several (None: the target's)."""

    layers: Mapping[str, LayerSpec] = field(default_factory=dict)
    channel_multiple: int = 8
    runtime: str | None = None

    def __post_init__(self) -> None:
        if self.channel_multiple < 1:
            raise PlanError(f"channel_multiple must be >= 1, got {self.channel_multiple}")
        object.__setattr__(self, "layers", dict(self.layers))

    def spec(self, name: str) -> LayerSpec:
        return self.layers.get(name, LayerSpec())

    @property
    def is_identity(self) -> bool:
        return all(s.identity for s in self.layers.values())

    @property
    def quantized(self) -> bool:
        return any(s.weight_bits is not None for s in self.layers.values())

    def without_pruning(self) -> CompressionPlan:
        """The same bit widths with every prune ratio 0 (for a network already cut)."""
        return CompressionPlan({name: LayerSpec(s.weight_bits, s.act_bits, 0.0) for name, s in self.layers.items()},
                               channel_multiple=self.channel_multiple, runtime=self.runtime)

    def on(self, runtime: str | None) -> CompressionPlan:
        """The same layers deployed with ``runtime``."""
        return CompressionPlan(self.layers, channel_multiple=self.channel_multiple, runtime=runtime)

    def validate(self, table: Any) -> CompressionPlan:
        """Check the plan against a LayerTable: known names, no pruned action head."""
        names = list(table.names)
        for name, spec in self.layers.items():
            if name not in names:
                raise PlanError(f"plan names layer {name!r}, which the network does not have; layers are {names}")
            info = table[name]
            if spec.prune_ratio > 0 and not info.prunable:
                why = "is the action head" if info.action_head else "is not prunable"
                raise PlanError(f"layer {name!r} {why} and cannot be pruned: set its prune_ratio to 0")
        return self

    @classmethod
    def uniform(cls, table: Any, *, weight_bits: int | None = 8, act_bits: int | None = 8,
                prune_ratio: float = 0.0, channel_multiple: int = 8) -> CompressionPlan:
        """The same spec on every layer (no pruning of the action head)."""
        layers = {
            layer.name: LayerSpec(weight_bits, act_bits, prune_ratio if layer.prunable else 0.0)
            for layer in table
        }
        return cls(layers, channel_multiple=channel_multiple)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "channel_multiple": self.channel_multiple,
            "layers": {name: spec.to_json() for name, spec in self.layers.items()},
            **({"runtime": self.runtime} if self.runtime is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> CompressionPlan:
        """A plan from its JSON value; anything else than the format raises PlanError."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not an autoquant plan: expected a JSON object with \"format\": \"{PLAN_FORMAT}\"")
        version = data.get("version")
        if isinstance(version, bool) or version != PLAN_VERSION:
            raise PlanError(f"plan version {short_repr(version)} is not supported (this autoquant reads "
                            f"{PLAN_VERSION})")
        unknown = set(data) - _PLAN_KEYS
        if unknown:
            raise PlanError(f"unknown plan keys {short_repr(sorted(map(str, unknown)))}: a plan takes "
                            f"{', '.join(sorted(_PLAN_KEYS))}")
        layers = data.get("layers")
        if not isinstance(layers, dict):
            raise PlanError("a plan's \"layers\" must be an object of layer name -> spec")
        specs = {}
        for name, spec in layers.items():
            if not isinstance(spec, dict):
                raise PlanError(f"layer {short_repr(name)}: expected an object, got {type(spec).__name__}")
            specs[name] = LayerSpec.from_json(spec, where=f"layer {short_repr(name)}: ")
        multiple = data.get("channel_multiple", 8)
        if isinstance(multiple, bool) or not isinstance(multiple, int):
            raise PlanError(f"channel_multiple must be an integer, got {short_repr(multiple)}")
        runtime = data.get("runtime")
        if runtime is not None and (not isinstance(runtime, str) or not runtime.isidentifier() or len(runtime) > 40):
            raise PlanError(f"runtime must be a runtime's name such as \"litert\", got {short_repr(runtime)}")
        return cls(specs, channel_multiple=multiple, runtime=runtime)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CompressionPlan:
        path = Path(path)
        if not path.is_file():
            if path.exists():  # a FIFO would block the read, a device never end
                raise PlanError(f"the plan {path} is not a regular file (a FIFO, a device or a folder): give the "
                                "plan's JSON file")
            raise PlanError(f"plan file not found: {path}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PlanError(f"cannot read the plan file {path}: {exc.strerror}") from None
        return cls.from_json(loads_json(raw, what=f"plan {path}", error=PlanError, max_bytes=_MAX_PLAN_BYTES))

    def describe(self) -> str:
        """A compact one-line summary, e.g. 'conv1 w8a8 p0.50, fc1 w4a8'."""
        parts = []
        for name, s in self.layers.items():
            if s.identity:
                continue
            text = name
            if s.weight_bits is not None:
                text += f" w{s.weight_bits}" + (f"a{s.act_bits}" if s.act_bits else "af")
            if s.prune_ratio:
                text += f" p{s.prune_ratio:.2f}"
            parts.append(text)
        return (", ".join(parts) or "fp32") + (f" on {self.runtime}" if self.runtime else "")
