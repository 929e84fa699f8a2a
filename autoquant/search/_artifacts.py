"""What a run folder holds, typed: the run's settings (``RunConfig``), run.json (``RunInfo``)
and best/confirm.json or confirm_failed.json (``Confirmation``), each with its format
constants and a validating reader. This module is the one place that knows their JSON
layout: everything else reads the typed fields.

A run folder is untrusted input (it may have been edited, or copied from anyone): every
reader here turns a file that is not what autoquant wrote into one line of UsageError.

run.json versions: 1 (before episodes recorded their protocol) is refused; 2 kept the
scoring settings flat in ``config`` and is read by nesting them (``_nest_settings``);
3 (this version) keeps them under ``config.settings``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from autoquant._limits import MAX_EPISODES, MAX_STATES, MAX_TRIALS, check_integer
from autoquant._untrusted import loads_json, read_file_in, short_repr
from autoquant._version import __version__
from autoquant.compress import CompressionPlan
from autoquant.errors import AutoquantError, UsageError, describe_exception
from autoquant.evaluate import EpisodeStats
from autoquant.policy import Protocol
from autoquant.search._agents import check_agent
from autoquant.search._problem import ProblemSettings
from autoquant.search._space import find_space
from autoquant.targets import TargetSpec, find_target_spec

__all__ = [
    "CONFIRM_FORMAT",
    "CONFIRM_VERSION",
    "DEFAULT_STORAGE",
    "RUN_FORMAT",
    "RUN_VERSION",
    "Attempt",
    "ConfirmFigures",
    "ConfirmedPlan",
    "Confirmation",
    "PolicyInfo",
    "References",
    "RunConfig",
    "RunInfo",
    "SearchFigures",
    "TargetInfo",
    "read_confirm",
    "read_confirm_failed",
    "read_run_info",
]

RUN_FORMAT = "autoquant.run"
# 2: episodes under a recorded protocol (sticky actions, no-op starts), distinct games;
# 3: the scoring settings nested under config.settings (version 2's flat keys are still read)
RUN_VERSION = 3
CONFIRM_FORMAT = "autoquant.confirm"
CONFIRM_VERSION = 1
DEFAULT_STORAGE = "study.db"
_MAX_JSON_BYTES = 64 << 20

T = TypeVar("T")


# --- the run's settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Everything ``autoquant search`` was asked, as run.json stores it. Validated when made,
    each check in one place: ``settings`` (how trials are scored) checks itself, this class
    the rest; a RunConfig that exists names a known space, agent and target and sane budgets.

    ``target_spec`` is ``target``'s declaration, resolved when the config is made (its TOML
    read then) and carried by ``replace``, so a search reads it once. Trust
    (``--trust-pickle``) is not part of a config: it is said on each command line."""

    policy: Path
    env_id: str | None = None
    activation: str | None = None
    conv_strides: tuple[int, ...] | None = None
    target: str = "host"
    device: str | None = None
    secret_file: str | None = None
    method: str = "joint"
    agent: str = "ilp"
    n_trials: int = 200
    time_budget_s: float | None = None
    confirm_episodes: int = 20
    n_states: int = 1024
    sticky_actions: float | None = None  # None until set up: the env id's own protocol, then recorded
    storage: str = DEFAULT_STORAGE
    study_name: str | None = None
    argv: tuple[str, ...] = ()
    settings: ProblemSettings = field(default_factory=ProblemSettings)
    target_spec: TargetSpec | None = field(default=None, compare=False, repr=False)  # resolved from ``target``

    def __post_init__(self) -> None:
        if not isinstance(self.policy, (str, os.PathLike)) or str(self.policy) in ("", "."):
            raise UsageError("a run needs a policy file (--policy)")
        object.__setattr__(self, "policy", Path(self.policy))
        if self.conv_strides is not None:
            object.__setattr__(self, "conv_strides", tuple(int(v) for v in self.conv_strides) or None)
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        for name, flag, low, high in (("n_trials", "--trials", 1, MAX_TRIALS),
                                      ("confirm_episodes", "--confirm-episodes", 1, MAX_EPISODES),
                                      ("n_states", "--states", 1, MAX_STATES)):
            check_integer(getattr(self, name), flag, low, high)
        if self.time_budget_s is not None:
            budget = self.time_budget_s
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < math.inf:
                raise UsageError(f"--time-budget must be a positive number of seconds, got {short_repr(budget)}")
            object.__setattr__(self, "time_budget_s", float(budget))
        if self.sticky_actions is not None:
            Protocol(sticky_actions=self.sticky_actions)  # a probability in [0, 1), or a one-line error
        if not isinstance(self.settings, ProblemSettings):
            raise UsageError(f"a run's settings are a ProblemSettings, got {short_repr(self.settings)}")
        find_space(self.method)
        check_agent(self.agent)
        if self.target_spec is None:
            object.__setattr__(self, "target_spec", find_target_spec(self.target))

    @property
    def spec(self) -> TargetSpec:
        """The target's declaration (resolved when the config was made)."""
        assert self.target_spec is not None  # set by __post_init__
        return self.target_spec

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``, validated as any config; the target's spec is resolved
        again only when the target changes."""
        if "target" in changes and changes["target"] != self.target:
            changes.setdefault("target_spec", None)
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """run.json's ``config`` (the resolved target spec is not stored: ``target`` names it)."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                if f.name not in ("settings", "target_spec")}
        data["policy"] = str(self.policy)
        data["conv_strides"] = list(self.conv_strides) if self.conv_strides is not None else None
        data["argv"] = list(self.argv)
        data["settings"] = self.settings.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> RunConfig:
        """Read ``to_json``'s object. Keys that no longer mean anything (``trust_pickle``: trust
        comes from the command line) are dropped."""
        if not isinstance(data, dict):
            raise UsageError(f"a run's config must be a JSON object, got {short_repr(data)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"settings", "target_spec"}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("conv_strides", "argv"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        if "settings" not in data:
            raise UsageError("the config has no settings (config.settings)")
        return cls(**values, settings=ProblemSettings.from_json(data["settings"]))


_SETTINGS_KEYS = tuple(f.name for f in dataclasses.fields(ProblemSettings))


def _nest_settings(config: Any) -> Any:
    """A version 2 ``config`` (scoring settings as flat keys) in version 3's layout."""
    if not isinstance(config, dict):
        return config
    nested = {k: v for k, v in config.items() if k not in _SETTINGS_KEYS}
    nested["settings"] = {k: config[k] for k in _SETTINGS_KEYS if k in config}
    return nested


# --- run.json ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInfo:
    """The policy a run compresses: its file (as the run was set up) and SHA-256, what it is."""

    path: Path
    sha256: str
    algo: str | None = None
    env_id: str | None = None
    layers: dict[str, Any] = field(default_factory=dict)  # the layer table (LayerTable.to_json)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "algo": self.algo, "env_id": self.env_id,
                "layers": self.layers}


@dataclass(frozen=True)
class TargetInfo:
    """The target a run measured on, as it was when the run was set up."""

    name: str
    facts: dict[str, Any]
    fingerprint: str  # what makes latencies comparable: a run never mixes two

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "facts": self.facts, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class References:
    """What every trial of a run is measured against, measured once when it was set up."""

    seeds: tuple[int, ...]  # every played trial's episodes are on these
    fp32: EpisodeStats
    random: EpisodeStats  # acting at random: retention 0
    fp32_size_bytes: int | None = None
    onnxruntime_int8: dict[str, Any] | None = None  # its point (latency_ratio, retention, ...), or {"error": ...}
    # The uniform int8 of each other runtime of the target (the builder's uniform plan on it), as a point
    runtime_int8: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "fp32": self.fp32.to_json(), "random": self.random.to_json(),
                "fp32_size_bytes": self.fp32_size_bytes, "onnxruntime_int8": self.onnxruntime_int8,
                **({"runtime_int8": self.runtime_int8} if self.runtime_int8 else {})}


@dataclass(frozen=True)
class RunInfo:
    """run.json: what a run was asked (``config``) and what it measured once to set up."""

    config: RunConfig  # as stored; the device and its secret are always the caller's, never these
    policy: PolicyInfo
    target: TargetInfo
    references: References
    study_name: str
    space: dict[str, Any]  # SearchSpace.to_json
    protocol: dict[str, Any]  # every episode of the run is played under it (Protocol.to_json)
    created: str | None = None
    autoquant_version: str | None = None
    shared_references_from: str | None = None  # the run whose states and references this one copied
    version: int = RUN_VERSION  # the layout it was read from; ``to_json`` writes this version's

    def replace(self, **changes: Any) -> RunInfo:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = {"format": RUN_FORMAT, "version": RUN_VERSION, "autoquant_version": self.autoquant_version,
                "created": self.created, "config": self.config.to_json(), "policy": self.policy.to_json(),
                "target": self.target.to_json(), "space": self.space, "study_name": self.study_name,
                "protocol": self.protocol, "reference": self.references.to_json()}
        if self.shared_references_from is not None:
            data["shared_references_from"] = self.shared_references_from
        return data

    @classmethod
    def from_json(cls, data: Any, *, what: str) -> RunInfo:
        """Read a run.json of version 2 or 3 (``what`` names it in errors); anything else,
        or a field missing or of the wrong type, is one line of UsageError."""
        if not isinstance(data, dict):
            raise UsageError(f"{what}: not a run this autoquant ({__version__}) can read")
        if data.get("format") == RUN_FORMAT and data.get("version") == 1:
            raise UsageError(f"{what}: this run was made before episodes recorded their protocol and distinct games "
                             "(run format 1), and its references cannot be paired with new episodes: start a new run")
        version = data.get("version")
        if data.get("format") != RUN_FORMAT or isinstance(version, bool) or version not in (2, RUN_VERSION):
            raise UsageError(f"{what}: not a run this autoquant ({__version__}) can read")
        _check_shape(data, what)
        raw = _nest_settings(data["config"]) if version == 2 else data["config"]
        config = _parse(what, "its config", lambda: RunConfig.from_json(raw))
        policy, target, ref = data["policy"], data["target"], data["reference"]
        return cls(
            config=config,
            policy=PolicyInfo(path=Path(policy["path"]), sha256=policy["sha256"],
                              algo=_optional(policy, "algo", str, what, "policy"),
                              env_id=_optional(policy, "env_id", str, what, "policy"),
                              layers=_optional(policy, "layers", dict, what, "policy") or {}),
            target=TargetInfo(name=target["name"], facts=target["facts"], fingerprint=target["fingerprint"]),
            references=References(
                seeds=_parse(what, "reference.seeds", lambda: tuple(_integer(s) for s in ref["seeds"])),
                fp32=_parse(what, "reference.fp32", lambda: _episodes(ref["fp32"])),
                random=_parse(what, "reference.random", lambda: _episodes(ref["random"])),
                fp32_size_bytes=_optional(ref, "fp32_size_bytes", int, what, "reference"),
                onnxruntime_int8=_optional(ref, "onnxruntime_int8", dict, what, "reference"),
                runtime_int8=_optional(ref, "runtime_int8", dict, what, "reference")),
            study_name=data["study_name"],
            space=_optional(data, "space", dict, what) or {},
            protocol=_optional(data, "protocol", dict, what) or {},
            created=_optional(data, "created", str, what),
            autoquant_version=_optional(data, "autoquant_version", str, what),
            shared_references_from=_optional(data, "shared_references_from", str, what),
            version=version,
        )


def _check_shape(data: dict[str, Any], what: str) -> None:
    """run.json has the fields every reader needs, of their types; anything else is one line."""
    shape = {"config": dict, "policy": dict, "target": dict, "reference": dict, "study_name": str}
    wrong = [key for key, kind in shape.items() if not isinstance(data.get(key), kind)]
    if not wrong:
        nested = {("policy", "path"): str, ("policy", "sha256"): str, ("target", "name"): str,
                  ("target", "facts"): dict, ("target", "fingerprint"): str, ("reference", "seeds"): list,
                  ("reference", "fp32"): dict, ("reference", "random"): dict}
        wrong = [".".join(k) for k, kind in nested.items() if not isinstance(data[k[0]].get(k[1]), kind)]
    if wrong:
        raise UsageError(f"{what}: {', '.join(wrong)} missing or of the wrong type: not a run.json autoquant wrote; "
                         "start a new run")


def read_run_info(folder: str | Path) -> RunInfo:
    """The run.json of ``folder``, read as untrusted (a regular file, capped, no symlink); a
    folder without one, or a file autoquant did not write, is one line of UsageError."""
    folder = Path(folder)
    path = folder / "run.json"
    if not path.is_file() or path.is_symlink():
        if any(folder.parent.glob(f".{folder.name}.partial-*")):
            hint = ": its set-up was interrupted before it finished; start the search again without --resume"
        elif not folder.exists():
            hint = ": it does not exist; check --out, or start a search with --policy"
        elif path.is_symlink():
            hint = ": run.json is a symlink"
        else:
            hint = ""
        raise UsageError(f"{folder} is not an autoquant run folder (no run.json){hint}")
    data = loads_json(read_file_in(folder, "run.json", what=str(path), error=UsageError, max_bytes=_MAX_JSON_BYTES),
                      what=str(path), error=UsageError)
    return RunInfo.from_json(data, what=str(path))


# --- best/confirm.json and confirm_failed.json ----------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One candidate plan replayed on the confirmation seeds."""

    trial: int
    summary: str
    retention: float
    passed: bool  # kept the floor: the first that does is the run's answer
    reward: EpisodeStats
    paired: dict[str, Any]  # against fp32 and random on the same seeds (evaluate.paired_comparison)

    def to_json(self) -> dict[str, Any]:
        return {"trial": self.trial, "summary": self.summary, "retention": self.retention, "passed": self.passed,
                "reward": self.reward.to_json(), "paired": self.paired}

    @classmethod
    def from_json(cls, data: Any) -> Attempt:
        _expect(data, dict, "an attempt")
        return cls(trial=_integer(data["trial"]), summary=_expect(data["summary"], str, "summary"),
                   retention=_number(data["retention"]), passed=_expect(data["passed"], bool, "passed"),
                   reward=_episodes(data["reward"]), paired=_expect(data["paired"], dict, "paired"))


@dataclass(frozen=True)
class SearchFigures:
    """What the search measured for the confirmed plan's trial."""

    latency_ratio: float
    retention: float | None
    size_ratio: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> SearchFigures:
        _expect(data, dict, "search")
        return cls(latency_ratio=_number(data["latency_ratio"]),
                   retention=None if data.get("retention") is None else _number(data["retention"]),
                   size_ratio=_number(data["size_ratio"]))


@dataclass(frozen=True)
class ConfirmFigures:
    """What the confirmed plan kept on the confirmation seeds, against fp32 on the same ones."""

    seeds: tuple[int, ...]
    episodes: int
    retention: float
    retention_low: float | None  # NaN or None where the interval is not defined
    retention_high: float | None
    exact: bool  # every start of a finite protocol played: the retention is the protocol's own
    distinct_pairs: int | None
    distinct_games: dict[str, int] | None  # of the plan's episodes ("candidate") and fp32's ("reference")
    protocol: dict[str, Any]
    sticky_actions: float | None
    reward: EpisodeStats
    fp32_reward: EpisodeStats
    random_reward: EpisodeStats

    def to_json(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "episodes": self.episodes, "retention": self.retention,
                "retention_low": self.retention_low, "retention_high": self.retention_high, "exact": self.exact,
                "distinct_pairs": self.distinct_pairs, "distinct_games": self.distinct_games,
                "protocol": self.protocol, "sticky_actions": self.sticky_actions, "reward": self.reward.to_json(),
                "fp32_reward": self.fp32_reward.to_json(), "random_reward": self.random_reward.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> ConfirmFigures:
        _expect(data, dict, "confirm")

        def maybe(key: str, read: Callable[[Any], T]) -> T | None:
            return None if data.get(key) is None else read(data[key])

        return cls(seeds=tuple(_integer(s) for s in _expect(data["seeds"], list, "seeds")),
                   episodes=_integer(data["episodes"]), retention=_number(data["retention"]),
                   retention_low=maybe("retention_low", _number), retention_high=maybe("retention_high", _number),
                   exact=_expect(data["exact"], bool, "exact"), distinct_pairs=maybe("distinct_pairs", _integer),
                   distinct_games=maybe("distinct_games", lambda v: _expect(v, dict, "distinct_games")),
                   protocol=_expect(data.get("protocol", {}), dict, "protocol"),
                   sticky_actions=maybe("sticky_actions", _number), reward=_episodes(data["reward"]),
                   fp32_reward=_episodes(data["fp32_reward"]), random_reward=_episodes(data["random_reward"]))


@dataclass(frozen=True)
class ConfirmedPlan:
    """The run's answer: the fastest plan that kept the floor on fresh seeds."""

    trial: int
    plan: CompressionPlan
    summary: str
    search: SearchFigures
    confirm: ConfirmFigures
    size_bytes: int
    kernels: dict[str, Any] | None = None
    fine_tuned: dict[str, Any] | None = None  # its trial's fine-tuning record; None where none was tried


@dataclass(frozen=True)
class Confirmation:
    """What confirmation found: every attempt, and the confirmed plan (best/confirm.json),
    or none that kept the floor (``best`` None: confirm_failed.json)."""

    attempts: tuple[Attempt, ...]
    best: ConfirmedPlan | None
    protocol: dict[str, Any]  # of every confirmation episode
    autoquant_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """best/confirm.json's object, or confirm_failed.json's where no plan kept the floor."""
        head = {"format": CONFIRM_FORMAT, "version": CONFIRM_VERSION, "autoquant_version": self.autoquant_version}
        attempts = [a.to_json() for a in self.attempts]
        best = self.best
        if best is None:
            return {**head, "attempts": attempts, "protocol": self.protocol,
                    "sticky_actions": self.protocol.get("sticky_actions")}
        return {**head, "trial": best.trial, "plan": best.plan.to_json(), "summary": best.summary,
                "search": best.search.to_json(), "confirm": best.confirm.to_json(), "size_bytes": best.size_bytes,
                "kernels": best.kernels, "attempts": attempts, "fine_tuned": best.fine_tuned}

    @classmethod
    def from_json(cls, data: Any, *, what: str, confirmed: bool) -> Confirmation:
        """Read best/confirm.json (``confirmed``: it names the confirmed plan) or
        confirm_failed.json; anything autoquant did not write is one line of UsageError."""
        if not isinstance(data, dict) or data.get("format") != CONFIRM_FORMAT or data.get("version") != CONFIRM_VERSION:
            raise UsageError(f"{what} is not a {CONFIRM_FORMAT} file autoquant wrote: restore it from the run, or "
                             "start a new run")
        attempts = _parse(what, "attempts", lambda: tuple(
            Attempt.from_json(a) for a in _expect(data.get("attempts", []), list, "attempts")))
        version = _optional(data, "autoquant_version", str, what)
        if not confirmed:
            return cls(attempts=attempts, best=None, protocol=_optional(data, "protocol", dict, what) or {},
                       autoquant_version=version)
        confirm = _parse(what, "confirm", lambda: ConfirmFigures.from_json(data["confirm"]))
        best = ConfirmedPlan(
            trial=_parse(what, "trial", lambda: _integer(data["trial"])),
            plan=_parse(what, "plan", lambda: CompressionPlan.from_json(data["plan"])),
            summary=_parse(what, "summary", lambda: _expect(data["summary"], str, "summary")),
            search=_parse(what, "search", lambda: SearchFigures.from_json(data["search"])), confirm=confirm,
            size_bytes=_parse(what, "size_bytes", lambda: _integer(data["size_bytes"])),
            kernels=_optional(data, "kernels", dict, what), fine_tuned=_optional(data, "fine_tuned", dict, what))
        return cls(attempts=attempts, best=best, protocol=confirm.protocol, autoquant_version=version)


def _read_confirmation(folder: Path, name: str, *, confirmed: bool) -> Confirmation | None:
    path = folder / name
    if not path.exists() and not path.is_symlink():
        return None
    data = loads_json(read_file_in(folder, name, what=str(path), error=UsageError, max_bytes=_MAX_JSON_BYTES),
                      what=str(path), error=UsageError)
    return Confirmation.from_json(data, what=str(path), confirmed=confirmed)


def read_confirm(folder: str | Path) -> Confirmation | None:
    """A run folder's best/confirm.json (the confirmed plan and every attempt), read as
    untrusted input; None before a plan was confirmed, one line of UsageError for a file
    autoquant did not write."""
    return _read_confirmation(Path(folder) / "best", "confirm.json", confirmed=True)


def read_confirm_failed(folder: str | Path) -> Confirmation | None:
    """A run folder's confirm_failed.json (every candidate fell below the floor), or None."""
    return _read_confirmation(Path(folder), "confirm_failed.json", confirmed=False)


# --- reading untrusted values ----------------------------------------------------------------------


def _parse(what: str, part: str, read: Callable[[], T]) -> T:
    """``read()``, with anything it raises on a malformed value said in one line."""
    try:
        return read()
    except AutoquantError as exc:
        raise UsageError(f"{what}: {part}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise UsageError(f"{what}: {part} cannot be read ({describe_exception(exc)}): not a file autoquant wrote; "
                         "start a new run") from None


def _optional(data: dict[str, Any], key: str, kind: type[T], what: str, within: str = "") -> T | None:
    """``data[key]`` where present and not null, of type ``kind``."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = f"{within}.{key}" if within else key
        raise UsageError(f"{what}: {name} is of the wrong type ({short_repr(value)}): not a file autoquant wrote; "
                         "start a new run")
    return value


def _expect(value: Any, kind: type[T], name: str) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}, got {short_repr(value)}")
    return value


def _episodes(data: Any) -> EpisodeStats:
    """Episodes as ``EpisodeStats.to_json`` wrote them: one seed, reward, length (and game) each."""
    episodes = EpisodeStats.from_json(_expect(data, dict, "episodes"))
    counts = {len(episodes.seeds), len(episodes.rewards), len(episodes.lengths), len(episodes.labels)}
    if len(counts) != 1 or not episodes.seeds:
        raise ValueError("episodes need one seed, reward, length and game each, and at least one episode")
    return episodes


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {short_repr(value)}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {short_repr(value)}")
    return float(value)
