"""The trial record: what a plan measured (``TrialResult``) and what the study knows of
the trial that measured it (``TrialRecord``). This module is the one place that writes
a trial's attributes into the study and the one place that reads them back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any

from autoquant._untrusted import loads_json
from autoquant.errors import UsageError

__all__ = [
    "TrialRecord",
    "TrialResult",
    "is_counted",
    "key_of",
    "record_error",
    "record_interrupted",
    "record_over_budget",
    "record_plan",
    "record_proposal",
    "record_result",
    "worker_of",
]

# user_attrs keys, written here and read here only
_RESULT = "result"
_PLAN = "plan"
_SUMMARY = "summary"
_KEY = "key"
_AGENT = "agent"
_PROPOSED_AS = "proposed_as"  # why the agent proposed the plan, where it says (the ILP: "near miss", ...)
_WORKER = "worker"
_CACHED = "cached"
_FEASIBLE = "feasible"
_FINISHED_AT = "finished_at"
_ERROR = "error"
_TRACEBACK = "traceback"
_INTERRUPTED = "interrupted"
_OVER_BUDGET = "over_budget"
_REPEAT = "repeat"  # a plan measured before, proposed again: recorded, not counted
_CONSTRAINT = "constraint"


@dataclass(frozen=True)
class TrialResult:
    """What one plan measured and, when it was played, its episodes."""

    key: str
    summary: str
    latency_ratio: float
    latency: dict[str, Any]
    size_bytes: int
    size_ratio: float
    macs_ratio: float
    fidelity: dict[str, Any]
    fidelity_score: float
    kernels: dict[str, Any]
    played: bool = False
    skip_reason: str | None = None
    reward: dict[str, Any] | None = None
    retention: float | None = None
    seconds: dict[str, float] | None = None
    proxy: float | None = None  # agreement on the plan's own states; None where not measured
    finetune: dict[str, Any] | None = None  # set where fine-tuning was tried; "kept": the trial judged its graph

    def feasible(self, min_retention: float) -> bool:
        """Played and at or above the floor. Where the sequential test recorded an interval it
        decides: wholly above the floor -> feasible, wholly below -> not, and only a plan the
        episode budget left undecided falls back to its mean."""
        if not self.played or self.retention is None:
            return False
        test = (self.reward or {}).get("test")
        if test is not None and test.get("low") is not None and test.get("high") is not None:
            if test["low"] >= min_retention:
                return True
            if test["high"] < min_retention:
                return False
        return self.retention >= min_retention

    @property
    def fine_tuned(self) -> bool:
        """Judged on a fine-tuned graph (fine-tuning was tried and raised held-out fidelity)."""
        return bool(self.finetune and self.finetune.get("kept"))

    @property
    def episodes(self) -> int:
        """Episodes this trial played (0 when not played)."""
        return int((self.reward or {}).get("episodes") or 0) if self.played else 0

    @property
    def shared_from(self) -> str | None:
        """The runtime whose episodes of the same plan this trial took (numerics agreeing), or
        "RUNTIME on TARGET" where another target of a fleet played the same graph; None where it
        played its own."""
        shared = (self.reward or {}).get("shared_from") if self.played else None
        if not isinstance(shared, dict) or not shared.get("runtime"):
            return None
        return f"{shared['runtime']} on {shared['target']}" if shared.get("target") else str(shared["runtime"])

    def replace(self, **changes: Any) -> TrialResult:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study as autoquant reads it, whatever agent or worker ran it."""

    number: int
    state: str  # Optuna's TrialState name: COMPLETE, FAIL, RUNNING, ...
    params: dict[str, Any]
    plan: dict[str, Any] | None
    summary: str
    key: str | None
    agent: str | None
    worker: str | None
    result: TrialResult | None
    cached: bool
    error: str | None  # why it failed (the plan's error, or why it was interrupted)
    interrupted: bool
    over_budget: bool
    repeat: bool  # the plan was measured by an earlier trial; this one took its result
    started_at: float | None
    finished_at: float | None
    proposed_as: str | None = None

    @classmethod
    def from_trial(cls, trial: Any) -> TrialRecord:
        """Read an Optuna FrozenTrial."""
        attrs = trial.user_attrs
        raw = attrs.get(_RESULT)
        try:
            data = loads_json(raw, what=f"the study's trial {trial.number}", error=UsageError) \
                if isinstance(raw, str) else raw
            result = TrialResult.from_json(data) if raw else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"the study's trial {trial.number}: its result cannot be read ({type(exc).__name__}); "
                             "the study was not written by this autoquant") from None
        return cls(
            number=int(trial.number), state=trial.state.name, params=dict(trial.params),
            plan=attrs.get(_PLAN), summary=str(attrs.get(_SUMMARY, "")), key=attrs.get(_KEY),
            agent=attrs.get(_AGENT), worker=attrs.get(_WORKER), result=result, cached=bool(attrs.get(_CACHED, False)),
            error=attrs.get(_ERROR) or attrs.get(_INTERRUPTED), interrupted=_INTERRUPTED in attrs,
            over_budget=_OVER_BUDGET in attrs, repeat=bool(attrs.get(_REPEAT, False)),
            started_at=trial.datetime_start.timestamp() if trial.datetime_start else None,
            finished_at=attrs.get(_FINISHED_AT),
            proposed_as=str(attrs[_PROPOSED_AS])[:40] if attrs.get(_PROPOSED_AS) else None,
        )

    @property
    def counted(self) -> bool:
        """Does this trial use up budget? Interrupted, over-budget and repeated ones do not."""
        return not self.interrupted and not self.over_budget and not self.repeat

    def feasible(self, min_retention: float) -> bool:
        return self.result is not None and self.result.feasible(min_retention)

    def to_json(self, *, min_retention: float, study_start: float | None = None) -> dict[str, Any]:
        """The plain record that reports and comparisons read (``autoquant.report``)."""
        r = self.result
        return {
            "number": self.number, "state": self.state, "summary": self.summary, "plan": self.plan,
            "latency_ratio": r.latency_ratio if r else None, "retention": r.retention if r else None,
            "size_ratio": r.size_ratio if r else None, "played": bool(r and r.played),
            "feasible": self.feasible(min_retention), "agent": self.agent,
            "wall_s": (self.finished_at - study_start) if self.finished_at and study_start else None,
            "error": self.error, "cached": self.cached, "counted": self.counted, "proposed_as": self.proposed_as,
            "skip_reason": r.skip_reason if r else None,
            "proxy": r.proxy if r else None, "finetune": r.finetune if r else None,
            "episodes": r.episodes if r else 0, "episodes_shared_from": r.shared_from if r else None,
            **_settled(r),
            **_interval(r),
        }


def _settled(r: TrialResult | None) -> dict[str, Any]:
    """Where the trial was settled on every start: the retention its first test found, on how
    many episodes (``settled_from``, ``settled_episodes``); None and 0 elsewhere."""
    settled = (r.reward or {}).get("settled") if r is not None and r.played else None
    first = settled.get("search_test") if isinstance(settled, dict) else None
    if not isinstance(first, dict):
        return {"settled_from": None, "settled_episodes": 0}
    return {"settled_from": first.get("retention"), "settled_episodes": int(first.get("episodes") or 0)}


def _interval(r: TrialResult | None) -> dict[str, Any]:
    """The sequential test's decision and retention interval, where one was recorded."""
    test = ((r.reward or {}).get("test") if r is not None else None) or {}
    return {"decision": test.get("decision"), "retention_low": test.get("low"), "retention_high": test.get("high"),
            "confidence": test.get("confidence"), "distinct_pairs": test.get("distinct_pairs"),
            "exact": test.get("exact")}


# --- writing: the runner's side ---------------------------------------------------------------


def record_proposal(trial: Any, *, agent: str, worker: str, proposed_as: str | None = None) -> None:
    trial.set_user_attr(_WORKER, worker)
    trial.set_user_attr(_AGENT, agent)
    if proposed_as:
        trial.set_user_attr(_PROPOSED_AS, proposed_as)


def record_plan(trial: Any, *, plan: dict[str, Any], summary: str, key: str) -> None:
    trial.set_user_attr(_PLAN, plan)
    trial.set_user_attr(_SUMMARY, summary)
    trial.set_user_attr(_KEY, key)


def record_result(trial: Any, result: TrialResult, *, cached: bool, feasible: bool, violation: float,
                  finished_at: float) -> None:
    """A finished trial; a ``cached`` one (its plan was measured before) is a repeat."""
    trial.set_user_attr(_RESULT, json.dumps(result.to_json()))
    trial.set_user_attr(_CACHED, cached)
    if cached:
        trial.set_user_attr(_REPEAT, True)
    trial.set_user_attr(_FEASIBLE, feasible)
    trial.set_user_attr(_FINISHED_AT, finished_at)
    trial.set_user_attr(_CONSTRAINT, [violation])


def record_error(trial: Any, message: str, traceback_text: str | None = None) -> None:
    trial.set_user_attr(_ERROR, message)
    if traceback_text:
        trial.set_user_attr(_TRACEBACK, traceback_text[-4000:])


def record_interrupted(trial: Any, why: str) -> None:
    trial.set_user_attr(_INTERRUPTED, why)


def record_over_budget(trial: Any) -> None:
    trial.set_user_attr(_OVER_BUDGET, True)


def key_of(trial: Any) -> str | None:
    """The plan key of a trial (read while it runs, to find twins in other workers)."""
    return trial.user_attrs.get(_KEY)


def worker_of(trial: Any) -> str:
    return str(trial.user_attrs.get(_WORKER, ""))


def is_counted(trial: Any) -> bool:
    """``TrialRecord.counted`` without reading the whole record (budget checks run often)."""
    attrs = trial.user_attrs
    return _INTERRUPTED not in attrs and _OVER_BUDGET not in attrs and not attrs.get(_REPEAT, False)
