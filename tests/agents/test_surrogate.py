"""The surrogate the model-based agents search against: summed sensitivities on the real
CartPole problem, the boundary learnt from trials, the surrogate's reward, the
wall-clock budget, and the meta-RL agent proposing through the surrogate."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from autoquant.report import spearman
from autoquant.search import AgentContext, ProposalSampler, SearchRunner, TrialResult, load_space, make_agent, open_study
from autoquant.agents._rl import SurrogateEnv, surrogate_reward
from autoquant.search import SEARCH_SECONDS
from autoquant.agents._surrogate import Boundary, layer_choices, plan_of, sensitivities
from autoquant.agents._weights import PRETRAINED_DIR


@pytest.fixture(scope="module")
def space(cartpole_problem):  # type: ignore[no-untyped-def]
    return load_space("joint", cartpole_problem.table)


@pytest.fixture(scope="module")
def sens(cartpole_problem, space, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("sens")
    return folder, sensitivities(cartpole_problem.output_loss_of, space, folder=folder)


def _result(**kw):  # type: ignore[no-untyped-def]
    base = {"key": "k", "summary": "", "latency_ratio": 0.5, "latency": {}, "size_bytes": 1, "size_ratio": 0.25,
            "macs_ratio": 1.0, "fidelity": {}, "fidelity_score": 1.0, "kernels": {}}
    return TrialResult(**{**base, **kw})


@pytest.mark.slow
def test_summed_sensitivities_rank_the_joint_error(cartpole_problem, space, sens) -> None:  # type: ignore[no-untyped-def]
    _, values = sens
    rng = np.random.default_rng(0)
    choices = layer_choices(space)
    summed, joint = [], []
    while len(joint) < 8:
        picks = [layer[int(rng.integers(len(layer)))] for layer in choices]
        plan = plan_of(space, picks)
        if plan.is_identity:
            continue
        summed.append(sum(s[c] for s, c in zip(values, picks)))
        joint.append(cartpole_problem.output_loss_of(plan))
    rho = spearman(summed, joint)
    assert rho is not None and rho >= 0.8, (summed, joint)


@pytest.mark.slow
def test_sensitivities_are_read_back_from_the_run_folder(cartpole_problem, space, sens, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder, values = sens
    assert all(s[c] == 0.0 for s in values for c in s if c.identity)
    assert all(s[c] >= 0.0 for s in values for c in s) and max(max(s.values()) for s in values) > 0.1

    def refuse(plan):  # type: ignore[no-untyped-def]
        raise AssertionError(f"measured {plan.describe()} again")

    monkeypatch.setattr(cartpole_problem, "output_loss_of", refuse)
    assert sensitivities(cartpole_problem.output_loss_of, space, folder=folder) == values


@pytest.mark.slow
@pytest.mark.parametrize("hostile", ["nan", "negative", "deep", "symlink"])
def test_hostile_sensitivities_in_the_folder_are_measured_again(cartpole_problem, space, sens, tmp_path,  # type: ignore[no-untyped-def]
                                                                hostile: str) -> None:
    """sensitivities.json is data: a loss that is not finite and >= 0, a file nested to crash
    the parser, or a link out of the folder is never used: the values are measured again."""
    import json

    folder, values = sens
    good = json.loads((folder / "sensitivities.json").read_text())
    path = tmp_path / "sensitivities.json"
    key = next(iter(good["values"]))
    if hostile in ("nan", "negative"):
        path.write_text(json.dumps({**good, "values": {**good["values"], key: float("nan") if hostile == "nan"
                                                        else -5.0}}))
    elif hostile == "deep":
        path.write_text("[" * 100_000)
    else:
        outside = tmp_path / "outside.json"
        outside.write_text(json.dumps({**good, "values": {k: 0.0 for k in good["values"]}}))
        path.symlink_to(outside)
    assert sensitivities(cartpole_problem.output_loss_of, space, folder=tmp_path) == values


def test_boundary_brackets_the_floor_between_feasible_and_infeasible_plans() -> None:
    b = Boundary(top=1.0, start=0.01)
    assert b.bound() == 0.01  # nothing known yet
    b.observe(0.02, _result(played=True, retention=0.99), floor=0.9)  # feasible at 0.02
    assert b.low == 0.02 and math.isinf(b.high) and b.bound() == pytest.approx(0.08)
    b.observe(0.5, _result(skip_reason="proxy 0.2 below the screen 0.5"), floor=0.9)  # screened: infeasible
    assert b.high == 0.5 and b.bound() == pytest.approx(math.sqrt(0.02 * 0.5))
    b.observe(0.05, _result(skip_reason="latency ratio 0.6 cannot beat the best feasible 0.5"), floor=0.9)
    assert b.feasible == [0.02] and b.infeasible == [0.5]  # skipped for latency: says nothing
    b.observe(0.2, _result(played=True, retention=0.5), floor=0.9)  # played below the floor
    assert b.high == 0.2
    b.observe(0.01, _result(played=True, retention=0.5), floor=0.9)  # below the known-feasible: noise, ignored
    assert b.high == 0.2 and b.bound() == pytest.approx(math.sqrt(0.02 * 0.2))
    b.observe(0.03, None, floor=0.9)
    assert len(b.feasible) + len(b.infeasible) == 4


def test_surrogate_reward_prefers_fast_plans_within_the_bound() -> None:
    assert surrogate_reward(0.5, 0.01, 0.02) == pytest.approx(-math.log(0.5))
    assert surrogate_reward(0.3, 0.01, 0.02) > surrogate_reward(0.5, 0.01, 0.02)
    over = surrogate_reward(0.1, 0.04, 0.02)
    assert over == pytest.approx(-1 - math.log(2))
    assert over < surrogate_reward(1.2, 0.01, 0.02)  # even slower than fp32 within the bound wins
    assert surrogate_reward(0.1, 0.08, 0.02) < over  # further beyond is worse
    assert surrogate_reward(0.3, 1e9, 0.02) == pytest.approx(-5)  # the penalty is capped
    assert surrogate_reward(0.3, math.inf, 0.02) == pytest.approx(-5)


def test_time_budget_ends_the_search_and_adds_up_across_sessions(cartpole_problem, space,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study(storage, "s", "single", optuna.samplers.RandomSampler(seed=0))
    runner = SearchRunner(study, space, cartpole_problem, n_trials=1000, agent="random", time_budget_s=1e-3)
    time.sleep(0.01)
    assert runner.remaining() == 0 and "wall-clock budget" in (runner.stopped or "")
    assert runner.run_trial() is None and not study.get_trials()
    runner.close()
    spent = study.user_attrs[SEARCH_SECONDS]
    assert spent >= 0.01
    # A later session starts from what the study spent: a budget below it is already used.
    again = SearchRunner(open_study(storage, "s", "single", optuna.samplers.RandomSampler(seed=0)), space,
                         cartpole_problem, n_trials=1000, agent="random", time_budget_s=spent)
    assert again.remaining() == 0
    more = SearchRunner(open_study(storage, "s", "single", optuna.samplers.RandomSampler(seed=0)), space,
                        cartpole_problem, n_trials=2, agent="random", time_budget_s=spent + 600)
    assert more.remaining() == 2 and more.run_trial() is not None


@pytest.mark.slow
def test_rl_agent_proposes_through_the_surrogate(cartpole_problem, space, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    budget = 4
    agent = make_agent("ddpg", AgentContext(space, "single", 0, budget, folder=tmp_path))
    study = open_study(f"sqlite:///{tmp_path / 's.db'}", "s", "single", ProposalSampler())
    runner = SearchRunner(study, space, cartpole_problem, n_trials=budget, agent="ddpg")
    agent.run(runner)
    surrogate = agent.surrogate
    assert surrogate is not None and len(agent.proposals) == len(study.get_trials())
    assert agent.pretrained is not None and agent.pretrained["used"]  # the shipped weights fit the agent
    assert agent.pretrained["sha256"] == json.loads((PRETRAINED_DIR / "ddpg.json").read_text())["sha256"]
    measured = [t for t in study.get_trials() if t.user_attrs.get("result") and not t.user_attrs.get("cached")]
    assert len(surrogate.model.errors) == len(measured)  # every measured trial corrected the latency model
    known = len(surrogate.boundary.feasible) + len(surrogate.boundary.infeasible)
    assert known <= len(measured)
    assert (tmp_path / "ddpg_surrogate.json").is_file() and (tmp_path / "sensitivities.json").is_file()
    # The inner loop scored many more plans than the study paid for.
    env = SurrogateEnv(runner, surrogate)
    assert env.steps_per_episode == 3 and env.bound > 0


@pytest.mark.slow
def test_a_proposal_keeps_within_the_bound_or_waits_for_training(cartpole_problem, space, sens,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    from stable_baselines3 import DDPG

    from autoquant.agents import Surrogate, latency_model
    from autoquant.agents._rl import RLAgent

    _, values = sens
    surrogate = Surrogate(space, cartpole_problem.table, latency_model(cartpole_problem, space), values)
    study = open_study(f"sqlite:///{tmp_path / 's.db'}", "s", "single", ProposalSampler())
    env = SurrogateEnv(SearchRunner(study, space, cartpole_problem, n_trials=0, agent="ddpg"), surrogate)
    model = DDPG("MlpPolicy", env, seed=0, device="cpu", policy_kwargs={"net_arch": [64, 64]})
    agent = RLAgent("ddpg", AgentContext(space, "single", 0, 1))
    rng = np.random.default_rng(0)
    env.bound = 1e-12  # every plan that changes anything breaks it
    assert agent._propose(model, env, set(), rng, allow_random=False) is None and agent.proposals == []
    picked = agent._propose(model, env, set(), rng)  # after training: the least sensitive plan it knows
    assert picked is not None and agent.proposals == ["visited"]
    env.bound = math.inf
    greedy = agent._propose(model, env, set(), rng, allow_random=False)
    assert greedy is not None and agent.proposals[-1] in ("greedy", "visited")
    assert surrogate.loss(greedy) <= env.bound
