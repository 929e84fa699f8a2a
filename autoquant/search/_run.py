"""A search run: its folder, its references, resume, confirmation and results.

    RUN/run.json         what was asked (argv, policy and its hash, target and device
                         facts, space, agent, seed) and the references measured once
    RUN/states.npz       recorded states (calibration), RUN/held_out.npz (fidelity)
    RUN/study.db         the Optuna study (unless --storage names another database)
    RUN/best/            plan.json, policy.onnx, confirm.json of the confirmed best plan
    RUN/models/          KEY.onnx: the graphs of fine-tuned trials (--finetune), as judged
    RUN/report.md, RUN/pareto.png

Setting up happens in a staging folder renamed into place at the end, so a run
folder either has everything needed to resume, or does not exist.

Trust is never read from a run folder: whether a pickled or TorchScript policy may be
loaded is said on each command line (``trust_pickle``), for ``start_run`` and
``load_run`` alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import atomic_write, check_output_folder, sha256_file, write_json
from autoquant._limits import MAX_EPISODES, MAX_SEED, MAX_STATES, MAX_TRIALS, check_integer
from autoquant._untrusted import loads_json, read_file_in, short_repr
from autoquant._version import __version__
from autoquant.compress import CompressionPlan, compress, export_reference, onnxruntime_uniform_int8, weight_bytes
from autoquant.errors import DeviceUnreachable, UsageError, describe_exception
from autoquant.evaluate import (
    HELD_OUT_SEED_OFFSET,
    EpisodeStats,
    StateSet,
    describe_episodes,
    episode_seeds,
    fidelity,
    onnx_actor,
    paired_comparison,
    play_episodes,
    random_actor,
    record_states,
)
from autoquant.policy import PolicyBundle, Protocol, analyse, load_policy, resolve_protocol
from autoquant.search._agent import AgentContext
from autoquant.search._agents import check_agent, make_agent
from autoquant.search._problem import ProblemSettings, SearchProblem
from autoquant.search._record import TrialRecord
from autoquant.search._space import SearchSpace, find_space, load_space
from autoquant.search._study import (
    DISK_FULL,
    SearchRunner,
    TrialOutcome,
    check_storage,
    create_study_file,
    fail_dead_trials,
    open_study,
    trial_records,
)
from autoquant.targets import OrtRunner, Target, find_target_spec, get_target, target_fingerprint

__all__ = ["CONFIRM_FORMAT", "RUN_FORMAT", "Run", "RunConfig", "load_run", "read_confirm", "start_run"]

RUN_FORMAT = "autoquant.run"
RUN_VERSION = 2  # 2: episodes under a recorded protocol (sticky actions, no-op starts), distinct games
CONFIRM_FORMAT = "autoquant.confirm"
CONFIRM_VERSION = 1
DEFAULT_STORAGE = "study.db"


@dataclass(frozen=True)
class RunConfig:
    """Everything ``autoquant search`` was asked, as stored in run.json. Validated when
    made: a RunConfig that exists names a known space, agent and target and sane
    budgets. Trust (``--trust-pickle``) is not part of it: see the module docstring."""

    policy: str
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
    mode: str = "single"
    min_retention: float = 0.98
    episodes: int = 10
    confirm_episodes: int = 20
    fidelity_floor: float = 0.5
    n_states: int = 1024
    n_envs: int = 8
    seed: int = 0
    confidence: float = 0.95
    sticky_actions: float | None = None  # None until set up: the env id's own protocol, then recorded
    proxy_states: int | None = None
    finetune_epochs: int = 0
    finetune_rounds: int = 2
    finetune_below: float = 0.98
    storage: str = DEFAULT_STORAGE
    study_name: str | None = None
    argv: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.policy:
            raise UsageError("a run needs a policy file (--policy)")
        if self.conv_strides is not None:
            object.__setattr__(self, "conv_strides", tuple(int(v) for v in self.conv_strides))
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        for name, low, high in (("n_trials", 1, MAX_TRIALS), ("confirm_episodes", 1, MAX_EPISODES),
                                ("n_states", 1, MAX_STATES), ("seed", 0, MAX_SEED)):
            check_integer(getattr(self, name), "--" + name.replace("n_", "").replace("_", "-"), low, high)
        if self.time_budget_s is not None:
            if isinstance(self.time_budget_s, bool) or not isinstance(self.time_budget_s, (int, float)) \
                    or not self.time_budget_s > 0:
                raise UsageError(f"--time-budget must be a positive number of seconds, got {self.time_budget_s!r}")
            object.__setattr__(self, "time_budget_s", float(self.time_budget_s))
        if self.sticky_actions is not None:
            Protocol(sticky_actions=self.sticky_actions)  # a probability in [0, 1), or a one-line error
        find_space(self.method)
        check_agent(self.agent)
        find_target_spec(self.target)
        # The scoring settings check themselves; made once, kept for the problem.
        object.__setattr__(self, "_settings", ProblemSettings(
            mode=self.mode, min_retention=self.min_retention, episodes=self.episodes,
            fidelity_floor=self.fidelity_floor, n_envs=self.n_envs, seed=self.seed, confidence=self.confidence,
            proxy_states=self.proxy_states, finetune_epochs=self.finetune_epochs,
            finetune_rounds=self.finetune_rounds, finetune_below=self.finetune_below))

    @property
    def settings(self) -> ProblemSettings:
        """How this run scores trials."""
        return self._settings  # type: ignore[attr-defined, no-any-return]

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["conv_strides"] = list(self.conv_strides) if self.conv_strides is not None else None
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """Read run.json's ``config``; keys of older versions that no longer mean anything
        (``trust_pickle``: trust comes from the command line) are dropped."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for key in ("conv_strides", "argv"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


def _read_json_in(folder: Path, name: str, fmt: str) -> dict[str, Any] | None:
    """A JSON file of the run folder, read as untrusted (a regular file, capped, no symlink),
    or None when there is none; a file that is not what autoquant wrote is one line."""
    path = folder / name
    if not path.exists() and not path.is_symlink():
        return None
    data = loads_json(read_file_in(folder, name, what=str(path), error=UsageError, max_bytes=64 << 20),
                      what=str(path), error=UsageError)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UsageError(f"{path} is not a {fmt} file autoquant wrote: restore it from the run, or start a new run")
    return data


def read_confirm(folder: str | Path) -> dict[str, Any] | None:
    """A run folder's best/confirm.json (what confirmation found), read as untrusted input;
    None before a plan was confirmed, one line of UsageError for a file autoquant did not write."""
    return _read_json_in(Path(folder) / "best", "confirm.json", CONFIRM_FORMAT)


def confirm_seeds(seed: int, episodes: int, protocol: Protocol) -> list[int]:
    """Seeds that confirm a plan: every start of a finite protocol (the retention is then exact
    for it), else ``episodes`` seeds the search never played."""
    return episode_seeds(seed + 1, protocol.starts if protocol.starts is not None else episodes)


FP32_POINT = {"latency_ratio": 1.0, "retention": 1.0, "size_ratio": 1.0}


@dataclass
class Run:
    """A run folder opened for searching, resuming or exporting."""

    folder: Path
    info: dict[str, Any]
    config: RunConfig
    problem: SearchProblem
    space: SearchSpace
    states: StateSet
    held_out: np.ndarray

    @property
    def bundle(self) -> PolicyBundle:
        """The fp32 policy the run compresses."""
        return self.problem.bundle

    @property
    def protocol(self) -> Protocol:
        """The protocol every episode of this run is played under."""
        return self.problem.protocol

    @property
    def storage_url(self) -> str:
        storage = self.config.storage
        if storage == DEFAULT_STORAGE:
            path = self.folder / DEFAULT_STORAGE
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise UsageError(f"{path} is a symlink or not a regular file: a run's study lives in its own folder; "
                                 "remove the link")
            return f"sqlite:///{path.resolve()}"
        return storage

    @property
    def study_name(self) -> str:
        return str(self.info["study_name"])

    def resume_command(self) -> str:
        """The command that continues this run; it names again what a run folder never chooses
        by itself (the database, a target file, the device and its secret)."""
        import shlex

        words = ["autoquant", "search", "--out", str(self.folder), "--resume"]
        if self.config.storage != DEFAULT_STORAGE:
            words += ["--storage", self.config.storage]
        if _is_path(self.config.target):
            words += ["--target", self.config.target]
        if self.config.device:
            words += ["--device", self.config.device]
        if self.config.secret_file:
            words += ["--secret-file", self.config.secret_file]
        return shlex.join(words)

    # --- searching ---------------------------------------------------------------------

    def search(self, *, agent_name: str | None = None, n_trials: int | None = None,
               progress: Callable[[TrialOutcome, SearchRunner], None] | None = None) -> SearchRunner:
        name = agent_name or self.config.agent
        budget = n_trials or self.config.n_trials
        history = len(self.study().get_trials(deepcopy=False))
        agent = make_agent(name, AgentContext(self.space, self.config.mode, self.config.seed, budget, history,
                                              folder=self.folder))
        study = open_study(self.storage_url, self.study_name, self.config.mode, agent.sampler())
        fail_dead_trials(study)
        runner = SearchRunner(study, self.space, self.problem, n_trials=budget, agent=name, progress=progress,
                              time_budget_s=self.config.time_budget_s)
        try:
            agent.run(runner)
        finally:
            runner.close()
        return runner

    def study(self) -> Any:
        import optuna

        return open_study(self.storage_url, self.study_name, self.config.mode, optuna.samplers.RandomSampler())

    def records(self) -> list[TrialRecord]:
        """Every trial so far, by any agent or worker. A run whose own study.db is gone says
        so, instead of reading (and creating) an empty study."""
        path = self.folder / DEFAULT_STORAGE
        if self.config.storage == DEFAULT_STORAGE and not path.exists() and not path.is_symlink():
            raise UsageError(f"{path} is missing: this run's study (every trial) is gone; restore the file, or "
                             "start a new run")
        return trial_records(self.study())

    def record(self, number: int) -> TrialRecord | None:
        return next((r for r in self.records() if r.number == number), None)

    def report_records(self) -> list[dict[str, Any]]:
        """The records as plain dicts, for ``autoquant.report``."""
        records = self.records()
        start = next((r.started_at for r in records if r.started_at is not None), None)
        return [r.to_json(min_retention=self.config.min_retention, study_start=start) for r in records]

    def references(self) -> dict[str, dict[str, Any]]:
        """Points every report shows beside the search's: fp32, and onnxruntime's uniform int8."""
        points = {"fp32": dict(FP32_POINT)}
        ort = self.info["reference"].get("onnxruntime_int8") or {}
        if "latency_ratio" in ort:
            points["onnxruntime int8"] = {k: ort.get(k) for k in ("latency_ratio", "retention", "size_ratio")}
        return points

    # --- results ---------------------------------------------------------------------------

    def best(self) -> dict[str, Any] | None:
        """best/confirm.json, or None before a plan was confirmed."""
        return read_confirm(self.folder)

    def plan_of(self, trial: int | str) -> tuple[int, CompressionPlan]:
        """The plan of trial N, or of the confirmed best ("best")."""
        if trial == "best":
            best = self.best()
            if best is None:
                raise UsageError(f"{self.folder} has no confirmed best plan yet; finish the search "
                                 f"({self.resume_command()}) or pass --trial N")
            return int(best["trial"]), CompressionPlan.from_json(best["plan"])
        records = self.records()
        if not records:
            raise UsageError(f"the study {self.study_name!r} of {self.folder} has no trials: nothing to export; run "
                             f"the search ({self.resume_command()})")
        record = next((r for r in records if r.number == int(trial)), None)
        if record is None or record.plan is None:
            raise UsageError(f"trial {trial} has no plan in this run (trials 0..{len(records) - 1})")
        return int(trial), CompressionPlan.from_json(record.plan)

    def compress(self, plan: CompressionPlan, *, rounding: str | None = None) -> Any:
        """The plan compressed as its trials built it, before any fine-tuning (see ``model``)."""
        options = {} if rounding is None else {"rounding": rounding}
        return compress(self.bundle, plan, self.states.states, seed=self.config.seed, **options)

    def fine_tuned(self, plan: CompressionPlan) -> bytes | None:
        """The graph of the plan's fine-tuned trial, as it was judged; None where no trial of
        the plan kept a fine-tuned graph. The file in ``models/`` must be the one its trial
        recorded (its SHA-256 in the study): a file planted or changed there is refused."""
        key = self.problem.key(plan)
        digests = {str(r.result.finetune.get("model_sha256")) for r in self.records()
                   if r.result is not None and r.key == key and r.result.finetune
                   and r.result.finetune.get("kept") and r.result.finetune.get("model_sha256")}
        if not digests:
            return None
        models = self.folder / "models"
        if models.is_symlink():
            raise UsageError(f"{models} is a symlink: a run's fine-tuned graphs live in its own folder")
        data = read_file_in(models, f"{key}.onnx", what=f"the fine-tuned graph of plan {key}", error=UsageError,
                            max_bytes=1 << 30)
        if hashlib.sha256(data).hexdigest() not in digests:
            raise UsageError(f"{models / (key + '.onnx')} is not the graph its trial recorded (its SHA-256 differs): "
                             "the run folder was changed; restore the file or export another trial")
        return data

    def confirm(self, *, max_candidates: int = 3) -> dict[str, Any] | None:
        """Replay the best feasible plans on fresh seeds; the first that keeps the floor
        is the run's answer, written to best/. Only plans measured faster than fp32 are
        candidates: fp32 is always one, and None means it stays the best."""
        floor_retention = self.config.min_retention
        records = [r for r in self.records() if r.result is not None and r.feasible(floor_retention)
                   and r.result.latency_ratio < 1.0]
        records.sort(key=lambda r: (r.result.latency_ratio, -(r.result.retention or 0.0),  # type: ignore[union-attr]
                                    r.result.size_ratio))  # type: ignore[union-attr]
        seen: set[str] = set()
        candidates = []
        for r in records:
            if r.summary not in seen:
                seen.add(r.summary)
                candidates.append(r)
        if not candidates:
            return None
        seeds = confirm_seeds(self.config.seed, self.config.confirm_episodes, self.protocol)
        fp32 = self.problem.play(self.problem.reference_onnx, seeds)
        floor = play_episodes(random_actor(self.bundle.action_space, self.config.seed + 1),
                              self.bundle.env_id, seeds, protocol=self.protocol,  # type: ignore[arg-type]
                              n_envs=self.config.n_envs)
        attempts = []
        for record in candidates[:max_candidates]:
            assert record.plan is not None and record.result is not None  # feasible records have both
            plan = CompressionPlan.from_json(record.plan)
            compressed = self.compress(plan)
            model = self.fine_tuned(plan) or compressed.onnx
            episodes = self.problem.play(model, seeds)
            paired = paired_comparison(episodes, fp32, floor)
            attempt = {"trial": record.number, "summary": record.summary, "retention": paired["retention"],
                       "passed": paired["retention"] >= floor_retention, "reward": episodes.to_json(),
                       "paired": paired}
            attempts.append(attempt)
            if paired["retention"] >= floor_retention:
                best_dir = self.folder / "best"
                best_dir.mkdir(exist_ok=True)
                atomic_write(best_dir / "policy.onnx", model, inside=self.folder)
                write_json(best_dir / "plan.json", plan.to_json(), inside=self.folder)
                data = {
                    "format": CONFIRM_FORMAT, "version": CONFIRM_VERSION, "autoquant_version": __version__,
                    "trial": record.number, "plan": plan.to_json(), "summary": record.summary,
                    "search": {"latency_ratio": record.result.latency_ratio, "retention": record.result.retention,
                               "size_ratio": record.result.size_ratio},
                    "confirm": {"seeds": seeds, "episodes": len(seeds), "retention": paired["retention"],
                                "retention_low": paired["retention_low"], "retention_high": paired["retention_high"],
                                "exact": paired["exact"], "distinct_pairs": paired["distinct_pairs"],
                                "distinct_games": paired["distinct_games"], "protocol": self.protocol.to_json(),
                                "sticky_actions": self.protocol.sticky_actions,
                                "reward": episodes.to_json(), "fp32_reward": fp32.to_json(),
                                "random_reward": floor.to_json()},
                    "size_bytes": compressed.size_bytes,
                    "kernels": compressed.kernels.to_json() if compressed.kernels else None,
                    "attempts": attempts, "fine_tuned": record.result.finetune,
                }
                write_json(best_dir / "confirm.json", data, inside=self.folder)
                return data
        write_json(self.folder / "confirm_failed.json", {"format": CONFIRM_FORMAT, "version": CONFIRM_VERSION,
                                                         "autoquant_version": __version__, "attempts": attempts,
                                                         "protocol": self.protocol.to_json(),
                                                         "sticky_actions": self.protocol.sticky_actions},
                   inside=self.folder)
        return None

    def confirmation(self) -> dict[str, Any] | None:
        """What confirmation found: best/confirm.json, else confirm_failed.json, else None
        (not confirmed yet)."""
        best = self.best()
        if best is not None:
            return best
        return _read_json_in(self.folder, "confirm_failed.json", CONFIRM_FORMAT)

    def write_report(self) -> None:
        from autoquant.report import plot_pareto, write_report

        records = self.report_records()
        references = self.references()
        fp32 = self.problem.fp32_episodes
        run_info = {"policy": self.config.policy, "env": self.bundle.env_id, "target": self.config.target,
                    "method": self.config.method, "agent": self.config.agent, "trials": self.config.n_trials,
                    "seed": self.config.seed, "mode": self.config.mode,
                    "protocol": describe_episodes(fp32),
                    "min_retention": self.config.min_retention, "device": self.info["target"]["facts"]}
        plot_pareto(records, references, self.folder / "pareto.png", floor=self.config.min_retention,
                    title=f"{Path(self.config.policy).name} on {self.config.target}")
        write_report(self.folder / "report.md", records, references, floor=self.config.min_retention,
                     run_info=run_info, confirmation=self.confirmation())


# --- setting a run up ------------------------------------------------------------------------


@dataclass
class _Loaded:
    """What a run is built from, loaded once."""

    bundle: PolicyBundle
    table: Any
    space: SearchSpace
    target: Target
    reference_onnx: bytes


def _load(config: RunConfig, *, trust_pickle: bool) -> _Loaded:
    bundle = load_policy(config.policy, env_id=config.env_id, trust_pickle=trust_pickle,
                         activation=config.activation,
                         conv_strides=list(config.conv_strides) if config.conv_strides else None)
    table = analyse(bundle)
    space = load_space(config.method, table,
                       accelerated_precisions=find_target_spec(config.target).accelerated_precisions)
    target = get_target(config.target, device=config.device, secret_file=config.secret_file)
    return _Loaded(bundle, table, space, target, export_reference(bundle))


def _build(folder: Path, info: dict[str, Any], config: RunConfig, loaded: _Loaded) -> Run:
    fingerprint = target_fingerprint(loaded.target)
    if fingerprint != info["target"]["fingerprint"]:
        raise UsageError(f"target {config.target!r} is now {fingerprint!r}, but this run measured on "
                         f"{info['target']['fingerprint']!r}: latencies would not compare; start a new run")
    states = StateSet.load(folder / "states.npz")
    held_out = StateSet.load(folder / "held_out.npz").states
    ref = info["reference"]
    problem = SearchProblem(
        loaded.bundle, loaded.table, loaded.target, states=states.states, held_out=held_out,
        reference_onnx=loaded.reference_onnx, settings=config.settings, episode_seeds=list(ref["seeds"]),
        fp32_episodes=EpisodeStats.from_json(ref["fp32"]), random_episodes=EpisodeStats.from_json(ref["random"]),
        target_fingerprint=info["target"]["fingerprint"], models_dir=folder / "models",
    )
    return Run(folder=folder, info=info, config=config, problem=problem, space=loaded.space, states=states,
               held_out=held_out)


def _check_new_folder(folder: Path) -> None:
    check_output_folder(folder, "--out")
    if (folder / "run.json").exists():
        raise UsageError(f"{folder} already holds a run: pass --resume to continue it, or another --out")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not an autoquant run folder: choose another --out")


def start_run(folder: Path, config: RunConfig, *, trust_pickle: bool = False,
              log: Callable[[str], None] = lambda s: None, share_from: Run | None = None) -> Run:
    """Set up a new run folder: validate everything, record states, measure the
    references, and only then put the folder in place.

    ``share_from``: a run of the same policy, env, target and seed whose states and
    references this one reuses (``compare`` gives every combination the same ones).
    """
    folder = Path(folder)
    _check_new_folder(folder)
    if config.storage != DEFAULT_STORAGE:
        check_storage(config.storage)
    policy = Path(config.policy).resolve()
    if not policy.is_file():
        raise UsageError(f"--policy {config.policy}: no such file")
    loaded = _load(config.replace(policy=str(policy)), trust_pickle=trust_pickle)
    bundle = loaded.bundle
    if bundle.env_id is None:
        raise UsageError(f"{policy}: the environment is unknown; pass --env (a gymnasium id)")
    protocol = resolve_protocol(bundle.env_id, config.sticky_actions)
    config = config.replace(policy=str(policy), env_id=bundle.env_id, sticky_actions=protocol.sticky_actions)
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        if share_from is not None:
            info = _share(share_from, staging, folder, config, loaded.space)
        else:
            info = _measure_references(staging, folder, config, loaded, policy, log)
        write_json(staging / "run.json", info)
        if config.storage == DEFAULT_STORAGE:  # the study is part of the folder: made before it is put in place
            create_study_file(staging / DEFAULT_STORAGE, str(info["study_name"]), config.mode)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise UsageError(f"no space left on the device of {folder} while setting the run up: nothing was kept; "
                             "free some space and start the search again") from None
        raise
    return _build(folder, info, config, loaded)


def _measure_references(staging: Path, folder: Path, config: RunConfig, loaded: _Loaded, policy: Path,
                        log: Callable[[str], None]) -> dict[str, Any]:
    bundle, table, target = loaded.bundle, loaded.table, loaded.target
    log("recording states from the fp32 policy")
    states = record_states(bundle, n=config.n_states, seed=config.seed)
    held = record_states(bundle, n=max(256, config.n_states // 4), seed=config.seed + HELD_OUT_SEED_OFFSET)
    states.save(staging / "states.npz")
    held.save(staging / "held_out.npz")
    protocol = resolve_protocol(bundle.env_id, config.sticky_actions)  # type: ignore[arg-type]
    seeds = episode_seeds(config.seed, config.episodes, protocol)
    log(f"playing the fp32 and random policies on {len(seeds)} seeds ({protocol.name})")
    fp32 = play_episodes(onnx_actor(bundle, loaded.reference_onnx), bundle.env_id, seeds,  # type: ignore[arg-type]
                         protocol=protocol, n_envs=config.n_envs)
    floor = play_episodes(random_actor(bundle.action_space, config.seed), bundle.env_id, seeds,  # type: ignore[arg-type]
                          protocol=protocol, n_envs=config.n_envs)
    log(f"fp32: {describe_episodes(fp32)}")
    log("measuring onnxruntime's uniform int8 as a reference point")
    ort_point = _ort_reference(loaded, states.states, held.states, seeds, fp32, floor, config.n_envs)
    return {
        "format": RUN_FORMAT, "version": RUN_VERSION, "autoquant_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_json(),
        "policy": {"path": str(policy), "sha256": sha256_file(policy), "algo": bundle.algo,
                   "env_id": bundle.env_id, "layers": table.to_json()},
        "target": {"name": target.name, "facts": target.facts(), "fingerprint": target_fingerprint(target)},
        "space": loaded.space.to_json(),
        "study_name": config.study_name or folder.resolve().name,
        "protocol": protocol.to_json(),
        "reference": {"seeds": seeds, "fp32": fp32.to_json(), "random": floor.to_json(),
                      "fp32_size_bytes": weight_bytes(table, CompressionPlan()),
                      "onnxruntime_int8": ort_point},
    }


def _share(source: Run, staging: Path, folder: Path, config: RunConfig, space: SearchSpace) -> dict[str, Any]:
    same = ("policy", "env_id", "target", "seed", "n_states", "episodes", "n_envs", "sticky_actions")
    differs = [k for k in same if getattr(source.config, k) != getattr(config, k)]
    if differs:
        raise UsageError(f"cannot share references between runs that differ in {differs}")
    for name in ("states.npz", "held_out.npz"):
        shutil.copyfile(source.folder / name, staging / name)
    info = json.loads(json.dumps(source.info))
    info["config"] = config.to_json()
    info["space"] = space.to_json()
    info["study_name"] = config.study_name or folder.resolve().name
    info["shared_references_from"] = str(source.folder)
    return info


def _ort_reference(loaded: _Loaded, states: np.ndarray, held: np.ndarray, seeds: list[int], fp32: EpisodeStats,
                   floor: EpisodeStats, n_envs: int) -> dict[str, Any]:
    """onnxruntime's own uniform int8, measured like a trial (a point on the report)."""
    bundle, table, reference = loaded.bundle, loaded.table, loaded.reference_onnx
    try:
        model = onnxruntime_uniform_int8(reference, states)
        latency = loaded.target.measure(model, reference, held[:1])
    except Exception as exc:  # noqa: BLE001 - a reference point that cannot be had is reported, not fatal
        if isinstance(exc, DeviceUnreachable):
            raise
        return {"error": describe_exception(exc)}
    episodes = play_episodes(onnx_actor(bundle, model), bundle.env_id, seeds,  # type: ignore[arg-type]
                             protocol=fp32.protocol, n_envs=n_envs)
    paired = paired_comparison(episodes, fp32, floor)
    size = weight_bytes(table, CompressionPlan.uniform(table))
    return {"latency_ratio": latency.ratio, "retention": paired["retention"],
            "retention_low": paired["retention_low"], "retention_high": paired["retention_high"],
            "exact": paired["exact"], "distinct_pairs": paired["distinct_pairs"],
            "size_ratio": size / weight_bytes(table, CompressionPlan()),
            "fidelity": fidelity(OrtRunner(reference)(held), OrtRunner(model)(held), bundle.action),
            "reward": episodes.to_json()}


def _is_path(target: str) -> bool:
    """A target given as a TOML file rather than by the name of a shipped one."""
    return "/" in target or "\\" in target or target.endswith(".toml")


def _check_info(info: Any, path: Path) -> None:
    """run.json has the shape this version writes; anything else is one line."""
    shape = {"config": dict, "policy": dict, "target": dict, "reference": dict, "study_name": str}
    wrong = [key for key, kind in shape.items() if not isinstance(info.get(key), kind)]
    if not wrong:
        nested = {("policy", "sha256"): str, ("target", "fingerprint"): str, ("reference", "seeds"): list,
                  ("reference", "fp32"): dict, ("reference", "random"): dict}
        wrong = [".".join(k) for k, kind in nested.items() if not isinstance(info[k[0]].get(k[1]), kind)]
    if wrong:
        raise UsageError(f"{path}: {', '.join(wrong)} missing or of the wrong type: not a run.json autoquant wrote; "
                         "start a new run")


def load_run(folder: Path, *, trust_pickle: bool = False, n_trials: int | None = None, device: str | None = None,
             secret_file: str | None = None, time_budget_s: float | None = None,
             sticky_actions: float | None = None, storage: str | None = None, target: str | None = None) -> Run:
    """Open an existing run folder (to resume it or export from it).

    The folder is data, not configuration: the database, the device and its secret come from
    the caller (the command line, the environment, the user's own files), never from run.json.
    A run whose study lives in another database, or that was measured on a target given as a
    TOML file, opens only when the caller names the same ``storage`` or ``target`` again."""
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
    info = loads_json(read_file_in(folder, "run.json", what=str(path), error=UsageError, max_bytes=64 << 20),
                      what=str(path), error=UsageError)
    if not isinstance(info, dict):
        raise UsageError(f"{path}: not a run this autoquant ({__version__}) can read")
    if info.get("format") == RUN_FORMAT and info.get("version") == 1:
        raise UsageError(f"{path}: this run was made before episodes recorded their protocol and distinct games "
                         "(run format 1), and its references cannot be paired with new episodes: start a new run")
    if info.get("format") != RUN_FORMAT or info.get("version") != RUN_VERSION:
        raise UsageError(f"{path}: not a run this autoquant ({__version__}) can read")
    _check_info(info, path)
    try:
        config = RunConfig.from_json(info["config"])
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{path}: its config cannot be read ({describe_exception(exc)}); start a new run") from None
    if sticky_actions is not None and sticky_actions != config.sticky_actions:
        raise UsageError(f"--sticky-actions {sticky_actions:g}, but this run plays every episode with sticky actions "
                         f"{config.sticky_actions:g} (recorded in run.json): one run never mixes protocols; drop the "
                         "option, or start a new run")
    if config.storage != DEFAULT_STORAGE and storage != config.storage:
        raise UsageError(f"this run's study is in another database ({short_repr(config.storage)} in run.json): a run "
                         "folder never chooses a database; pass --storage with that URL to use it")
    if config.storage == DEFAULT_STORAGE and storage is not None and storage != DEFAULT_STORAGE:
        raise UsageError(f"--storage {storage}, but this run's study is its own study.db: drop --storage")
    if config.storage != DEFAULT_STORAGE:
        check_storage(config.storage)
    if _is_path(config.target) and target != config.target:
        raise UsageError(f"this run was measured on the target file {short_repr(config.target)} (run.json): a run "
                         "folder never chooses a target file; pass --target with that path to use it")
    if target is not None and target != config.target:
        raise UsageError(f"--target {target}, but this run measured on {short_repr(config.target)}: latencies would "
                         "not compare; drop --target, or start a new run")
    policy = Path(config.policy)
    if not policy.is_file():
        raise UsageError(f"the run's policy {policy} is missing; restore it to resume or export")
    if sha256_file(policy) != info["policy"]["sha256"]:
        raise UsageError(f"the run's policy {policy} changed since the run started (sha256 differs): "
                         "start a new run for the new file")
    # The board's address and its secret come from the caller (or the environment, or the
    # target's own TOML), never from the folder: a planted run.json must not pick a device.
    config = config.replace(device=device, secret_file=secret_file)
    changed = {k: v for k, v in (("n_trials", n_trials), ("time_budget_s", time_budget_s)) if v is not None}
    if changed:  # a resumed search may be given a larger budget
        config = config.replace(**changed)
        info["config"].update(changed)
        write_json(path, info, inside=folder)
    return _build(folder, info, config, _load(config, trust_pickle=trust_pickle))
