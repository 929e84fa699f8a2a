"""The conformance suite every agent passes: it records every trial of its budget in
the study (failed ones with their error), proposes only plans of the space, never
measures the same plan twice, and returns at once when the budget is used."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autoquant.search import AGENTS, AgentContext, SearchRunner, load_space, make_agent, open_study, trial_records

BUDGET = 4  # the second evaluation fails, and a plan may come twice: enough to see each rule


@pytest.fixture()
def space(cartpole_problem):  # type: ignore[no-untyped-def]
    return load_space("joint", cartpole_problem.table)


def _run(name: str, space, problem, tmp_path: Path, budget: int = BUDGET):  # type: ignore[no-untyped-def]
    agent = make_agent(name, AgentContext(space, "single", 0, budget))
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", "single", agent.sampler())
    runner = SearchRunner(study, space, problem, n_trials=budget, agent=name)
    agent.run(runner)
    return study, runner


@pytest.fixture()
def short_inner_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RL agents train on the surrogate between proposals (400 episodes before the first,
    100 between): that makes their proposals better, and nothing these rules check depends on
    it. 60 and 20 (still past the off-policy agents' 50 random warm-up episodes) keep the
    conformance run short."""
    from autoquant.agents import _rl

    monkeypatch.setattr(_rl, "INNER_FIRST", 60)
    monkeypatch.setattr(_rl, "INNER_EACH", 20)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.usefixtures("short_inner_loop")
def test_agent_conformance(name: str, space, cartpole_problem, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls = []
    real = cartpole_problem.evaluate

    def flaky(plan, should_play, **options):  # type: ignore[no-untyped-def]
        calls.append(cartpole_problem.key(plan))
        if len(calls) == 2:  # the second evaluation breaks: recorded, and the search goes on
            raise RuntimeError("simulated export failure")
        return real(plan, should_play, **options)

    cartpole_problem.evaluate = flaky
    try:
        study, runner = _run(name, space, cartpole_problem, tmp_path)
    finally:
        cartpole_problem.evaluate = real
    trials = study.get_trials()
    records = trial_records(study)
    assert sum(r.counted for r in records) == BUDGET  # repeats of measured plans are recorded, not counted
    assert all(r.counted != r.repeat for r in records)
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL) for t in trials)
    assert all(t.user_attrs["agent"] == name for t in trials)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "simulated export failure" in failed[0].user_attrs["error"]
    distributions = space.distributions()
    for trial in trials:
        assert set(trial.params) == set(distributions)
        assert all(trial.params[k] in distributions[k].choices for k in distributions)
    assert len(calls) == len(set(calls))  # identical plans were served from the cache
    assert runner.remaining() == 0
    agent = make_agent(name, AgentContext(space, "single", 0, BUDGET))
    agent.run(runner)  # nothing left: returns at once, adding nothing
    assert len(study.get_trials()) == len(trials)


def test_unknown_agent(space) -> None:  # type: ignore[no-untyped-def]
    from autoquant.errors import UsageError

    with pytest.raises(UsageError, match="tpe"):
        make_agent("simulated-annealing", AgentContext(space, "single", 0, 5))
