"""The study's budget: what a trial costs, and when a search has nothing new to try."""

from __future__ import annotations

from pathlib import Path

from autoquant.search import ProposalSampler, SearchRunner, load_space, open_study, trial_records


def test_repeats_are_recorded_free_and_end_a_converged_search(cartpole_problem, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space = load_space("quant", cartpole_problem.table)
    study = open_study(f"sqlite:///{tmp_path / 's.db'}", "s", "single", ProposalSampler())
    runner = SearchRunner(study, space, cartpole_problem, n_trials=10, agent="test", max_repeats=3)
    same = {name: dist.choices[-1] for name, dist in space.distributions().items()}
    outcomes = []
    while (outcome := runner.run_trial(same)) is not None:
        outcomes.append(outcome)
    records = trial_records(study)
    assert [r.repeat for r in records] == [False, True, True, True]  # one measurement, then three free repeats
    assert [r.counted for r in records] == [True, False, False, False] and runner.used() == 1
    assert all(r.result == records[0].result for r in records)  # the repeats carry the measured result
    assert runner.stopped is not None and "measured before" in runner.stopped and runner.remaining() == 0
    assert len(outcomes) == 4 and all(o.cached for o in outcomes[1:])
