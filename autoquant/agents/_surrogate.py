"""What the model-based agents (ILP, meta-RL) search against instead of real trials.

- **Latency**: the target's measured ``LatencyModel`` (every layer option alone and
  every adjacent pair, in context), corrected by every real trial.
- **Sensitivity**: per layer and choice, the relative squared output error
  (``output_mse``) against fp32 on the held-out states of the network with only that
  layer changed. Measured over random joint plans of the Pong CNN and the LunarLander
  MLP (``benchmarks/results/additivity.md``, 40 plans each), the sum of these singles
  ranks the plans' own error with Spearman 0.99 and 0.98 and matches it (median ratio
  1.02), where summed action disagreement does not (0.89 on Pong, 0.46 on
  LunarLander): it is the quantity an additive bound can be put on.
  Stored in the run folder (``sensitivities.json``).
- **Boundary**: where on that sum the retention floor lies is learnt from the run's
  real trials: the largest summed sensitivity of a plan found feasible and the smallest
  of a plan found infeasible (played below the floor, or screened out by the proxy)
  bracket it, and the next bound is their geometric mean.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import write_json
from autoquant._untrusted import loads_json, read_file_in
from autoquant.errors import AutoquantError, UsageError
from autoquant.compress import INT_ACT_BITS, CompressionPlan, LayerSpec
from autoquant.errors import AutoquantError
from autoquant.agents._latency import LatencyModel
from autoquant.search import SearchProblem, SearchSpace, TrialResult

__all__ = ["Boundary", "Choice", "Surrogate", "layer_choices", "plan_of", "sensitivities"]

SENSITIVITY_FORMAT = "autoquant.sensitivities"
SENSITIVITY_VERSION = 2  # 2: output_mse on held-out states (1 was 1 - agreement on visited states)
SENSITIVITY_METRIC = "output_mse"
_FLOOR = 1e-6  # sensitivities below this are measurement zeros


@dataclass(frozen=True)
class Choice:
    """One layer's choice: weight bits (None: float) and pruning ratio."""

    bits: int | None
    ratio: float

    def spec(self) -> LayerSpec:
        return LayerSpec(self.bits, None if self.bits is None else INT_ACT_BITS, self.ratio)

    def key(self) -> str:
        return f"{'float' if self.bits is None else self.bits}@{self.ratio:g}"

    @property
    def identity(self) -> bool:
        return self.bits is None and self.ratio == 0.0


def layer_choices(space: SearchSpace) -> list[list[Choice]]:
    """Per layer of the space, every (bits, ratio) it allows."""
    return [[Choice(b, r) for b in layer.weight_bits for r in layer.prune_ratios] for layer in space.layers]


def plan_of(space: SearchSpace, picks: Sequence[Choice]) -> CompressionPlan:
    return CompressionPlan({layer.name: c.spec() for layer, c in zip(space.layers, picks)},
                           channel_multiple=space.channel_multiple)


def picks_of(space: SearchSpace, plan: CompressionPlan) -> list[Choice] | None:
    """The inverse of ``plan_of``; None when the plan leaves the space."""
    out = []
    for layer, choices in zip(space.layers, layer_choices(space)):
        spec = plan.spec(layer.name)
        choice = Choice(spec.weight_bits, float(spec.prune_ratio))
        if choice not in choices:
            return None
        out.append(choice)
    return out


def sensitivities(loss_of: Callable[[CompressionPlan], float], space: SearchSpace, *,
                  folder: Path | None = None) -> list[dict[Choice, float]]:
    """Per layer and choice: ``loss_of`` the plan with only that layer changed, which a search
    measures as ``output_mse`` (``SearchProblem.output_loss_of``); 0 for leaving it fp32.
    Stored in ``folder``/sensitivities.json and read back."""
    path = folder / "sensitivities.json" if folder is not None else None
    stored: dict[str, float] = {}
    if path is not None and path.is_file() and not path.is_symlink():
        try:
            data = loads_json(read_file_in(path.parent, path.name, what=str(path), error=UsageError,
                                           max_bytes=16 << 20), what=str(path), error=UsageError)
            if data.get("format") == SENSITIVITY_FORMAT and data.get("version") == SENSITIVITY_VERSION:
                stored = {str(k): float(v) for k, v in data["values"].items()}
            if not all(math.isfinite(v) and v >= 0.0 for v in stored.values()):
                stored = {}  # a loss is finite and >= 0: anything else was not measured here
        except (AutoquantError, ValueError, KeyError, TypeError, AttributeError):
            stored = {}  # unreadable or hostile: measured again
    out = []
    for layer, choices in zip(space.layers, layer_choices(space)):
        found: dict[Choice, float] = {}
        for choice in choices:
            if choice.identity:
                found[choice] = 0.0
                continue
            key = f"{layer.name}:{choice.key()}"
            if key not in stored:
                plan = CompressionPlan({layer.name: choice.spec()}, channel_multiple=space.channel_multiple)
                try:
                    stored[key] = float(loss_of(plan))
                except AutoquantError:
                    stored[key] = math.inf  # it does not even build
            found[choice] = stored[key]
        out.append(found)
    if path is not None:
        write_json(path, {"format": SENSITIVITY_FORMAT, "version": SENSITIVITY_VERSION,
                          "metric": SENSITIVITY_METRIC, "values": stored})
    return out


def latency_model(problem: SearchProblem, space: SearchSpace, runtime: str | None = None) -> LatencyModel:
    """The target's stored latency model of this network and space on ``runtime`` (default:
    the target's first), measured now if none is. Models are kept per (target, runtime)."""
    if runtime is None or runtime == problem.runtime:
        return LatencyModel.load_or_measure(
            problem.table, space, problem.latency_ratio,
            policy_sha256=hashlib.sha256(problem.reference_onnx).hexdigest(),
            target_fingerprint=problem.target_fingerprint)
    from autoquant.targets import target_fingerprint

    target = problem.target_of(CompressionPlan(runtime=runtime))
    return LatencyModel.load_or_measure(
        problem.table, space, lambda plan: problem.latency_ratio(plan.on(runtime)),
        policy_sha256=hashlib.sha256(problem.reference_onnx).hexdigest(),
        target_fingerprint=target_fingerprint(target), fp32_is_reference=False)


@dataclass
class Boundary:
    """Where the retention floor lies on summed sensitivity, bracketed by real trials."""

    top: float  # the largest sum the space allows
    start: float  # the first bound, before any trial
    feasible: list[float] = field(default_factory=list)
    infeasible: list[float] = field(default_factory=list)

    @property
    def low(self) -> float:
        return max(self.feasible, default=0.0)

    @property
    def high(self) -> float:
        above = [s for s in self.infeasible if s > self.low]
        return min(above, default=math.inf)

    def bound(self) -> float:
        low, high = self.low, self.high
        if low <= 0.0 and math.isinf(high):
            return self.start
        if low <= 0.0:
            return high / 4.0
        if math.isinf(high):
            return min(self.top, low * 4.0) if low < self.top else self.top
        return math.sqrt(low * high)

    def observe(self, loss: float, result: TrialResult | None, floor: float) -> None:
        """Take in a real trial of a plan whose summed sensitivity is ``loss``."""
        if result is None or not math.isfinite(loss):
            return
        if result.played:
            (self.feasible if result.feasible(floor) else self.infeasible).append(loss)
        elif result.skip_reason and not result.skip_reason.startswith("latency"):
            self.infeasible.append(loss)  # screened out by the proxy


class Surrogate:
    """Predicted latency and summed sensitivity of a plan, in milliseconds."""

    def __init__(self, space: SearchSpace, table: Any, model: LatencyModel,
                 sens: Sequence[Mapping[Choice, float]]) -> None:
        self.space = space
        self.table = table
        self.model = model
        self.sens = [dict(s) for s in sens]
        finite = [v for s in self.sens for v in s.values() if math.isfinite(v)]
        self.top = sum(max((v for v in s.values() if math.isfinite(v)), default=0.0) for s in self.sens)
        positive = sorted(v for v in finite if v > _FLOOR)
        smallest = positive[0] if positive else _FLOOR
        self.boundary = Boundary(top=max(self.top, _FLOOR), start=math.sqrt(smallest * max(self.top, smallest)))

    def loss(self, picks: Sequence[Choice]) -> float:
        return float(sum(s[c] for s, c in zip(self.sens, picks)))

    def latency(self, picks: Sequence[Choice]) -> float:
        return float(self.model.predict(self.table, plan_of(self.space, picks)))

    def observe(self, picks: Sequence[Choice], result: TrialResult | None, floor: float, *,
                cached: bool = False) -> None:
        """Correct the latency model and the boundary with a real trial's outcome."""
        if result is None:
            return
        if not cached:
            self.model.observe(self.table, plan_of(self.space, picks), result.latency_ratio)
        self.boundary.observe(self.loss(picks), result, floor)

    def report(self) -> dict[str, Any]:
        errors = self.model.errors
        return {"latency_model": self.model.key, "probes": self.model.probes,
                "median_error": float(np.median(errors)) if errors else None, "errors": errors,
                "boundary": {"low": self.boundary.low, "high": self.boundary.high,
                             "feasible": self.boundary.feasible, "infeasible": self.boundary.infeasible}}
