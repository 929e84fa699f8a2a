"""The ILP agent: measured sensitivities, a measured latency model, and an integer program.

As HAWQ-V3 and ModelOpt's AutoQuantize do: each layer's choices get a sensitivity (the
relative squared output error of the network with only that layer changed, which sums
over layers: see ``_surrogate``), the target gets a latency model (``_latency``), and an
integer program picks one choice per layer to minimise predicted latency subject to a
bound on summed sensitivity. Swept over bounds it gives a whole front of plans in
seconds (``scipy.optimize.milp``). Real trials then search the front by bisection for
the loosest bound whose plan keeps the floor, and spend what budget is left on the
front's neighbours there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autoquant._io import write_json
from autoquant.compress import CompressionPlan
from autoquant.search import AgentContext, ProposalSampler, SearchRunner, SearchSpace, TrialOutcome
from autoquant.agents._latency import LatencyModel, LatencyOption, latency_options, option_of
from autoquant.agents._surrogate import Choice, layer_choices, latency_model, plan_of, sensitivities

__all__ = ["Choice", "ILPAgent", "front", "layer_choices", "plan_of", "sensitivities", "solve"]

FRONT_BOUNDS = 32  # sensitivity bounds swept for the front


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _top(sens: Sequence[Mapping[Choice, float]]) -> float:
    """The largest summed sensitivity of a plan that builds."""
    return float(sum(max((v for v in s.values() if math.isfinite(v)), default=0.0) for s in sens))


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
    total_sens = _top(sens) or 1.0
    for i in range(n):
        for c, j in x_index[i].items():
            cost[j] += 1e-4 * _finite(sens[i][c]) / total_sens  # ties: the less sensitive
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
    row({j: _finite(sens[i][c]) for i in range(n) for c, j in x_index[i].items()}, -np.inf, bound)
    integrality = np.zeros(count)
    upper = np.ones(count)
    for i in range(n):
        integrality[list(x_index[i].values())] = 1
        for c, j in x_index[i].items():
            if not math.isfinite(sens[i][c]):
                upper[j] = 0.0  # a choice that does not build is never picked
    result = milp(cost, constraints=LinearConstraint(np.array(rows), lows, highs), integrality=integrality,
                  bounds=Bounds(0.0, upper))
    if result.status != 0 or result.x is None:
        return None
    return [max(x_index[i], key=lambda c: result.x[x_index[i][c]]) for i in range(n)]


def front(space: SearchSpace, table: Any, model: LatencyModel | Mapping[str | None, LatencyModel],
          sens: Sequence[Mapping[Choice, float]], bounds: int = FRONT_BOUNDS) -> list[tuple[float, list[Choice]]]:
    """Distinct optimal plans over sensitivity bounds from 0 to the largest sum (spaced
    geometrically: sensitivities span decades), each with the smallest bound that gives
    it; in order of that bound (safest first).

    With one latency model per runtime (``{runtime: model}``), each bound is solved on every
    runtime and the runtime whose plan the models predict fastest wins: entries are then
    ``(bound, picks, runtime)``. Sensitivities are the same on every runtime (their numerics
    agree to a quantization step: the runtimes' conformance suite)."""
    models = model if isinstance(model, Mapping) else {None: model}
    top = _top(sens)
    positive = [v for s in sens for v in s.values() if 0.0 < v < math.inf]
    grid = [0.0] if not positive else [0.0, *np.geomspace(min(positive), max(top, min(positive)), bounds - 1)]
    seen: set[tuple[Any, ...]] = set()
    out: list[Any] = []
    for bound in grid:
        best: tuple[float, list[Choice], str | None] | None = None
        for runtime, m in models.items():
            picks = solve(space, table, m, sens, float(bound))
            if picks is None:
                continue
            predicted = m.predict(table, plan_of(space, picks))
            if best is None or predicted < best[0]:
                best = (predicted, picks, runtime)
        if best is None:
            continue
        key = (*best[1], best[2])
        if key not in seen:
            seen.add(key)
            out.append((float(bound), best[1]) if not isinstance(model, Mapping) else (float(bound), best[1], best[2]))
    return out


def proposals(space: SearchSpace, table: Any, models: Mapping[str | None, LatencyModel],
              sens: Sequence[Mapping[Choice, float]]) -> list[tuple[float, list[Choice], str | None]]:
    """The front over every runtime's model, less the reference itself: fp32 on the first
    runtime. fp32 on another runtime is a plan like any other (LiteRT's fp32 costs 0.83 of
    onnxruntime's instructions on emulated A72)."""
    first = next(iter(models))
    return [(b, p, r) for b, p, r in front(space, table, models, sens)
            if not (plan_of(space, p).is_identity and r == first)]


class ILPAgent:
    """Bisection over the ILP front, then the front's neighbourhood, then random plans."""

    name = "ilp"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.rng = np.random.default_rng(ctx.run_seed)
        self._sampler = ProposalSampler()

    def sampler(self) -> Any:
        return self._sampler

    def run(self, runner: SearchRunner) -> None:
        space, table = self.ctx.space, runner.problem.table
        runtimes: tuple[str | None, ...] = space.runtimes or (None,)
        models = {r: latency_model(runner.problem, space, r) for r in runtimes}  # one per (target, runtime)
        sens = sensitivities(runner.problem.output_loss_of, space, folder=self.ctx.folder)
        plans = proposals(space, table, models, sens)
        tried: set[tuple[Any, ...]] = set()
        try:
            self._search(runner, models, sens, plans, tried)
        finally:
            for runtime, model in models.items():
                if self.ctx.folder is not None and model.errors:
                    name = "latency_model.json" if runtime in (None, runtimes[0]) else f"latency_model-{runtime}.json"
                    write_json(self.ctx.folder / name,
                               {**model.to_json(), "runtime": runtime, "observations": model.observations,
                                "errors": model.errors, "median_error": float(np.median(model.errors))})

    def _search(self, runner: SearchRunner, models: Mapping[str | None, LatencyModel],
                sens: Sequence[Mapping[Choice, float]], plans: list[tuple[float, list[Choice], str | None]],
                tried: set[tuple[Any, ...]]) -> None:
        space, table = self.ctx.space, runner.problem.table
        runtimes = list(models)

        def attempt(picks: Sequence[Choice], runtime: str | None) -> TrialOutcome | None:
            tried.add((*picks, runtime))
            plan = plan_of(space, picks).on(runtime)
            outcome = runner.run_trial(space.params(plan))
            if outcome is not None and outcome.result is not None and not outcome.cached:
                models[runtime].observe(table, plan, outcome.result.latency_ratio)
            return outcome

        # Bisection for the loosest bound whose plan keeps the floor.
        low, high = 0, len(plans) - 1
        best: int | None = None
        while low <= high and runner.remaining() > 0:
            mid = (low + high) // 2
            outcome = attempt(plans[mid][1], plans[mid][2])
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
        queue = [(plans[k][1], plans[k][2]) for k in order if (*plans[k][1], plans[k][2]) not in tried]
        choices = layer_choices(space)
        while runner.remaining() > 0:
            if queue:
                picks, runtime = queue.pop(0)
            else:
                picks = [layer[int(self.rng.integers(len(layer)))] for layer in choices]
                runtime = runtimes[int(self.rng.integers(len(runtimes)))]
                if (*picks, runtime) in tried and len(tried) < space.size:
                    continue
            if attempt(picks, runtime) is None:
                return
