"""Two worker processes share one Optuna study through the PostgreSQL server of tests/pg.py."""

from __future__ import annotations

import subprocess
import sys
import uuid

import optuna
from optuna.trial import TrialState

N_TRIALS = 10
N_WORKERS = 2

# One worker: load the shared study and optimize until the study holds N_TRIALS trials.
# Each worker's first trial waits until every worker has a trial in the study, so both
# contribute whatever the start-up times (the budget cannot run out while one waits).
WORKER = """
import sys, time
import optuna
from optuna.study import MaxTrialsCallback

url, name, worker, n_trials, n_workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=name, storage=url)
first = True

def objective(trial):
    global first
    trial.set_user_attr("worker", worker)
    if first:
        first = False
        deadline = time.monotonic() + 60
        while len({t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False)} - {None}) < n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError("the other worker never started a trial")
            time.sleep(0.05)
    x = trial.suggest_float("x", -10, 10)
    time.sleep(0.05)
    return (x - 2) ** 2

study.optimize(objective, callbacks=[MaxTrialsCallback(n_trials, states=None)])
"""


def test_two_processes_share_one_study(postgres_url: str) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    optuna.create_study(storage=postgres_url, study_name=name, direction="minimize")

    workers = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, name, f"w{i}",
                                 str(N_TRIALS), str(N_WORKERS)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(N_WORKERS)]
    for w in workers:
        try:
            out, _ = w.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise
        assert w.returncode == 0, f"worker exited {w.returncode}:\n{out}"

    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= N_TRIALS, [t.state for t in trials]
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers), numbers
    assert sorted(numbers) == list(range(len(numbers)))
    by_worker = {t.user_attrs["worker"] for t in complete}
    assert by_worker == {f"w{i}" for i in range(N_WORKERS)}, by_worker
    assert study.best_value >= 0
