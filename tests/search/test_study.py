"""The study's budget: what a trial costs, and when a search has nothing new to try."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_the_time_budget_stops_fine_tuning_at_the_best_epoch_so_far(cartpole_problem, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--finetune 1000 ran for minutes past --time-budget: fine-tuning now starts no epoch or
    DAgger round once the search's wall-clock budget is spent, and keeps the best epoch so far."""
    import copy
    import time

    from autoquant.search import ProblemSettings

    problem = copy.copy(cartpole_problem)  # the shared problem, fine-tuning every plan for the cap's 1000 epochs
    problem.settings = ProblemSettings(episodes=3, finetune_epochs=1000, finetune_rounds=2, finetune_below=1.0)
    problem.models_dir = tmp_path / "models"
    toml = tmp_path / "harsh.toml"
    toml.write_text('weight_bits = [2]\nprune_ratios = [0.5]\n')  # one plan, far from fp32: it gets fine-tuned
    space = load_space(str(toml), problem.table)
    plan = space.plan({})
    assert not plan.is_identity
    start = time.perf_counter()
    # what evaluate() does for a plan below --finetune-below, with the runner's deadline for --time-budget 6
    tuned, _ = problem.try_finetune(plan, {"action_agreement": 0.0}, deadline=start + 6.0)
    elapsed = time.perf_counter() - start
    assert tuned is not None and tuned["deadline_reached"] is True, tuned
    assert tuned["epochs"] < 1000 and tuned["loss_after"] <= tuned["loss_before"]
    assert elapsed < 30, elapsed  # 1000 epochs and two DAgger rounds of 1000 take minutes


def test_a_trial_no_worker_claimed_yet_is_failed_only_after_the_grace(tmp_path: Path) -> None:
    """A worker asks for a trial, then writes its name on it. A second worker starting in between
    (or while the first is paused there) failed that trial as a dead worker's, and the first one
    then stopped with Optuna's UpdateFinishedTrialError. Now it is left alone until it is
    ``UNCLAIMED_GRACE_S`` old; a dead worker's trial is failed at once."""
    import datetime

    import optuna

    from autoquant.search._study import UNCLAIMED_GRACE_S, fail_dead_trials, worker_id

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    fresh = study.ask()  # asked a moment ago, its worker not written yet
    old = optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState.RUNNING, value=None, values=None,
        datetime_start=datetime.datetime.now() - datetime.timedelta(seconds=UNCLAIMED_GRACE_S + 60),
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=0)
    stale = study._storage.create_new_trial(study._study_id, template_trial=old)
    dead = study.ask()
    dead.set_user_attr("worker", worker_id().rsplit(":", 1)[0] + ":999999999")  # no such process
    live = study.ask()
    live.set_user_attr("worker", worker_id())
    failed = fail_dead_trials(study)
    states = {t._trial_id: t.state for t in study.get_trials(deepcopy=False)}
    assert states[fresh._trial_id] == states[live._trial_id] == optuna.trial.TrialState.RUNNING
    assert states[stale] == states[dead._trial_id] == optuna.trial.TrialState.FAIL
    assert len(failed) == 2
