"""The meta-RL agents: CompressionEnv on the real CartPole problem, and the SB3 agents
running small budgets end to end into an Optuna study."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from autoquant.agents import CompressionEnv, RLAgent, bin_centre, bin_index, plan_cost, trial_reward
from autoquant.search import (
    AgentContext,
    ProblemSettings,
    ProposalSampler,
    SearchRunner,
    TrialResult,
    load_space,
    make_agent,
    open_study,
    trial_records,
)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)


@pytest.fixture(scope="module")
def space(cartpole_problem):  # type: ignore[no-untyped-def]
    return load_space("joint", cartpole_problem.table)


def _env(runner):  # type: ignore[no-untyped-def]
    """A CompressionEnv without a surrogate (its sensitivity and latency features are 0):
    these tests are about plans, budgets and trials, not about what the features say."""
    return CompressionEnv(runner)


def _runner(tmp_path: Path, space, problem, budget: int, agent: str = "test"):  # type: ignore[no-untyped-def]
    tmp_path.mkdir(parents=True, exist_ok=True)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", "single", ProposalSampler())
    return SearchRunner(study, space, problem, n_trials=budget, agent=agent)


def _result(**kw):  # type: ignore[no-untyped-def]
    base = {"key": "k", "summary": "", "latency_ratio": 0.5, "latency": {}, "size_bytes": 1, "size_ratio": 0.25,
            "macs_ratio": 1.0, "fidelity": {}, "fidelity_score": 1.0, "kernels": {}}
    return TrialResult(**{**base, **kw})


def test_bins_map_extreme_actions_to_the_first_and_last_choices() -> None:
    for n in (1, 2, 3, 4, 7):
        assert bin_index(-1.0, n) == 0
        assert bin_index(1.0, n) == n - 1
        assert [bin_index(bin_centre(i, n), n) for i in range(n)] == list(range(n))
    assert bin_index(5.0, 4) == 3 and bin_index(float("nan"), 4) == 2


def test_extreme_actions_give_the_plain_and_the_most_aggressive_plan(space, cartpole_problem,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path) -> None:
    env = _env(_runner(tmp_path, space, cartpole_problem, 0))  # budget 0: no trial runs
    plain = {"fc1.bits": "float", "fc1.prune": 0.0, "fc2.bits": "float", "fc2.prune": 0.0, "fc3.bits": "float"}
    aggressive = {"fc1.bits": "8", "fc1.prune": 0.75, "fc2.bits": "4", "fc2.prune": 0.75, "fc3.bits": "4"}
    for value, want in ((-1.0, plain), (1.0, aggressive)):
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        for _ in range(env.steps_per_episode):
            obs, reward, done, _, info = env.step(np.full(2, value, dtype=np.float32))
            assert env.observation_space.contains(obs)
        assert done and env.exhausted and reward == 0.0
        assert info["params"] == want


def test_reward() -> None:
    single, pareto = ProblemSettings(min_retention=0.9), ProblemSettings(mode="pareto", min_retention=0.9)
    speed = -np.log(0.5)
    assert trial_reward(None, single) == -2.0
    assert trial_reward(_result(played=True, retention=0.95), single) == pytest.approx(speed)
    assert trial_reward(_result(played=True, retention=0.95), pareto) == pytest.approx(speed - 0.25 * np.log(0.25))
    assert trial_reward(_result(played=True, retention=0.8), single) == pytest.approx(speed - 1 - 10 * 0.1)
    assert trial_reward(_result(fidelity_score=0.35), single) == pytest.approx(speed - 1 - 5 * 0.15)
    assert trial_reward(_result(fidelity_score=0.9), single) == pytest.approx(speed - 0.5)
    # faster is never punished: a feasible 0.3 beats a feasible 0.5
    assert trial_reward(_result(played=True, retention=1.0, latency_ratio=0.3), single) > \
        trial_reward(_result(played=True, retention=1.0), single)


def test_check_env_with_the_real_runner(space, cartpole_problem, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from stable_baselines3.common.env_checker import check_env

    runner = _runner(tmp_path, space, cartpole_problem, 2)
    env = _env(runner)
    assert env.steps_per_episode == 3  # fc1 (bits, prune), fc2 (bits, prune), fc3 (bits)
    check_env(env)
    assert env.exhausted and runner.remaining() == 0
    trials = runner.study.get_trials()
    assert sum(r.counted for r in trial_records(runner.study)) == 2 and all(t.state in FINISHED for t in trials)
    for trial in trials:  # the cheap cost estimate is what compressing measured
        raw = trial.user_attrs.get("result")
        if raw:
            result = TrialResult.from_json(json.loads(raw))
            size, macs = plan_cost(cartpole_problem.table, space.plan(trial.params))
            assert size == pytest.approx(result.size_ratio, rel=1e-3)
            assert macs == pytest.approx(result.macs_ratio, rel=1e-6)


def test_budget_clipping_keeps_the_plan_under_the_budget(space, cartpole_problem,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    budget = dataclasses.replace(space, max_size_ratio=0.3)
    dry = _env(_runner(tmp_path / "dry", budget, cartpole_problem, 0))  # no trials: plans only
    rng = np.random.default_rng(0)
    for _ in range(30):  # whatever the agent wishes, the clipped plan fits
        dry.reset()
        for _ in range(dry.steps_per_episode):
            *_, info = dry.step(rng.uniform(-1, 1, 2).astype(np.float32))
        size, _ = plan_cost(cartpole_problem.table, budget.plan(info["params"]))
        assert size <= 0.3
    env = _env(_runner(tmp_path, budget, cartpole_problem, 1))
    env.reset(seed=0)
    for _ in range(env.steps_per_episode):  # the least aggressive wish, run for real
        *_, done, _, info = env.step(np.array([-1.0, -1.0], np.float32))
    assert done and env.last_outcome.result is not None
    assert env.last_outcome.result.size_ratio <= 0.3
    assert info["params"] == {"fc1.bits": "float", "fc1.prune": 0.0, "fc2.bits": "8", "fc2.prune": 0.0,
                              "fc3.bits": "float"}  # the smallest step that fits: fc2 to 8 bits


@pytest.mark.parametrize("name", ["ddpg", "td3", "sac", "ppo"])
def test_the_meta_rl_agents_propose_through_their_own_sampler(name: str, space) -> None:  # type: ignore[no-untyped-def]
    """Each runs its budget in the conformance suite (tests/agents/test_agents.py)."""
    agent = make_agent(name, AgentContext(space, "single", 0, 6))
    assert isinstance(agent, RLAgent) and isinstance(agent.sampler(), ProposalSampler)


@pytest.mark.slow
def test_resume_warm_starts_the_replay_buffer(space, cartpole_problem, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = make_agent("ddpg", AgentContext(space, "single", 0, 3))
    study = open_study(storage, "s", "single", first.sampler())
    first.run(SearchRunner(study, space, cartpole_problem, n_trials=3, agent="ddpg"))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE and "result" in t.user_attrs]
    assert done

    second = make_agent("ddpg", AgentContext(space, "single", 1, 4))
    study = open_study(storage, "s", "single", second.sampler())
    runner = SearchRunner(study, space, cartpole_problem, n_trials=4, agent="ddpg")
    second.run(runner)
    assert sum(r.counted for r in trial_records(study)) == 4 and runner.remaining() == 0
    assert second.warm_started == len(done)
    steps = 3
    buffer = second.model.replay_buffer
    assert buffer.size() >= steps * (len(done) + 2)
    env = CompressionEnv(runner, surrogate=second.surrogate)
    env.bound = second.warm_bound  # the bound the earlier trials were replayed against
    for k, trial in enumerate(done):  # the first transitions are the earlier trials, replayed
        replayed = env.replay(trial.params)
        rows = slice(k * steps, (k + 1) * steps)
        np.testing.assert_allclose(buffer.observations[rows, 0], np.stack([s[0] for s in replayed]))
        np.testing.assert_allclose(buffer.actions[rows, 0], np.stack([s[1] for s in replayed]))
        result = TrialResult.from_json(json.loads(trial.user_attrs["result"]))
        assert buffer.rewards[k * steps + steps - 1, 0] == pytest.approx(
            trial_reward(result, cartpole_problem.settings))
        assert buffer.dones[k * steps + steps - 1, 0] == 1.0 and buffer.rewards[k * steps, 0] == 0.0
