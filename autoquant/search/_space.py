"""Search spaces: per-layer choices of weight bits and pruning ratio, from TOML."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoquant._limits import MAX_CHANNEL_MULTIPLE, MAX_CHOICES, check_integer
from autoquant._resources import find_toml, resource_dir, shipped_tomls
from autoquant.compress import FLOAT, INT_ACT_BITS, WEIGHT_BITS, CompressionPlan, LayerSpec
from autoquant.errors import UsageError
from autoquant.policy import LayerTable

__all__ = ["LayerChoices", "SearchSpace", "available_spaces", "find_space", "load_space", "spaces_dir"]



def spaces_dir() -> Path:
    """``search_spaces/`` of this checkout."""
    return resource_dir("search_spaces")


def available_spaces() -> dict[str, Path]:
    return shipped_tomls("search_spaces")


@dataclass(frozen=True)
class LayerChoices:
    """What a search may pick for one layer. ``None`` in ``weight_bits`` is float."""

    name: str
    weight_bits: tuple[int | None, ...]
    prune_ratios: tuple[float, ...]

    @property
    def bits_param(self) -> str:
        return f"{self.name}.bits"

    @property
    def prune_param(self) -> str:
        return f"{self.name}.prune"

    def bits_choices(self) -> tuple[str, ...]:
        return tuple(FLOAT if b is None else str(b) for b in self.weight_bits)


@dataclass(frozen=True)
class SearchSpace:
    """The per-layer choices of one search, for one network."""

    name: str
    layers: tuple[LayerChoices, ...]
    channel_multiple: int = 8
    description: str = ""
    max_size_ratio: float | None = None  # budget: weight bytes / fp32 weight bytes
    max_macs_ratio: float | None = None  # budget: MACs / fp32 MACs
    runtimes: tuple[str, ...] = ()  # where the target offers several: the runtime is a choice too

    RUNTIME_PARAM = "runtime"

    def with_runtimes(self, runtimes: Sequence[str]) -> SearchSpace:
        """This space on a target with these runtimes (one runtime: no choice to make)."""
        import dataclasses

        return dataclasses.replace(self, runtimes=tuple(runtimes) if len(runtimes) > 1 else ())

    @property
    def method(self) -> str:
        return self.name

    def distributions(self) -> dict[str, Any]:
        """Optuna categorical distributions, one per free choice."""
        from optuna.distributions import CategoricalDistribution

        out: dict[str, Any] = {}
        for layer in self.layers:
            if len(layer.weight_bits) > 1:
                out[layer.bits_param] = CategoricalDistribution(layer.bits_choices())
            if len(layer.prune_ratios) > 1:
                out[layer.prune_param] = CategoricalDistribution(layer.prune_ratios)
        if self.runtimes:
            out[self.RUNTIME_PARAM] = CategoricalDistribution(self.runtimes)
        return out

    def plan(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan that trial parameters describe (fixed choices filled in)."""
        specs = {}
        for layer in self.layers:
            bits_text = str(params.get(layer.bits_param, layer.bits_choices()[0]))
            bits = None if bits_text == FLOAT else int(bits_text)
            ratio = float(params.get(layer.prune_param, layer.prune_ratios[0]))
            specs[layer.name] = LayerSpec(bits, None if bits is None else INT_ACT_BITS, ratio)
        runtime = str(params.get(self.RUNTIME_PARAM, self.runtimes[0])) if self.runtimes else None
        return CompressionPlan(specs, channel_multiple=self.channel_multiple, runtime=runtime)

    def params(self, plan: CompressionPlan) -> dict[str, Any]:
        """Trial parameters of a plan (the inverse of ``plan``)."""
        out: dict[str, Any] = {}
        dists = self.distributions()
        for layer in self.layers:
            spec = plan.spec(layer.name)
            if layer.bits_param in dists:
                out[layer.bits_param] = FLOAT if spec.weight_bits is None else str(spec.weight_bits)
            if layer.prune_param in dists:
                out[layer.prune_param] = spec.prune_ratio
        if self.runtimes:
            out[self.RUNTIME_PARAM] = plan.runtime or self.runtimes[0]
        return out

    @property
    def size(self) -> int:
        n = 1
        for layer in self.layers:
            n *= len(layer.weight_bits) * len(layer.prune_ratios)
        return n * max(1, len(self.runtimes))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "channel_multiple": self.channel_multiple,
            "layers": {layer.name: {"weight_bits": list(layer.bits_choices()),
                                    "prune_ratios": list(layer.prune_ratios)} for layer in self.layers},
            "budget": {"max_size_ratio": self.max_size_ratio, "max_macs_ratio": self.max_macs_ratio},
            **({"runtimes": list(self.runtimes)} if self.runtimes else {}),
        }


def _bits(value: Any, where: str) -> tuple[int | None, ...]:
    if not isinstance(value, list) or not value:
        raise UsageError(f"{where}: weight_bits must be a non-empty list such as [\"float\", 8, 4]")
    out: list[int | None] = []
    for v in value:
        if v == FLOAT:
            out.append(None)
        elif isinstance(v, int) and not isinstance(v, bool) and v in WEIGHT_BITS:
            out.append(v)
        else:
            raise UsageError(f"{where}: weight_bits entry {v!r} is not \"float\" or one of {list(WEIGHT_BITS)}")
    return tuple(dict.fromkeys(out))


def _ratios(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise UsageError(f"{where}: prune_ratios must be a non-empty list such as [0.0, 0.5]")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise UsageError(f"{where}: prune ratio {v!r} is not in [0, 1)")
        out.append(float(v))
    ratios = tuple(dict.fromkeys(out))
    if len(ratios) > MAX_CHOICES:
        raise UsageError(f"{where}: {len(ratios):,} prune ratios, over the cap of {MAX_CHOICES} choices per layer: "
                         "give a coarser grid such as [0.0, 0.25, 0.5, 0.75]")
    return ratios


def _matches(pattern: str, index: int, name: str, n_layers: int) -> bool:
    if pattern == "@first":
        return index == 0
    if pattern == "@last" or pattern == "@head":
        return index == n_layers - 1
    return fnmatch.fnmatchcase(name, pattern)


_KEYS = {"name", "description", "weight_bits", "prune_ratios", "channel_multiple", "override", "budget"}
_BUDGET_KEYS = {"max_size_ratio", "max_macs_ratio"}
_OVERRIDE_KEYS = {"layers", "weight_bits", "prune_ratios"}


def find_space(name_or_path: str) -> Path:
    """The TOML file of a space named in ``search_spaces/``, or given as a path."""
    try:
        return find_toml(name_or_path, "search_spaces", what="search space")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_space(name_or_path: str, table: LayerTable, *,
               accelerated_precisions: Sequence[str] = ("fp32", "int8")) -> SearchSpace:
    """A space by name (``search_spaces/NAME.toml``) or TOML path, applied to ``table``.

    Overrides apply in order, by layer-name glob or ``@first`` / ``@last``. The action
    head is never pruned. A target that accelerates no integer precision narrows
    every layer to float.
    """
    path = find_space(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: not a readable TOML search space ({exc})") from exc
    unknown = set(data) - _KEYS
    if unknown:
        raise UsageError(f"{path}: unknown keys {sorted(unknown)}; a space takes {sorted(_KEYS)}")
    bits = _bits(data.get("weight_bits", [FLOAT]), str(path))
    ratios = _ratios(data.get("prune_ratios", [0.0]), str(path))
    multiple = check_integer(data.get("channel_multiple", 8), f"{path}: channel_multiple", 1, MAX_CHANNEL_MULTIPLE)
    budget = data.get("budget", {})
    if not isinstance(budget, dict) or set(budget) - _BUDGET_KEYS:
        raise UsageError(f"{path}: [budget] takes {sorted(_BUDGET_KEYS)}")
    for key, value in budget.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise UsageError(f"{path}: budget {key} must be in (0, 1], got {value!r}")
    integer_ok = any(p.startswith("int") for p in accelerated_precisions)
    names = list(table.names)
    per_layer = {name: [bits, ratios] for name in names}
    overrides = data.get("override", [])
    if not isinstance(overrides, list):
        raise UsageError(f"{path}: [[override]] entries must be tables")
    for i, override in enumerate(overrides):
        where = f"{path} override {i + 1}"
        if not isinstance(override, dict) or set(override) - _OVERRIDE_KEYS or "layers" not in override:
            raise UsageError(f"{where}: an override takes 'layers' (a pattern or list) and "
                             "optionally 'weight_bits', 'prune_ratios'")
        patterns = override["layers"] if isinstance(override["layers"], list) else [override["layers"]]
        hit = [n for idx, n in enumerate(names) if any(_matches(str(p), idx, n, len(names)) for p in patterns)]
        if not hit:
            raise UsageError(f"{where}: pattern {patterns} matches no layer of {names}")
        for name in hit:
            if "weight_bits" in override:
                per_layer[name][0] = _bits(override["weight_bits"], where)
            if "prune_ratios" in override:
                per_layer[name][1] = _ratios(override["prune_ratios"], where)
    layers = []
    for name in names:
        layer_bits, layer_ratios = per_layer[name]
        if not integer_ok:
            layer_bits = (None,)
        if not table[name].prunable:
            layer_ratios = (0.0,)
        layers.append(LayerChoices(name, tuple(layer_bits), tuple(layer_ratios)))
    return SearchSpace(name=str(data.get("name", path.stem)), layers=tuple(layers), channel_multiple=multiple,
                       description=str(data.get("description", "")),
                       max_size_ratio=budget.get("max_size_ratio"), max_macs_ratio=budget.get("max_macs_ratio"))
