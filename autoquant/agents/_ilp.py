"""The ILP agent: measured sensitivities, a measured latency model, and an integer program.

As HAWQ-V3 and ModelOpt's AutoQuantize do: each layer's choices get a sensitivity (the
relative squared output error of the network with only that layer changed, which sums
over layers: see ``_surrogate``), the target gets a latency model (``_latency``), and an
integer program picks one choice per layer to minimise predicted latency subject to a
bound on summed sensitivity. Swept over bounds it gives a whole front of plans in
seconds (``scipy.optimize.milp``). Real trials then search the front by bisection for
the loosest bound whose plan keeps the floor, and spend what budget is left on the
front's neighbours there.

A played plan that misses the floor narrowly (``NEAR_MISS``) while beating the best
feasible latency is a near miss: the surrogate brought the search to the right region and
the episodes turned on details it does not see. Its one-layer (and one-runtime) neighbours
that the surrogate calls no riskier (summed sensitivity at most ``NEIGHBOUR_SLACK`` above
its own) and the latency model predicts faster than the best feasible plan are tried next,
fastest first. They are off the front: they cost a little latency or sensitivity that the
integer program would not spend (on emulated A76 the near miss's neighbour with int8 on the
last layer costs more instructions and 1.5 % more sensitivity, and kept the reward the near
miss lost).
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

__all__ = ["Choice", "ILPAgent", "front", "layer_choices", "neighbours", "plan_of", "sensitivities", "solve"]

FRONT_BOUNDS = 32  # sensitivity bounds swept for the front
NEAR_MISS = 0.05  # retention below the floor a played plan may miss by and still be a near miss
NEIGHBOUR_SLACK = 0.05  # a near miss's neighbours: summed sensitivity at most this much above its own (relative)


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


def neighbours(space: SearchSpace, table: Any, models: Mapping[str | None, LatencyModel],
               sens: Sequence[Mapping[Choice, float]], picks: Sequence[Choice], runtime: str | None,
               faster_than: float | None) -> list[tuple[list[Choice], str | None]]:
    """The plans one layer's choice (or the runtime) away from ``picks`` on ``runtime`` whose
    summed sensitivity is at most ``NEIGHBOUR_SLACK`` above its own and whose predicted
    latency beats ``faster_than`` (None: any), fastest predicted first."""
    def summed(p: Sequence[Choice]) -> float:
        return float(sum(s[c] for s, c in zip(sens, p)))

    limit = summed(picks) * (1.0 + NEIGHBOUR_SLACK)
    out: list[tuple[float, list[Choice], str | None]] = []
    candidates: list[tuple[list[Choice], str | None]] = [(list(picks), r) for r in models if r != runtime]
    for i, layer in enumerate(layer_choices(space)):
        candidates += [([*picks[:i], c, *picks[i + 1:]], runtime) for c in layer if c != picks[i]]
    for p, r in candidates:
        value = summed(p)
        if not math.isfinite(value) or value > limit:
            continue
        plan = plan_of(space, p)
        if plan.is_identity and r == next(iter(models)):
            continue  # the reference itself
        predicted = models[r].predict(table, plan)
        if faster_than is None or predicted < faster_than:
            out.append((predicted, p, r))
    out.sort(key=lambda e: e[0])
    return [(p, r) for _, p, r in out]


class ILPAgent:
    """Bisection over the ILP front, then near misses' neighbours and the front's
    neighbourhood, then random plans."""

    name = "ilp"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.rng = np.random.default_rng(ctx.run_seed)
        self._sampler = ProposalSampler()
        # Why each plan was tried, in order: "bisection", "near miss", "front" or "random".
        self.proposed: list[tuple[str, list[Choice], str | None]] = []

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
        floor = runner.settings.min_retention
        misses: list[tuple[list[Choice], str | None]] = []  # near misses whose neighbours are not queued yet

        def attempt(picks: Sequence[Choice], runtime: str | None, why: str) -> TrialOutcome | None:
            tried.add((*picks, runtime))
            self.proposed.append((why, list(picks), runtime))
            plan = plan_of(space, picks).on(runtime)
            outcome = runner.run_trial(space.params(plan), proposed_as=why)
            if outcome is not None and outcome.result is not None and not outcome.cached:
                models[runtime].observe(table, plan, outcome.result.latency_ratio)
            result = outcome.result if outcome is not None else None
            if result is not None and result.played and not outcome.feasible and result.retention is not None \
                    and result.retention >= floor - NEAR_MISS \
                    and (runner.best_latency is None or result.latency_ratio < runner.best_latency):
                misses.append((list(picks), runtime))
            return outcome

        def near() -> list[tuple[list[Choice], str | None]]:
            """The untried neighbours of the near misses found since last asked."""
            found: list[tuple[list[Choice], str | None]] = []
            queued: set[tuple[Any, ...]] = set()
            while misses:
                picks, runtime = misses.pop(0)
                for p, r in neighbours(space, table, models, sens, picks, runtime, runner.best_latency):
                    if (*p, r) not in tried and (*p, r) not in queued:
                        queued.add((*p, r))
                        found.append((p, r))
            return found

        # Bisection for the loosest bound whose plan keeps the floor.
        low, high = 0, len(plans) - 1
        best: int | None = None
        while low <= high and runner.remaining() > 0:
            mid = (low + high) // 2
            outcome = attempt(plans[mid][1], plans[mid][2], "bisection")
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
        queue = [(plans[k][1], plans[k][2], "front") for k in order if (*plans[k][1], plans[k][2]) not in tried]
        choices = layer_choices(space)
        while runner.remaining() > 0:
            queue[:0] = [(p, r, "near miss") for p, r in near()]  # a near miss's neighbours before the rest
            if queue:
                picks, runtime, why = queue.pop(0)
                if (*picks, runtime) in tried:
                    continue
            else:
                picks = [layer[int(self.rng.integers(len(layer)))] for layer in choices]
                runtime, why = runtimes[int(self.rng.integers(len(runtimes)))], "random"
                if plan_of(space, picks).is_identity and runtime == runtimes[0]:
                    tried.add((*picks, runtime))  # the reference itself: fp32 on the first runtime
                    continue
                if (*picks, runtime) in tried and len(tried) < space.size:
                    continue
            if attempt(picks, runtime, why) is None:
                return
