"""The ILP agent: measured sensitivities, a measured latency model, and an integer program.

As HAWQ-V3 and ModelOpt's AutoQuantize do: each layer's choices get a sensitivity (one
minus the proxy of the network with only that layer changed: agreement with fp32 on the
states the plan visits itself), the target gets a latency model (``_latency``), and an
integer program picks one choice per layer to minimise predicted latency subject to a
bound on summed sensitivity. Swept over bounds it gives a whole front of plans in
seconds (``scipy.optimize.milp``). Real trials then search the front by bisection for
the loosest bound whose plan keeps the floor, and spend what budget is left on the
front's neighbours there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import write_json
from autoquant.compress import INT_ACT_BITS, CompressionPlan, LayerSpec
from autoquant.errors import AutoquantError
from autoquant.search._agent import AgentContext
from autoquant.search._latency import LatencyModel, LatencyOption, latency_options, option_of
from autoquant.search._problem import SearchProblem
from autoquant.search._space import SearchSpace
from autoquant.search._study import ProposalSampler, SearchRunner, TrialOutcome

__all__ = ["Choice", "ILPAgent", "front", "sensitivities", "solve"]

SENSITIVITY_FORMAT = "autoquant.sensitivities"
FRONT_BOUNDS = 32  # sensitivity bounds swept for the front


@dataclass(frozen=True)
class Choice:
    """One layer's choice: weight bits (None: float) and pruning ratio."""

    bits: int | None
    ratio: float

    def spec(self) -> LayerSpec:
        return LayerSpec(self.bits, None if self.bits is None else INT_ACT_BITS, self.ratio)

    def key(self) -> str:
        return f"{'float' if self.bits is None else self.bits}@{self.ratio:g}"


def layer_choices(space: SearchSpace) -> list[list[Choice]]:
    return [[Choice(b, r) for b in layer.weight_bits for r in layer.prune_ratios] for layer in space.layers]


def plan_of(space: SearchSpace, picks: Sequence[Choice]) -> CompressionPlan:
    return CompressionPlan({layer.name: c.spec() for layer, c in zip(space.layers, picks)},
                           channel_multiple=space.channel_multiple)


def sensitivities(problem: SearchProblem, space: SearchSpace, *, folder: Path | None = None
                  ) -> list[dict[Choice, float]]:
    """Per layer and choice: 1 - the proxy of the network with only that layer changed
    (0 for leaving it fp32). Stored in ``folder``/sensitivities.json and read back."""
    path = folder / "sensitivities.json" if folder is not None else None
    stored: dict[str, float] = {}
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("format") == SENSITIVITY_FORMAT:
                stored = {str(k): float(v) for k, v in data["values"].items()}
        except (ValueError, KeyError, TypeError):
            stored = {}
    out = []
    for layer, choices in zip(space.layers, layer_choices(space)):
        found: dict[Choice, float] = {}
        for choice in choices:
            if choice.bits is None and choice.ratio == 0.0:
                found[choice] = 0.0
                continue
            key = f"{layer.name}:{choice.key()}"
            if key not in stored:
                plan = CompressionPlan({layer.name: choice.spec()}, channel_multiple=space.channel_multiple)
                try:
                    stored[key] = float(np.clip(1.0 - problem.proxy_of(plan), 0.0, 1.0))
                except AutoquantError:
                    stored[key] = 1.0  # it does not even build: as sensitive as can be
            found[choice] = stored[key]
        out.append(found)
    if path is not None:
        write_json(path, {"format": SENSITIVITY_FORMAT, "version": 1, "values": stored})
    return out


def solve(space: SearchSpace, table: Any, model: LatencyModel, sens: Sequence[Mapping[Choice, float]],
          bound: float) -> list[Choice] | None:
    """One choice per layer minimising the model's latency with summed sensitivity <= ``bound``
    (ties to the less sensitive); None when nothing fits."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    choices = layer_choices(space)
    options = latency_options(table, space)
    n = len(choices)
    # variables: x[i, c] (binary), then y[i, a, b] for adjacent pairs (continuous, forced integral)
    x_index: list[dict[Choice, int]] = []
    count = 0
    for layer in choices:
        x_index.append({c: count + j for j, c in enumerate(layer)})
        count += len(layer)
    y_index: list[dict[tuple[LatencyOption, LatencyOption], int]] = []
    for i in range(n - 1):
        pairs = {(a, b): count + j for j, (a, b) in enumerate((a, b) for a in options[i] for b in options[i + 1])}
        y_index.append(pairs)
        count += len(pairs)
    info = list(table)

    def option(i: int, c: Choice) -> LatencyOption:
        plan = CompressionPlan({info[i].name: c.spec()}, channel_multiple=space.channel_multiple)
        return option_of(table, plan, i)

    cost = np.zeros(count)
    total_sens = sum(max(s.values()) for s in sens) or 1.0
    for i in range(n):
        for c, j in x_index[i].items():
            cost[j] += 1e-4 * sens[i][c] / total_sens  # ties: the less sensitive
            if n == 1:
                cost[j] += model.singles[0][option(0, c)] - 1.0
            elif 0 < i < n - 1:
                cost[j] -= model.singles[i][option(i, c)] - 1.0
    for i in range(n - 1):
        for (a, b), j in y_index[i].items():
            cost[j] += model.pairs[i][(a, b)] - 1.0
    rows, lows, highs = [], [], []

    def row(entries: Mapping[int, float], low: float, high: float) -> None:
        r = np.zeros(count)
        for j, v in entries.items():
            r[j] += v
        rows.append(r)
        lows.append(low)
        highs.append(high)

    for i in range(n):
        row({j: 1.0 for j in x_index[i].values()}, 1.0, 1.0)
    for i in range(n - 1):
        for a in options[i]:
            entries = {j: 1.0 for (p, _), j in y_index[i].items() if p == a}
            for c, j in x_index[i].items():
                if option(i, c) == a:
                    entries[j] = entries.get(j, 0.0) - 1.0
            row(entries, 0.0, 0.0)
        for b in options[i + 1]:
            entries = {j: 1.0 for (_, q), j in y_index[i].items() if q == b}
            for c, j in x_index[i + 1].items():
                if option(i + 1, c) == b:
                    entries[j] = entries.get(j, 0.0) - 1.0
            row(entries, 0.0, 0.0)
    row({j: sens[i][c] for i in range(n) for c, j in x_index[i].items()}, -np.inf, bound)
    integrality = np.zeros(count)
    for i in range(n):
        integrality[list(x_index[i].values())] = 1
    result = milp(cost, constraints=LinearConstraint(np.array(rows), lows, highs), integrality=integrality,
                  bounds=Bounds(0.0, 1.0))
    if result.status != 0 or result.x is None:
        return None
    return [max(x_index[i], key=lambda c: result.x[x_index[i][c]]) for i in range(n)]


def front(space: SearchSpace, table: Any, model: LatencyModel, sens: Sequence[Mapping[Choice, float]],
          bounds: int = FRONT_BOUNDS) -> list[tuple[float, list[Choice]]]:
    """Distinct optimal plans over sensitivity bounds from 0 to the largest sum, each with the
    smallest bound that gives it; in order of that bound (safest first)."""
    top = sum(max(s.values()) for s in sens)
    seen: set[tuple[Choice, ...]] = set()
    out = []
    for bound in np.linspace(0.0, top, bounds):
        picks = solve(space, table, model, sens, float(bound))
        if picks is not None and tuple(picks) not in seen:
            seen.add(tuple(picks))
            out.append((float(bound), picks))
    return out


class ILPAgent:
    """Bisection over the ILP front, then the front's neighbourhood, then random plans."""

    name = "ilp"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.rng = np.random.default_rng(ctx.run_seed)
        self._sampler = ProposalSampler()

    def sampler(self) -> Any:
        return self._sampler

    def _model(self, runner: SearchRunner) -> LatencyModel:
        problem = runner.problem
        reference = problem.reference_onnx

        def ratio_of(plan: CompressionPlan) -> float:
            return problem.latency_ratio(plan)

        return LatencyModel.load_or_measure(
            problem.table, self.ctx.space, ratio_of, policy_sha256=hashlib.sha256(reference).hexdigest(),
            target_fingerprint=problem.target_fingerprint)

    def run(self, runner: SearchRunner) -> None:
        space, table = self.ctx.space, runner.problem.table
        model = self._model(runner)
        sens = sensitivities(runner.problem, space, folder=self.ctx.folder)
        plans = front(space, table, model, sens)
        plans = [(b, p) for b, p in plans if not plan_of(space, p).is_identity]
        tried: set[tuple[Choice, ...]] = set()
        try:
            self._search(runner, model, sens, plans, tried)
        finally:
            if self.ctx.folder is not None and model.errors:
                write_json(self.ctx.folder / "latency_model.json",
                           {**model.to_json(), "observations": model.observations, "errors": model.errors,
                            "median_error": float(np.median(model.errors))})

    def _search(self, runner: SearchRunner, model: LatencyModel, sens: Sequence[Mapping[Choice, float]],
                plans: list[tuple[float, list[Choice]]], tried: set[tuple[Choice, ...]]) -> None:
        space, table = self.ctx.space, runner.problem.table

        def attempt(picks: Sequence[Choice]) -> TrialOutcome | None:
            tried.add(tuple(picks))
            plan = plan_of(space, picks)
            outcome = runner.run_trial(space.params(plan))
            if outcome is not None and outcome.result is not None and not outcome.cached:
                model.observe(table, plan, outcome.result.latency_ratio)
            return outcome

        # Bisection for the loosest bound whose plan keeps the floor.
        low, high = 0, len(plans) - 1
        best: int | None = None
        while low <= high and runner.remaining() > 0:
            mid = (low + high) // 2
            outcome = attempt(plans[mid][1])
            if outcome is None:
                return
            result = outcome.result
            faster_exists = result is not None and not result.played and (result.skip_reason or "").startswith(
                "latency")
            if outcome.feasible or faster_exists:
                best = mid if outcome.feasible else best
                low = mid + 1
            else:
                high = mid - 1
        # Then the front around the boundary, nearest first, then random plans of the space.
        centre = best if best is not None else 0
        order = sorted(range(len(plans)), key=lambda k: (abs(k - centre), -k))
        queue = [plans[k][1] for k in order if tuple(plans[k][1]) not in tried]
        choices = layer_choices(space)
        while runner.remaining() > 0:
            if queue:
                picks = queue.pop(0)
            else:
                picks = [layer[int(self.rng.integers(len(layer)))] for layer in choices]
                if tuple(picks) in tried and len(tried) < space.size:
                    continue
            if attempt(picks) is None:
                return
