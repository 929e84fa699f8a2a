"""The study: every trial of every agent recorded in one Optuna storage.

``SearchRunner.run_trial`` is the one place a trial happens: ask the study, let the
agent's sampler choose (or take the agent's proposal), evaluate through the cache,
tell the study. Failed trials are recorded with their error; an interrupted one is
recorded as interrupted and does not count against the budget. Neither does a repeat: a
plan measured before, proposed again, is recorded with the earlier result (so samplers
learn from it) but costs nothing. A sampler that proposes only repeats for a while has
exhausted the space or converged, and the search ends (``SearchRunner.stopped``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from autoquant.compress import CompressionPlan
from autoquant.errors import AutoquantError, DeviceUnreachable, UsageError, describe_exception, first_line
from autoquant.search._problem import SearchProblem
from autoquant.search._record import (
    TrialRecord,
    TrialResult,
    is_counted,
    key_of,
    record_error,
    record_interrupted,
    record_over_budget,
    record_plan,
    record_proposal,
    record_result,
    worker_of,
)
from autoquant.search._space import SearchSpace

__all__ = [
    "ProposalSampler",
    "ScreenFit",
    "SearchRunner",
    "DISK_FULL",
    "TrialOutcome",
    "check_storage",
    "create_study_file",
    "directions",
    "disk_full",
    "fail_dead_trials",
    "open_study",
    "trial_records",
    "worker_id",
]


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
            if disk_full(exc):
                raise UsageError(f"no space left on the device of the study at {storage}: free some space and run "
                                 "the command again") from None
            # Workers starting together race to create the schema or the study; the
            # loser finds them there on the next try.
            if attempt == 5:
                raise AutoquantError(f"cannot open study {name!r} at {storage}: {first_line(exc)}") from exc
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def check_storage(url: str) -> None:
    """Refuse, before any work, a ``--storage`` that cannot hold a study: not a database URL,
    a dialect or driver that is not installed, an SQLite file that cannot be written, or a
    server that does not answer (one try, 10 s at most)."""
    from sqlalchemy import create_engine
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    from autoquant._io import check_output_file
    from autoquant._untrusted import short_repr

    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        raise UsageError(f"--storage {short_repr(url)} is not a database URL: give one such as "
                         "sqlite:////abs/path/study.db or postgresql://user@host/db") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise UsageError(f"--storage {shown}: an in-memory SQLite database keeps no trials; give a file "
                             "(sqlite:////abs/path/study.db)")
        if os.path.isdir(parsed.database):
            raise UsageError(f"--storage {shown}: {parsed.database} is a folder; give the database's file")
        if not os.path.isfile(parsed.database):
            check_output_file(parsed.database, "--storage")
        return
    timeout = {"connect_timeout": 10} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    try:
        engine = create_engine(parsed, connect_args=timeout)
    except (sa_exc.NoSuchModuleError, ImportError) as exc:
        raise UsageError(f"--storage {shown}: SQLAlchemy has no driver for {parsed.drivername!r} here "
                         f"({first_line(exc)}): install it, or use sqlite:////abs/path/study.db") from None
    except (sa_exc.ArgumentError, TypeError, ValueError) as exc:
        raise UsageError(f"--storage {shown} is not a URL SQLAlchemy can use ({first_line(exc)})") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, one line
        cause = getattr(exc, "orig", None) or exc
        raise UsageError(f"--storage {shown}: cannot connect ({first_line(cause)}): check the URL and that the "
                         "database server runs") from None
    finally:
        engine.dispose()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # the OSErrors of a full disk or quota


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (an OSError, or a database error over one: SQLite's "database or disk
    is full" under SQLAlchemy's and Optuna's) says the disk is full."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        text = str(exc).lower()
        if "disk is full" in text or "no space left" in text:
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


def create_study_file(path: Path, name: str, mode: str) -> None:
    """Create a run's own SQLite study at ``path`` (during the set-up, in the staging folder),
    and close it: a full disk is one line, and no run folder is left without its study."""
    storage = None
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
        optuna.create_study(storage=storage, study_name=name, directions=directions(mode))
    except Exception as exc:  # noqa: BLE001 - SQLite and SQLAlchemy fail in many types
        if disk_full(exc):
            raise OSError(errno.ENOSPC, "no space left on the device", str(path)) from None
        raise AutoquantError(f"cannot create the study at {path}: {first_line(exc)}") from exc
    finally:
        if storage is not None:
            storage.engine.dispose()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _StoredTrial:
    """A trial of another (dead) process, written through the storage."""

    def __init__(self, study: Any, trial_id: int) -> None:
        self._storage, self._id = study._storage, trial_id

    def set_user_attr(self, key: str, value: Any) -> None:
        self._storage.set_trial_user_attr(self._id, key, value)


UNCLAIMED_GRACE_S = 600.0  # a RUNNING trial without a worker this long after it started: its worker died


def fail_dead_trials(study: Any) -> list[int]:
    """Mark RUNNING trials of processes on this host that no longer exist as FAIL
    (interrupted): what a killed worker left behind. Returns their numbers.

    A worker asks the study for a trial and then records itself on it: a trial that names
    no worker yet may be another live worker's between those two steps (or one paused
    there), so it is failed only once it started ``UNCLAIMED_GRACE_S`` ago."""
    import datetime

    host = socket.gethostname()
    now = datetime.datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = worker_of(trial)
        w_host, _, w_pid = worker.rpartition(":")
        unclaimed = (not worker and trial.datetime_start is not None
                     and (now - trial.datetime_start).total_seconds() > UNCLAIMED_GRACE_S)
        if unclaimed or (worker and w_host == host and w_pid.isdigit() and not _pid_alive(int(w_pid))):
            record_interrupted(_StoredTrial(study, trial._trial_id), "worker died")
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


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



SCREEN_MIN_PLAYED = 5


@dataclass(frozen=True)
class ScreenFit:
    """Least-squares line of retention on the proxy over a run's played trials."""

    n: int
    max_x: float
    slope: float
    intercept: float
    mean_x: float
    sxx: float
    resid_sd: float
    t: float

    @classmethod
    def of(cls, pairs: list[tuple[float, float]]) -> ScreenFit | None:
        if len(pairs) < SCREEN_MIN_PLAYED:
            return None
        x = np.array([p for p, _ in pairs], dtype=np.float64)
        y = np.array([r for _, r in pairs], dtype=np.float64)
        sxx = float(((x - x.mean()) ** 2).sum())
        if sxx < 1e-12:
            return None  # no spread in the proxy: nothing to learn from yet
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
        intercept = float(y.mean() - slope * x.mean())
        resid = y - (intercept + slope * x)
        from scipy.stats import t

        return cls(n=len(x), max_x=float(x.max()), slope=slope, intercept=intercept, mean_x=float(x.mean()), sxx=sxx,
                   resid_sd=float(np.sqrt((resid ** 2).sum() / (len(x) - 2))), t=float(t.ppf(0.975, len(x) - 2)))

    def upper(self, proxy: float) -> float:
        """Upper end of the 95 % prediction interval of retention at ``proxy``."""
        half = self.t * self.resid_sd * float(np.sqrt(1.0 + 1.0 / self.n + (proxy - self.mean_x) ** 2 / self.sxx))
        return self.intercept + self.slope * proxy + half


@dataclass
class TrialOutcome:
    number: int
    params: dict[str, Any]
    result: TrialResult | None
    error: str | None
    cached: bool
    feasible: bool


SEARCH_SECONDS = "search_seconds"  # the study's user attribute: search seconds spent, all sessions


class SearchRunner:
    """Runs trials against one study until the shared budget is used."""

    def __init__(self, study: Any, space: SearchSpace, problem: SearchProblem, *, n_trials: int,
                 agent: str, progress: Callable[[TrialOutcome, SearchRunner], None] | None = None,
                 max_repeats: int | None = None, time_budget_s: float | None = None,
                 on_fresh: Callable[[CompressionPlan, TrialOutcome, str | None], None] | None = None) -> None:
        self.study = study
        self.space = space
        self.problem = problem
        self.n_trials = n_trials
        self.agent = agent
        self.progress = progress
        self.on_fresh = on_fresh  # called with each plan measured here for the first time (a fleet's other targets)
        self.settings = problem.settings
        self.cache: dict[str, TrialResult] = {}
        self.best_latency: float | None = None  # best feasible latency ratio so far
        self.fastest_played: float | None = None
        # Repeats in a row after which the sampler is taken to have nothing new to propose.
        self.max_repeats = max_repeats if max_repeats is not None else max(20, n_trials // 2)
        self.repeats_in_a_row = 0
        self.stopped: str | None = None  # why the search ended before its budget, if it did
        # Wall-clock budget: seconds this study's searches ran before (all sessions and
        # workers, summed) plus this one's, from here (an agent's set-up counts).
        self.time_budget_s = time_budget_s
        self.seconds_before = float(study.user_attrs.get(SEARCH_SECONDS, 0.0))
        self._started = time.perf_counter()
        self._seen: set[int] = set()
        self._load_history()

    # --- history and budget -------------------------------------------------------

    def _load_history(self) -> None:
        """Take in the trials finished so far, by any worker (resume, shared studies)."""
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if trial.number in self._seen:
                continue
            self._seen.add(trial.number)
            record = TrialRecord.from_trial(trial)
            if record.result is not None:
                self._remember(record.result)

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
        return sum(1 for t in self.study.get_trials(deepcopy=False) if is_counted(t))

    def seconds(self) -> float:
        """Search seconds spent on this study so far, this session included."""
        return self.seconds_before + (time.perf_counter() - self._started)

    def deadline(self) -> float | None:
        """The ``time.perf_counter()`` at which the wall-clock budget is spent (None without
        one): a trial's fine-tuning starts no epoch past it."""
        if self.time_budget_s is None:
            return None
        return self._started + self.time_budget_s - self.seconds_before

    def remaining(self) -> int:
        if self.stopped is not None:
            return 0
        if self.time_budget_s is not None and self.seconds() >= self.time_budget_s:
            self.stopped = f"the wall-clock budget of {self.time_budget_s:g} s is used"
            return 0
        return max(0, self.n_trials - self.used())

    def close(self) -> None:
        """Add this session's seconds to the study's (call once, when the search ends)."""
        spent = time.perf_counter() - self._started
        before = float(self.study.user_attrs.get(SEARCH_SECONDS, 0.0))  # other workers may have added theirs
        self.study.set_user_attr(SEARCH_SECONDS, before + spent)

    # --- the multi-fidelity rule -----------------------------------------------------

    def should_play(self, latency_ratio: float, proxy: Callable[[], float]) -> tuple[bool, str | None]:
        """Play a plan only if it could beat the best feasible latency and passes the screen
        (``proxy()`` is measured only when the latency leaves the question open)."""
        if self.settings.mode == "single" and self.best_latency is not None \
                and latency_ratio >= self.best_latency:
            return False, f"latency ratio {latency_ratio:.3f} cannot beat the best feasible {self.best_latency:.3f}"
        return self.screen(proxy())

    def screen(self, proxy: float) -> tuple[bool, str | None]:
        """Is a plan with this proxy worth its episodes?

        The run learns the answer from its own played trials: with at least
        ``SCREEN_MIN_PLAYED`` of them, spread over the proxy, it fits retention on proxy
        (least squares). Where the fit says the proxy matters (a positive slope), a plan
        whose proxy lies within the range already played is played unless the upper end of
        the 95 % prediction interval of its retention is below the floor; a proxy above
        that range is always played (nothing tried ranks higher). Until then, or where
        the fit has no positive slope, the user's ``--fidelity-floor`` screens.
        """
        fit = self.screen_fit()
        if fit is not None and proxy > fit.max_x:
            return True, None
        if fit is None:
            if proxy < self.settings.fidelity_floor:
                return False, f"proxy {proxy:.3f} below the screen {self.settings.fidelity_floor}"
            return True, None
        high = fit.upper(proxy)
        if high < self.settings.min_retention:
            return False, (f"proxy {proxy:.3f} predicts retention at most {high:.3f} (95 % prediction, "
                           f"fit on {fit.n} played trials), below the floor {self.settings.min_retention}")
        return True, None

    def screen_fit(self) -> ScreenFit | None:
        pairs = [(r.proxy, r.retention) for r in self.cache.values()
                 if r.played and r.proxy is not None and r.retention is not None and np.isfinite(r.retention)]
        fit = ScreenFit.of(pairs)
        return fit if fit is not None and fit.slope > 0 else None

    def _wait_for_twins(self, number: int, key: str, timeout_s: float = 1800.0) -> None:
        """Another worker measuring the same plan under an earlier trial: wait for it
        and take its result from the study, instead of measuring the plan twice."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            twins = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                     if t.number < number and key_of(t) == key]
            if not twins:
                break
            time.sleep(0.5)
        self._load_history()

    def _violation(self, result: TrialResult) -> float:
        """Constraint value (<= 0 feasible) with a gradient where reward is unknown:
        played -> retention short of the floor; skipped for latency (no proxy) -> 0.5;
        not played, once the screen has a fit ->
        the retention it predicts short of the floor (at least 0.01); before -> above 1 when
        the proxy failed the screen, ordered by the proxy missing; else 0.5."""
        if result.played and result.retention is not None:
            return float(self.settings.min_retention - result.retention)
        if result.proxy is None:  # skipped for latency before the proxy was needed
            return 0.5
        fit = self.screen_fit()
        if fit is not None:
            predicted = fit.intercept + fit.slope * result.proxy
            return float(max(0.01, self.settings.min_retention - predicted))
        if result.proxy < self.settings.fidelity_floor:
            return float(1.0 + self.settings.fidelity_floor - result.proxy)
        return 0.5

    # --- one trial ------------------------------------------------------------------------

    def run_trial(self, params: Mapping[str, Any] | None = None, *, proposed_as: str | None = None
                  ) -> TrialOutcome | None:
        """One trial; ``params`` when the agent proposes (its study uses ProposalSampler), and
        ``proposed_as``, why, for the record. Returns None when the budget is used up."""
        if self.remaining() <= 0:
            return None
        sampler = self.study.sampler
        if params is not None:
            if not isinstance(sampler, ProposalSampler):
                raise TypeError("proposed parameters need a study opened with ProposalSampler")
            sampler.pending = dict(params)
        trial = self.study.ask()
        record_proposal(trial, agent=self.agent, worker=worker_id(), proposed_as=proposed_as)
        rank = sum(1 for t in self.study.get_trials(deepcopy=False) if is_counted(t) and t.number <= trial.number)
        if rank > self.n_trials:  # another worker took the last slot between our check and ask
            record_over_budget(trial)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        try:
            chosen = {name: trial.suggest_categorical(name, dist.choices)
                      for name, dist in self.space.distributions().items()}
            plan = self.space.plan(chosen)
            key = self.problem.key(plan)
            record_plan(trial, plan=plan.to_json(), summary=plan.describe(), key=key)
            if key not in self.cache:
                self._wait_for_twins(trial.number, key)
            cached = key in self.cache
            result = (self.cache[key] if cached
                      else self.problem.evaluate(plan, self.should_play, deadline=self.deadline()))
        except KeyboardInterrupt:
            record_interrupted(trial, "interrupted by the user")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except DeviceUnreachable as exc:  # not the plan's fault: stop, resume when it is back
            record_interrupted(trial, f"device unreachable: {exc}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed trial is a record, the study goes on
            if disk_full(exc):  # nor is a full disk: stop, resume once there is space
                with contextlib.suppress(Exception):  # the study may not be writable either
                    record_interrupted(trial, "no space left on the device")
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            message = describe_exception(exc)
            record_error(trial, message, None if isinstance(exc, AutoquantError) else traceback.format_exc())
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            outcome = TrialOutcome(trial.number, {}, None, message, False, False)
            if self.progress:
                self.progress(outcome, self)
            return outcome
        self._remember(result)
        self.repeats_in_a_row = self.repeats_in_a_row + 1 if cached else 0
        if self.repeats_in_a_row >= self.max_repeats:
            self.stopped = (f"the last {self.repeats_in_a_row} proposals were plans measured before: the space is "
                            "exhausted or the agent has converged")
        feasible = result.feasible(self.settings.min_retention)
        violation = self._violation(result)
        if self.settings.mode == "single":
            values = [result.latency_ratio]
        else:
            values = [result.latency_ratio, result.retention if result.played else 0.0, result.size_ratio]
        try:
            record_result(trial, result, cached=cached, feasible=feasible, violation=violation,
                          finished_at=time.time())
            trial.set_constraint("retention_floor", violation)  # read by TPE / NSGA-II
            self.study.tell(trial, values)
        except Exception as exc:  # the study could not take the result (a full disk): the trial is not left RUNNING
            with contextlib.suppress(Exception):
                record_interrupted(trial, "no space left on the device" if disk_full(exc)
                                   else f"its result could not be recorded: {describe_exception(exc)}")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        outcome = TrialOutcome(trial.number, chosen, result, None, cached, feasible)
        if self.progress:
            self.progress(outcome, self)
        if self.on_fresh is not None and not cached:
            self.on_fresh(plan, outcome, proposed_as)
        return outcome


def trial_records(study: Any) -> list[TrialRecord]:
    """Every trial of the study, read once into TrialRecords."""
    return [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
