"""The study: every trial of every agent recorded in one Optuna storage.

``SearchRunner.run_trial`` is the one place a trial happens: ask the study, let the
agent's sampler choose (or take the agent's proposal), evaluate through the cache,
tell the study. Failed trials are recorded with their error; an interrupted one is
recorded as interrupted and does not count against the budget.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from autoquant.errors import AutoquantError, DeviceUnreachable
from autoquant.search._problem import SearchProblem, TrialResult
from autoquant.search._space import SearchSpace

__all__ = [
    "ProposalSampler",
    "SearchRunner",
    "TrialOutcome",
    "directions",
    "fail_dead_trials",
    "open_study",
    "trial_records",
    "worker_id",
]

INTERRUPTED = "interrupted"
OVER_BUDGET = "over_budget"


def directions(mode: str) -> list[str]:
    if mode == "single":
        return ["minimize"]
    return ["minimize", "maximize", "minimize"]  # latency ratio, retention, size ratio


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_study(storage: str, name: str, mode: str, sampler: Any) -> Any:
    """Create or load the run's study (SQLite file, or any RDB URL shared by workers)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(6):
        try:
            return optuna.create_study(storage=storage, study_name=name, directions=directions(mode),
                                       sampler=sampler, load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - storage faults reach the user as one line
            # Workers starting together race to create the schema or the study; the
            # loser finds them there on the next try.
            if attempt == 5:
                raise AutoquantError(f"cannot open study {name!r} at {storage}: "
                                     f"{str(exc).splitlines()[0]}") from exc
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: Any) -> list[int]:
    """Mark RUNNING trials of processes on this host that no longer exist as FAIL
    (interrupted): what a killed worker left behind. Returns their numbers."""
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        w_host, _, w_pid = worker.rpartition(":")
        if not worker or (w_host == host and w_pid.isdigit() and not _pid_alive(int(w_pid))):
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, "worker died")
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def counted(trial: Any) -> bool:
    """Does a trial use up budget? Interrupted and over-budget ones do not."""
    return INTERRUPTED not in trial.user_attrs and OVER_BUDGET not in trial.user_attrs


class ProposalSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler that returns the parameters an agent proposed for the trial
    (the meta-RL agent decides outside Optuna, and records through it)."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] = {}

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self.pending[name]



@dataclass
class TrialOutcome:
    number: int
    params: dict[str, Any]
    result: TrialResult | None
    error: str | None
    cached: bool
    feasible: bool


class SearchRunner:
    """Runs trials against one study until the shared budget is used."""

    def __init__(self, study: Any, space: SearchSpace, problem: SearchProblem, *, n_trials: int,
                 agent: str, progress: Callable[[TrialOutcome, SearchRunner], None] | None = None) -> None:
        self.study = study
        self.space = space
        self.problem = problem
        self.n_trials = n_trials
        self.agent = agent
        self.progress = progress
        self.settings = problem.settings
        self.cache: dict[str, TrialResult] = {}
        self.best_latency: float | None = None  # best feasible latency ratio so far
        self.fastest_played: float | None = None
        self._seen: set[int] = set()
        self._load_history()

    # --- history and budget -------------------------------------------------------

    def _load_history(self) -> None:
        """Take in the trials finished so far, by any worker (resume, shared studies)."""
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if trial.number in self._seen:
                continue
            self._seen.add(trial.number)
            data = trial.user_attrs.get("result")
            if data:
                self._remember(TrialResult.from_json(json.loads(data) if isinstance(data, str) else data))

    def _remember(self, result: TrialResult) -> None:
        old = self.cache.get(result.key)
        if old is None or (result.played and not old.played):
            self.cache[result.key] = result
        if result.played:
            self.fastest_played = min(self.fastest_played or result.latency_ratio, result.latency_ratio)
        if result.feasible(self.settings.min_retention):
            self.best_latency = min(self.best_latency or result.latency_ratio, result.latency_ratio)

    def used(self) -> int:
        """Trials that count against the budget, all workers together (running ones too)."""
        return sum(1 for t in self.study.get_trials(deepcopy=False) if counted(t))

    def remaining(self) -> int:
        return max(0, self.n_trials - self.used())

    # --- the multi-fidelity rule -----------------------------------------------------

    def should_play(self, latency_ratio: float, fidelity_score: float) -> tuple[bool, str | None]:
        if fidelity_score < self.settings.fidelity_floor:
            return False, f"fidelity {fidelity_score:.3f} below the screen {self.settings.fidelity_floor}"
        if self.settings.mode == "single" and self.best_latency is not None \
                and latency_ratio >= self.best_latency:
            return False, f"latency ratio {latency_ratio:.3f} cannot beat the best feasible {self.best_latency:.3f}"
        return True, None

    def _wait_for_twins(self, number: int, key: str, timeout_s: float = 1800.0) -> None:
        """Another worker measuring the same plan under an earlier trial: wait for it
        and take its result from the study, instead of measuring the plan twice."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            twins = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                     if t.number < number and t.user_attrs.get("key") == key]
            if not twins:
                break
            time.sleep(0.5)
        self._load_history()

    def _violation(self, result: TrialResult) -> float:
        """Constraint value (<= 0 feasible) with a gradient where reward is unknown:
        played -> retention short of the floor; screened out on fidelity -> above 1,
        ordered by the fidelity missing; skipped for latency -> 0.5 (unknown)."""
        if result.played and result.retention is not None:
            return float(self.settings.min_retention - result.retention)
        if result.fidelity_score < self.settings.fidelity_floor:
            return float(1.0 + self.settings.fidelity_floor - result.fidelity_score)
        return 0.5

    # --- one trial ------------------------------------------------------------------------

    def run_trial(self, params: Mapping[str, Any] | None = None) -> TrialOutcome | None:
        """One trial; ``params`` when the agent proposes (its study uses ProposalSampler).
        Returns None when the budget is used up."""
        if self.remaining() <= 0:
            return None
        sampler = self.study.sampler
        if params is not None:
            if not isinstance(sampler, ProposalSampler):
                raise TypeError("proposed parameters need a study opened with ProposalSampler")
            sampler.pending = dict(params)
        trial = self.study.ask()
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("agent", self.agent)
        rank = sum(1 for t in self.study.get_trials(deepcopy=False) if counted(t) and t.number <= trial.number)
        if rank > self.n_trials:  # another worker took the last slot between our check and ask
            trial.set_user_attr(OVER_BUDGET, True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        try:
            chosen = {name: trial.suggest_categorical(name, dist.choices)
                      for name, dist in self.space.distributions().items()}
            plan = self.space.plan(chosen)
            trial.set_user_attr("plan", plan.to_json())
            trial.set_user_attr("summary", plan.describe())
            key = self.problem.key(plan)
            trial.set_user_attr("key", key)
            if key not in self.cache:
                self._wait_for_twins(trial.number, key)
            cached = key in self.cache
            result = self.cache[key] if cached else self.problem.evaluate(plan, self.should_play)
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, "interrupted by the user")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except DeviceUnreachable as exc:  # not the plan's fault: stop, resume when it is back
            trial.set_user_attr(INTERRUPTED, f"device unreachable: {exc}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed trial is a record, the study goes on
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            trial.set_user_attr("error", message)
            if not isinstance(exc, AutoquantError):
                trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            outcome = TrialOutcome(trial.number, {}, None, message, False, False)
            if self.progress:
                self.progress(outcome, self)
            return outcome
        self._remember(result)
        feasible = result.feasible(self.settings.min_retention)
        trial.set_user_attr("result", json.dumps(result.to_json()))
        trial.set_user_attr("cached", cached)
        trial.set_user_attr("feasible", feasible)
        trial.set_user_attr("finished_at", time.time())
        violation = self._violation(result)
        trial.set_user_attr("constraint", [violation])
        trial.set_constraint("retention_floor", violation)  # read by TPE / NSGA-II
        if self.settings.mode == "single":
            values = [result.latency_ratio]
        else:
            values = [result.latency_ratio, result.retention if result.played else 0.0, result.size_ratio]
        self.study.tell(trial, values)
        outcome = TrialOutcome(trial.number, chosen, result, None, cached, feasible)
        if self.progress:
            self.progress(outcome, self)
        return outcome


def trial_records(study: Any, min_retention: float) -> list[dict[str, Any]]:
    """Plain records of every trial, for reports and comparisons."""
    records = []
    start = None
    for trial in study.get_trials(deepcopy=False):
        start = trial.datetime_start.timestamp() if start is None and trial.datetime_start else start
        raw = trial.user_attrs.get("result")
        result = TrialResult.from_json(json.loads(raw)) if raw else None
        finished = trial.user_attrs.get("finished_at")
        records.append({
            "number": trial.number,
            "state": trial.state.name,
            "summary": trial.user_attrs.get("summary", ""),
            "plan": trial.user_attrs.get("plan"),
            "latency_ratio": result.latency_ratio if result else None,
            "retention": result.retention if result else None,
            "size_ratio": result.size_ratio if result else None,
            "played": bool(result and result.played),
            "feasible": bool(result and result.feasible(min_retention)),
            "agent": trial.user_attrs.get("agent"),
            "wall_s": (finished - start) if finished and start else None,
            "error": trial.user_attrs.get("error") or trial.user_attrs.get(INTERRUPTED),
            "cached": bool(trial.user_attrs.get("cached", False)),
        })
    return records
