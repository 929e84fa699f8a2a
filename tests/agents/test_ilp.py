"""The ILP agent's pieces: the latency model's algebra, the integer program against brute
force, and the front it sweeps; the agent itself runs in test_agents' conformance test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autoquant.search import load_space
from autoquant.agents._ilp import NEIGHBOUR_SLACK, front, layer_choices, neighbours, plan_of, proposals, solve
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


def _model(table, space, seed: int = 0, base: float = 1.0, fp32_is_reference: bool = True):  # type: ignore[no-untyped-def]
    """A latency model measured on a chain-additive cost whose unchanged network costs
    ``base`` (a second runtime's fp32, against the first runtime's)."""
    options = latency_options(table, space)
    unary, pair = _chain_cost(seed, options)
    n = len(options)
    fp32 = [max(layer, key=lambda o: (not o.integer, o.keep)) for layer in options]

    def cost(chosen) -> float:  # type: ignore[no-untyped-def]
        return (sum(unary[(i, o)] for i, o in enumerate(chosen))
                + sum(pair[(i, chosen[i], chosen[i + 1])] for i in range(n - 1)))

    fp32_cost = cost(fp32)

    def ratio_of(plan) -> float:  # type: ignore[no-untyped-def]
        return base + cost([option_of(table, plan, i) for i in range(n)]) - fp32_cost

    return LatencyModel.measure(table, space, ratio_of, fp32_is_reference=fp32_is_reference), ratio_of


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


def test_a_second_runtimes_model_measures_its_own_fp32(pong_space) -> None:  # type: ignore[no-untyped-def]
    """A second runtime's ratios are to the first runtime's fp32. Its model is exact on every
    plan, fp32 layers between changed ones and the unchanged network included, only when
    its own fp32 is measured; taken as 1.0 it errs on those plans by the difference."""
    table, space = pong_space
    measured, ratio_of = _model(table, space, base=0.8, fp32_is_reference=False)
    assumed, _ = _model(table, space, base=0.8)
    choices = layer_choices(space)
    fp32 = plan_of(space, [next(c for c in layer if c.identity) for layer in choices])
    assert fp32.is_identity and measured.predict(table, fp32) == pytest.approx(0.8)
    assert assumed.predict(table, fp32) == pytest.approx(1.0)  # the error the measurement removes
    rng = np.random.default_rng(1)
    for _ in range(50):
        plan = plan_of(space, [layer[int(rng.integers(len(layer)))] for layer in choices])
        assert measured.predict(table, plan) == pytest.approx(ratio_of(plan), abs=1e-9)
    # conv2 left as it is between two changed layers: the other model is off by 1 - 0.8
    middle = plan_of(space, [layer[-1] if i != 1 else next(c for c in layer if c.identity)
                             for i, layer in enumerate(choices)])
    assert not middle.is_identity
    assert assumed.predict(table, middle) == pytest.approx(ratio_of(middle) - 0.2, abs=1e-9)


def test_fp32_on_a_cheaper_second_runtime_is_proposed_and_the_reference_is_not(cartpole_space) -> None:  # type: ignore[no-untyped-def]
    """At bound 0 only fp32 fits. On the first runtime that is the reference and is left out;
    on a second runtime whose fp32 is cheaper (LiteRT's on A72) it is a plan to try."""
    table, space = cartpole_space
    first, _ = _model(table, space, seed=3)
    cheaper, _ = _model(table, space, seed=3, base=0.8, fp32_is_reference=False)
    choices = layer_choices(space)
    sens = [{c: (0.0 if c.identity else 1.0) for c in layer} for layer in choices]
    alone = proposals(space, table, {"first": first}, sens)
    assert alone and not any(plan_of(space, p).is_identity for _, p, _ in alone)
    both = proposals(space, table, {"first": first, "second": cheaper}, sens)
    assert both[0][0] == 0.0 and plan_of(space, both[0][1]).is_identity and both[0][2] == "second"


def test_a_near_miss_has_the_neighbours_no_riskier_and_predicted_faster(cartpole_space) -> None:  # type: ignore[no-untyped-def]
    """Against brute force over every plan one layer (or the runtime) away: exactly those
    whose summed sensitivity is within the slack of the near miss's and whose predicted
    latency beats the bound, fastest first."""
    table, space = cartpole_space
    models = {"one": _model(table, space, seed=3)[0], "two": _model(table, space, seed=4)[0]}
    choices = layer_choices(space)
    rng = np.random.default_rng(5)
    sens = [{c: (0.0 if c.identity else float(rng.uniform(0, 0.4))) for c in layer} for layer in choices]
    picks = [layer[len(layer) // 2] for layer in choices]
    bound = models["one"].predict(table, plan_of(space, picks)) + 0.05
    got = neighbours(space, table, models, sens, picks, "one", bound)

    def summed(p) -> float:  # type: ignore[no-untyped-def]
        return sum(sens[i][c] for i, c in enumerate(p))

    expected = set()
    for p in itertools.product(*choices):
        for runtime in models:
            changes = sum(a != b for a, b in zip(p, picks)) + (runtime != "one")
            if changes == 1 and summed(p) <= summed(picks) * (1 + NEIGHBOUR_SLACK) \
                    and models[runtime].predict(table, plan_of(space, p)) < bound:
                expected.add((p, runtime))
    assert {(tuple(p), r) for p, r in got} == expected and expected
    predicted = [models[r].predict(table, plan_of(space, p)) for p, r in got]
    assert predicted == sorted(predicted)
    assert neighbours(space, table, models, sens, picks, "one", 0.0) == []  # nothing beats a zero latency


@pytest.mark.slow
def test_after_a_near_miss_the_agent_tries_its_neighbours(cartpole_problem, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A floor no plan keeps (retention 1.02): every plan that keeps CartPole's reward misses
    it by 0.02, a near miss. When the bisection ends, the next plans are near misses'
    neighbours, each one change away from a plan played before it."""
    import copy
    import dataclasses

    from autoquant.search import AgentContext, SearchRunner, load_space, make_agent, open_study, trial_records

    problem = copy.copy(cartpole_problem)
    problem.settings = dataclasses.replace(problem.settings, min_retention=1.02)
    space = load_space("joint", problem.table)
    agent = make_agent("ilp", AgentContext(space, "single", 0, 4))
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", "single", agent.sampler())
    agent.run(SearchRunner(study, space, problem, n_trials=4, agent="ilp"))
    whys = [why for why, _, _ in agent.proposed]
    first = whys.index("near miss")
    assert set(whys[:first]) == {"bisection"} and len(whys) == 4
    records = trial_records(study)
    assert [r.proposed_as for r in records] == whys  # the study says why each plan was tried
    misses = [_plan(r) for r in records[:first] if r.result is not None and r.result.played
              and 1.02 - r.result.retention <= 0.05]  # type: ignore[operator]
    assert misses
    for k, (why, picks, runtime) in enumerate(agent.proposed[first:], start=first):
        if why != "near miss":
            continue
        plan = plan_of(space, picks)
        earlier = misses + [_plan(r) for r in records[first:k] if r.result is not None and r.result.played
                            and 1.02 - r.result.retention <= 0.05]  # type: ignore[operator]
        assert any(sum(plan.spec(n) != m.spec(n) for n in plan.layers) == 1 for m in earlier), plan.describe()


def _plan(record):  # type: ignore[no-untyped-def]
    from autoquant.compress import CompressionPlan

    return CompressionPlan.from_json(record.plan).on(None)
