"""The ILP agent's pieces: the latency model's algebra, the integer program against brute
force, and the front it sweeps; the agent itself runs in test_agents' conformance test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autoquant.search import load_space
from autoquant.agents._ilp import front, layer_choices, plan_of, solve
from autoquant.agents._latency import LatencyModel, latency_options, option_of


def _chain_cost(seed: int, options: list[list]) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """Per-layer and adjacent-pair latency terms of a network whose cost is exactly their sum."""
    rng = np.random.default_rng(seed)
    unary = {(i, o): float(rng.uniform(0.0, 0.3)) for i, layer in enumerate(options) for o in layer}
    pair = {(i, a, b): float(rng.uniform(0.0, 0.1)) for i in range(len(options) - 1)
            for a in options[i] for b in options[i + 1]}
    return unary, pair


@pytest.fixture(scope="module")
def pong_space(pong):  # type: ignore[no-untyped-def]
    from autoquant.policy import analyse

    table = analyse(pong)
    return table, load_space("joint", table)


def _model(table, space, seed: int = 0):  # type: ignore[no-untyped-def]
    options = latency_options(table, space)
    unary, pair = _chain_cost(seed, options)
    n = len(options)
    fp32 = [max(layer, key=lambda o: (not o.integer, o.keep)) for layer in options]

    def cost(chosen) -> float:  # type: ignore[no-untyped-def]
        return (sum(unary[(i, o)] for i, o in enumerate(chosen))
                + sum(pair[(i, chosen[i], chosen[i + 1])] for i in range(n - 1)))

    base = cost(fp32)

    def ratio_of(plan) -> float:  # type: ignore[no-untyped-def]
        return 1.0 + cost([option_of(table, plan, i) for i in range(n)]) - base

    return LatencyModel.measure(table, space, ratio_of), ratio_of


def test_the_model_is_exact_for_chain_additive_costs(pong_space) -> None:  # type: ignore[no-untyped-def]
    table, space = pong_space
    model, ratio_of = _model(table, space)
    rng = np.random.default_rng(1)
    choices = layer_choices(space)
    for _ in range(50):
        plan = plan_of(space, [layer[int(rng.integers(len(layer)))] for layer in choices])
        assert model.predict(table, plan) == pytest.approx(ratio_of(plan), abs=1e-9)
    again = LatencyModel.from_json(model.to_json())
    assert again.predict(table, plan) == pytest.approx(model.predict(table, plan))
    # end-to-end measurements correct it: a target 10 % slower than measured is learnt
    for _ in range(5):
        plan = plan_of(space, [layer[int(rng.integers(len(layer)))] for layer in choices])
        model.observe(table, plan, 1.1 * ratio_of(plan))
    assert model.correction == pytest.approx(1.1)
    assert model.errors[0] == pytest.approx(0.1 / 1.1)


@pytest.fixture(scope="module")
def cartpole_space(cartpole_dqn):  # type: ignore[no-untyped-def]
    from autoquant.policy import analyse

    table = analyse(cartpole_dqn)
    return table, load_space("joint", table)


def test_the_integer_program_finds_the_brute_force_optimum(cartpole_space) -> None:  # type: ignore[no-untyped-def]
    table, space = cartpole_space
    model, ratio_of = _model(table, space, seed=3)
    choices = layer_choices(space)
    rng = np.random.default_rng(2)
    sens = [{c: (0.0 if c.bits is None and c.ratio == 0 else float(rng.uniform(0, 0.4))) for c in layer}
            for layer in choices]
    everything = list(itertools.product(*choices))  # 16 x 16 x 4 plans
    latency = {p: ratio_of(plan_of(space, p)) for p in everything}
    for bound in (0.0, 0.2, 0.5, 1.2):
        picks = solve(space, table, model, sens, bound)
        assert picks is not None
        total = sum(sens[i][c] for i, c in enumerate(picks))
        assert total <= bound + 1e-9
        fits = [p for p in everything if sum(sens[i][c] for i, c in enumerate(p)) <= bound + 1e-9]
        best = min(latency[p] for p in fits)
        assert ratio_of(plan_of(space, picks)) == pytest.approx(best, abs=1e-6)
    plans = front(space, table, model, sens, bounds=8)
    bounds = [b for b, _ in plans]
    assert bounds == sorted(bounds) and plan_of(space, plans[0][1]).is_identity
    latencies = [ratio_of(plan_of(space, p)) for _, p in plans]
    assert all(b <= a + 1e-9 for a, b in zip(latencies, latencies[1:]))  # looser bounds, faster plans


def test_with_a_model_per_runtime_each_bound_takes_the_faster_runtime(cartpole_space) -> None:  # type: ignore[no-untyped-def]
    """Two runtimes with different costs: at every bound the front holds the plan of the
    runtime whose optimum is fastest, and that is the brute-force optimum over both."""
    table, space = cartpole_space
    (a, ratio_a), (b, ratio_b) = _model(table, space, seed=3), _model(table, space, seed=4)
    choices = layer_choices(space)
    rng = np.random.default_rng(2)
    sens = [{c: (0.0 if c.bits is None and c.ratio == 0 else float(rng.uniform(0, 0.4))) for c in layer}
            for layer in choices]
    everything = list(itertools.product(*choices))
    plans = front(space, table, {"one": a, "two": b}, sens, bounds=8)
    assert {r for _, _, r in plans} <= {"one", "two"} and len(plans) >= 2
    ratio = {"one": ratio_a, "two": ratio_b}
    for bound, picks, runtime in plans:
        fits = [p for p in everything if sum(sens[i][c] for i, c in enumerate(p)) <= bound + 1e-9]
        best = min(min(ratio_a(plan_of(space, p)), ratio_b(plan_of(space, p))) for p in fits)
        assert ratio[runtime](plan_of(space, picks)) == pytest.approx(best, abs=1e-6)
