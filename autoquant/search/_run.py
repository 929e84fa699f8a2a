"""A search run: its folder, its references, resume, confirmation and results.

    RUN/run.json         what was asked (the RunConfig: argv, policy, target, space, agent,
                         settings) and what was measured once (policy hash, target and device
                         facts, references): ``RunInfo``
    RUN/states.npz       recorded states (calibration), RUN/held_out.npz (fidelity)
    RUN/study.db         the Optuna study (unless --storage names another database)
    RUN/best/            plan.json, policy.onnx, confirm.json of the confirmed best plan (``Confirmation``)
    RUN/models/          KEY.onnx: the graphs of fine-tuned trials (--finetune), as judged
    RUN/report.md, RUN/pareto.png

The JSON files are read and written only through their types in ``_artifacts``. Setting
up happens in a staging folder renamed into place at the end, so a run folder either has
everything needed to resume, or does not exist.

Trust is never read from a run folder: whether a pickled or TorchScript policy may be
loaded is said on each command line (``trust_pickle``), for ``start_run`` and
``load_run`` alike.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import atomic_write, check_output_folder, sha256_file, write_json
from autoquant._untrusted import read_file_in, short_repr
from autoquant._version import __version__
from autoquant.compress import CompressionPlan, compress, export_reference, weight_bytes
from autoquant.runtimes import onnxruntime_uniform_int8
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
from autoquant.policy import LayerTable, PolicyBundle, Protocol, analyse, load_policy, resolve_protocol
from autoquant.search._agent import AgentContext
from autoquant.search._agents import make_agent
from autoquant.search._artifacts import (
    DEFAULT_STORAGE,
    RUN_VERSION,
    Attempt,
    ConfirmedPlan,
    ConfirmFigures,
    Confirmation,
    PolicyInfo,
    References,
    RunConfig,
    RunInfo,
    SearchFigures,
    TargetInfo,
    read_confirm,
    read_confirm_failed,
    read_run_info,
)
from autoquant.search._problem import PlayStore, SearchProblem
from autoquant.search._record import TrialRecord
from autoquant.search._space import SearchSpace, load_space
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
from autoquant.targets import Target, get_target, target_fingerprint
from autoquant.runtimes import OrtRunner, Runner

__all__ = ["Run", "load_run", "start_run"]


def confirm_seeds(seed: int, episodes: int, protocol: Protocol) -> list[int]:
    """Seeds that confirm a plan: every start of a finite protocol (the retention is then exact
    for it), else ``episodes`` seeds the search never played."""
    return episode_seeds(seed + 1, protocol.starts if protocol.starts is not None else episodes)


FP32_POINT = {"latency_ratio": 1.0, "retention": 1.0, "size_ratio": 1.0}


@dataclass
class Run:
    """A run folder opened for searching, resuming or exporting."""

    folder: Path
    info: RunInfo  # run.json as stored
    config: RunConfig  # what this run runs with: run.json's, with the caller's device and budget
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
        return self.info.study_name

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
               progress: Callable[[TrialOutcome, SearchRunner], None] | None = None,
               on_fresh: Callable[[CompressionPlan, TrialOutcome, str | None], None] | None = None) -> SearchRunner:
        """Run the agent until the budget (``n_trials``: this call's, else the run's) is used;
        ``on_fresh`` is called with every plan measured for the first time (see ``SearchRunner``)."""
        name = agent_name or self.config.agent
        budget = n_trials or self.config.n_trials
        history = len(self.study().get_trials(deepcopy=False))
        settings = self.config.settings
        agent = make_agent(name, AgentContext(self.space, settings.mode, settings.seed, budget, history,
                                              folder=self.folder))
        study = open_study(self.storage_url, self.study_name, settings.mode, agent.sampler())
        fail_dead_trials(study)
        runner = SearchRunner(study, self.space, self.problem, n_trials=budget, agent=name, progress=progress,
                              time_budget_s=self.config.time_budget_s, on_fresh=on_fresh)
        try:
            agent.run(runner)
        finally:
            runner.close()
        return runner

    def study(self) -> Any:
        import optuna

        return open_study(self.storage_url, self.study_name, self.config.settings.mode,
                          optuna.samplers.RandomSampler())

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
        return [r.to_json(min_retention=self.config.settings.min_retention, study_start=start) for r in records]

    def pareto_front(self) -> list[dict[str, Any]]:
        """The report records no other dominates in latency ratio and reward retention, fastest first."""
        from autoquant.report import pareto_front

        return pareto_front(self.report_records())

    def references(self) -> dict[str, dict[str, Any]]:
        """Points every report shows beside the search's: fp32, and onnxruntime's uniform int8."""
        points = {"fp32": dict(FP32_POINT)}
        ort = self.info.references.onnxruntime_int8 or {}
        if "latency_ratio" in ort:
            points["onnxruntime int8"] = {k: ort.get(k) for k in ("latency_ratio", "retention", "size_ratio")}
        for runtime, point in (self.info.references.runtime_int8 or {}).items():
            if isinstance(point, dict) and "latency_ratio" in point:
                points[f"{runtime} int8"] = {k: point.get(k) for k in ("latency_ratio", "retention", "size_ratio")}
        return points

    # --- results ---------------------------------------------------------------------------

    def best(self) -> ConfirmedPlan | None:
        """The confirmed plan (best/confirm.json), or None before a plan was confirmed."""
        found = read_confirm(self.folder)
        return found.best if found is not None else None

    def plan_of(self, trial: int | str) -> tuple[int, CompressionPlan]:
        """The plan of trial N, or of the confirmed best ("best")."""
        if trial == "best":
            best = self.best()
            if best is None:
                raise UsageError(f"{self.folder} has no confirmed best plan yet; finish the search "
                                 f"({self.resume_command()}) or pass --trial N")
            return best.trial, best.plan
        records = self.records()
        if not records:
            raise UsageError(f"the study {self.study_name!r} of {self.folder} has no trials: nothing to export; run "
                             f"the search ({self.resume_command()})")
        record = next((r for r in records if r.number == int(trial)), None)
        if record is None or record.plan is None:
            raise UsageError(f"trial {trial} has no plan in this run (trials 0..{len(records) - 1})")
        return int(trial), CompressionPlan.from_json(record.plan)

    def compress(self, plan: CompressionPlan, *, rounding: str | None = None,
                 bias_correction: bool | None = None) -> Any:
        """The plan compressed as its trials built it, before any fine-tuning (see ``model``);
        ``bias_correction`` None: as the run's settings say."""
        options: dict[str, Any] = {} if rounding is None else {"rounding": rounding}
        correct = self.config.settings.bias_correction if bias_correction is None else bias_correction
        return compress(self.bundle, plan, self.states.states, seed=self.config.settings.seed,
                        bias_correction=correct, **options)

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

    def confirm(self, *, max_candidates: int = 3) -> ConfirmedPlan | None:
        """Replay the best feasible plans on fresh seeds; the first that keeps the floor
        is the run's answer, written to best/. Only plans measured faster than fp32 are
        candidates: fp32 is always one, and None means it stays the best."""
        settings = self.config.settings
        records = [r for r in self.records() if r.result is not None and r.feasible(settings.min_retention)
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
        if self.protocol.starts is not None:  # every start: the references a settled trial was judged against
            seeds, fp32, random_play = self.problem.all_starts()
        else:
            seeds = confirm_seeds(settings.seed, self.config.confirm_episodes, self.protocol)
            fp32 = self.problem.play(self.problem.reference_onnx, seeds)
            random_play = play_episodes(random_actor(self.bundle.action_space, settings.seed + 1),
                                        self.bundle.env_id, seeds, protocol=self.protocol,  # type: ignore[arg-type]
                                        n_envs=settings.n_envs)
        attempts: list[Attempt] = []
        for record in candidates[:max_candidates]:
            assert record.plan is not None and record.result is not None  # feasible records have both
            plan = CompressionPlan.from_json(record.plan)
            compressed = self.compress(plan)
            model = self.fine_tuned(plan) or compressed.onnx
            episodes = self.problem.play(model, seeds, runtime=plan.runtime)
            paired = paired_comparison(episodes, fp32, random_play)
            passed = paired["retention"] >= settings.min_retention
            attempts.append(Attempt(trial=record.number, summary=record.summary, retention=paired["retention"],
                                    passed=passed, reward=episodes, paired=paired))
            if passed:
                best_dir = self.folder / "best"
                best_dir.mkdir(exist_ok=True)
                atomic_write(best_dir / "policy.onnx", model, inside=self.folder)
                write_json(best_dir / "plan.json", plan.to_json(), inside=self.folder)
                best = ConfirmedPlan(
                    trial=record.number, plan=plan, summary=record.summary,
                    search=SearchFigures(latency_ratio=record.result.latency_ratio,
                                         retention=record.result.retention, size_ratio=record.result.size_ratio),
                    confirm=ConfirmFigures(
                        seeds=tuple(seeds), episodes=len(seeds), retention=paired["retention"],
                        retention_low=paired["retention_low"], retention_high=paired["retention_high"],
                        exact=paired["exact"], distinct_pairs=paired["distinct_pairs"],
                        distinct_games=paired["distinct_games"], protocol=self.protocol.to_json(),
                        sticky_actions=self.protocol.sticky_actions, reward=episodes, fp32_reward=fp32,
                        random_reward=random_play),
                    size_bytes=compressed.size_bytes,
                    kernels=compressed.kernels.to_json() if compressed.kernels else None,
                    fine_tuned=record.result.finetune)
                found = Confirmation(attempts=tuple(attempts), best=best, protocol=self.protocol.to_json(),
                                     autoquant_version=__version__)
                write_json(best_dir / "confirm.json", found.to_json(), inside=self.folder)
                return best
        failed = Confirmation(attempts=tuple(attempts), best=None, protocol=self.protocol.to_json(),
                              autoquant_version=__version__)
        write_json(self.folder / "confirm_failed.json", failed.to_json(), inside=self.folder)
        return None

    def confirmation(self) -> Confirmation | None:
        """What confirmation found: best/confirm.json, else confirm_failed.json, else None
        (not confirmed yet)."""
        return read_confirm(self.folder) or read_confirm_failed(self.folder)

    def write_report(self) -> None:
        from autoquant.report import plot_pareto, write_report

        records = self.report_records()
        references = self.references()
        config, settings = self.config, self.config.settings
        run_info = {"policy": config.policy, "env": self.bundle.env_id, "target": config.target,
                    "method": config.method, "agent": config.agent, "trials": config.n_trials,
                    "seed": settings.seed, "mode": settings.mode,
                    "protocol": describe_episodes(self.problem.fp32_episodes),
                    "min_retention": settings.min_retention, "device": self.info.target.facts}
        found = self.confirmation()
        # the report room reads neither run.json nor confirm.json: it is given their contents
        plot_pareto(records, references, self.folder / "pareto.png", floor=settings.min_retention,
                    title=f"{config.policy.name} on {config.target}")
        write_report(self.folder / "report.md", records, references, floor=settings.min_retention,
                     run_info=run_info, confirmation=found.to_json() if found is not None else None)


# --- setting a run up ------------------------------------------------------------------------


@dataclass
class _Loaded:
    """What a run is built from, loaded once."""

    bundle: PolicyBundle
    table: LayerTable
    space: SearchSpace
    target: Target
    reference_onnx: bytes
    targets: dict[str, Target] = field(default_factory=dict)  # per runtime, where several


def _load(config: RunConfig, *, trust_pickle: bool) -> _Loaded:
    """The policy (the loader checks that its file exists), its space on the target, and the target."""
    bundle = load_policy(config.policy, env_id=config.env_id, trust_pickle=trust_pickle,
                         activation=config.activation, conv_strides=config.conv_strides)
    table = analyse(bundle)
    runtimes = config.spec.runtimes
    space = load_space(config.method, table, accelerated_precisions=config.spec.accelerated_precisions)
    space = space.with_runtimes(runtimes)
    target = get_target(config.target, device=config.device, secret_file=config.secret_file)
    targets = {r: target if r == runtimes[0] else get_target(config.target, device=config.device,
                                                             secret_file=config.secret_file, runtime=r)
               for r in runtimes} if len(runtimes) > 1 else {}
    return _Loaded(bundle, table, space, target, export_reference(bundle), targets)


def _build(folder: Path, info: RunInfo, config: RunConfig, loaded: _Loaded, *, store: PlayStore | None = None
           ) -> Run:
    fingerprint = target_fingerprint(loaded.target)
    if fingerprint != info.target.fingerprint:
        raise UsageError(f"target {config.target!r} is now {fingerprint!r}, but this run measured on "
                         f"{info.target.fingerprint!r}: latencies would not compare; start a new run")
    states = StateSet.load(folder / "states.npz")
    held_out = StateSet.load(folder / "held_out.npz").states
    ref = info.references
    problem = SearchProblem(
        loaded.bundle, loaded.table, loaded.target, states=states.states, held_out=held_out,
        reference_onnx=loaded.reference_onnx, settings=config.settings, episode_seeds=list(ref.seeds),
        fp32_episodes=ref.fp32, random_episodes=ref.random, target_fingerprint=info.target.fingerprint,
        models_dir=folder / "models", targets=loaded.targets, store=store,
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
              log: Callable[[str], None] = lambda s: None, share_from: Run | None = None,
              across_targets: bool = False, store: PlayStore | None = None) -> Run:
    """Set up a new run folder: validate everything, record states, measure the
    references, and only then put the folder in place.

    ``share_from``: a run of the same policy, env, target and seed whose states and
    references this one reuses (``compare`` gives every combination the same ones). With
    ``across_targets`` its target may differ (a fleet): the states, seeds and fp32 and random
    episodes are taken, and the uniform-int8 reference points are measured again on this
    target, their episodes and fidelity taken where the runtime is the same. ``store``: the
    played episodes this run shares (a fleet's one store; default its own).
    """
    folder = Path(folder)
    _check_new_folder(folder)
    if config.storage != DEFAULT_STORAGE:
        check_storage(config.storage)
    config = config.replace(policy=config.policy.resolve())  # run.json names the file wherever it is resumed
    loaded = _load(config, trust_pickle=trust_pickle)
    bundle = loaded.bundle
    if bundle.env_id is None:
        raise UsageError(f"{config.policy}: the environment is unknown; pass --env (a gymnasium id)")
    protocol = resolve_protocol(bundle.env_id, config.sticky_actions)
    config = config.replace(env_id=bundle.env_id, sticky_actions=protocol.sticky_actions)
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        if share_from is not None and across_targets:
            info = _share_across(share_from, staging, folder, config, loaded, log)
        elif share_from is not None:
            info = _share(share_from, staging, folder, config, loaded.space)
        else:
            info = _measure_references(staging, folder, config, loaded, protocol, log)
        write_json(staging / "run.json", info.to_json())
        if config.storage == DEFAULT_STORAGE:  # the study is part of the folder: made before it is put in place
            create_study_file(staging / DEFAULT_STORAGE, info.study_name, config.settings.mode)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise UsageError(f"no space left on the device of {folder} while setting the run up: nothing was kept; "
                             "free some space and start the search again") from None
        raise
    return _build(folder, info, config, loaded, store=store)


def _measure_references(staging: Path, folder: Path, config: RunConfig, loaded: _Loaded, protocol: Protocol,
                        log: Callable[[str], None]) -> RunInfo:
    bundle, table, target = loaded.bundle, loaded.table, loaded.target
    env_id, settings = config.env_id, config.settings
    assert env_id is not None  # set up from the policy by start_run
    log("recording states from the fp32 policy")
    states = record_states(bundle, n=config.n_states, seed=settings.seed)
    held = record_states(bundle, n=max(256, config.n_states // 4), seed=settings.seed + HELD_OUT_SEED_OFFSET)
    states.save(staging / "states.npz")
    held.save(staging / "held_out.npz")
    seeds = episode_seeds(settings.seed, settings.episodes, protocol)
    log(f"playing the fp32 and random policies on {len(seeds)} seeds ({protocol.name})")
    fp32 = play_episodes(onnx_actor(bundle, loaded.reference_onnx), env_id, seeds, protocol=protocol,
                         n_envs=settings.n_envs)
    random_play = play_episodes(random_actor(bundle.action_space, settings.seed), env_id, seeds,
                                protocol=protocol, n_envs=settings.n_envs)
    log(f"fp32: {describe_episodes(fp32)}")
    log("measuring onnxruntime's uniform int8 as a reference point")
    ort_point = _ort_reference(loaded, states.states, held.states, seeds, fp32, random_play, settings.n_envs)
    runtime_points = {}
    for runtime in loaded.targets:
        if runtime != "onnxruntime":
            log(f"measuring uniform int8 on {runtime} as a reference point")
            runtime_points[runtime] = _runtime_reference(loaded, runtime, states.states, held.states, seeds, fp32,
                                                         random_play, settings.n_envs)
    return RunInfo(
        config=config,
        policy=PolicyInfo(path=config.policy, sha256=sha256_file(config.policy), algo=bundle.algo, env_id=env_id,
                          layers=table.to_json()),
        target=TargetInfo(name=target.name, facts=target.facts(), fingerprint=target_fingerprint(target)),
        references=References(seeds=tuple(seeds), fp32=fp32, random=random_play,
                              fp32_size_bytes=weight_bytes(table, CompressionPlan()), onnxruntime_int8=ort_point,
                              runtime_int8=runtime_points or None),
        study_name=config.study_name or folder.resolve().name, space=loaded.space.to_json(),
        protocol=protocol.to_json(), autoquant_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def _share(source: Run, staging: Path, folder: Path, config: RunConfig, space: SearchSpace) -> RunInfo:
    def same(c: RunConfig) -> dict[str, Any]:
        """What the states and references depend on: a fleet's shared settings on one target,
        for any method (``compare`` shares them across methods)."""
        return {**{k: v for k, v in shared_settings(c).items() if k != "method"}, "target": c.target}

    _copy_states(source, staging, same(config), same(source.config), "references between runs")
    return source.info.replace(config=config, space=space.to_json(),
                               study_name=config.study_name or folder.resolve().name,
                               shared_references_from=str(source.folder), version=RUN_VERSION)


def _copy_states(source: Run, staging: Path, mine: dict[str, Any], theirs: dict[str, Any], what: str) -> None:
    """``source``'s recorded and held-out states copied into ``staging``, where the settings
    they depend on (``mine``, ``theirs``) agree; else one line naming those that differ."""
    differs = [k for k in mine if mine[k] != theirs[k]]
    if differs:
        raise UsageError(f"cannot share {what} differ in {differs}")
    for name in ("states.npz", "held_out.npz"):
        shutil.copyfile(source.folder / name, staging / name)


def shared_settings(c: RunConfig) -> dict[str, Any]:
    """What a fleet's runs must agree on to share states, seeds and episodes: everything but
    the target (and what only says where the study and the device are)."""
    return {"policy": c.policy, "env_id": c.env_id, "activation": c.activation, "conv_strides": c.conv_strides,
            "method": c.method, "seed": c.settings.seed, "n_states": c.n_states, "episodes": c.settings.episodes,
            "n_envs": c.settings.n_envs, "sticky_actions": c.sticky_actions}


def _share_across(source: Run, staging: Path, folder: Path, config: RunConfig, loaded: _Loaded,
                  log: Callable[[str], None]) -> RunInfo:
    """A run on another target that takes ``source``'s states, seeds and fp32 and random
    episodes, and measures its own uniform-int8 reference latencies."""
    _copy_states(source, staging, shared_settings(config), shared_settings(source.config),
                 "states and episodes between targets whose runs")
    ref = source.info.references
    states, held = source.states.states, source.held_out
    seeds, fp32, random_play = list(ref.seeds), ref.fp32, ref.random
    done = {"onnxruntime": ref.onnxruntime_int8, **(ref.runtime_int8 or {})}

    def point(runtime: str, make: Callable[[], bytes]) -> dict[str, Any]:
        found = done.get(runtime)
        if isinstance(found, dict) and "latency_ratio" in found and "error" not in found:
            log(f"measuring uniform int8 on {runtime} on {config.target} (its episodes taken from "
                f"{source.config.target})")
            try:
                latency = loaded.targets.get(runtime, loaded.target).measure(make(), loaded.reference_onnx,
                                                                             held[:1])
            except Exception as exc:  # noqa: BLE001 - as ``_reference_point``: reported, not fatal
                if isinstance(exc, DeviceUnreachable):
                    raise
                return {"error": describe_exception(exc)}
            return {**found, "latency_ratio": latency.ratio, "shared_from": source.config.target}
        log(f"measuring uniform int8 on {runtime} on {config.target} as a reference point")
        return _reference_point(loaded, runtime, make, held, seeds, fp32, random_play, config.settings.n_envs)

    ort_point = point("onnxruntime", lambda: onnxruntime_uniform_int8(loaded.reference_onnx, states))
    runtime_points = {}
    for runtime in loaded.targets:
        if runtime != "onnxruntime":
            plan = CompressionPlan.uniform(loaded.table).on(runtime)
            made = point(runtime, lambda: compress(loaded.bundle, plan, states, verify_kernels=False).onnx)
            runtime_points[runtime] = made if "error" in made or "plan" in made else {**made, "plan": plan.describe()}
    target = loaded.target
    return source.info.replace(
        config=config, target=TargetInfo(name=target.name, facts=target.facts(), fingerprint=target_fingerprint(target)),
        references=References(seeds=ref.seeds, fp32=fp32, random=random_play, fp32_size_bytes=ref.fp32_size_bytes,
                              onnxruntime_int8=ort_point, runtime_int8=runtime_points or None),
        space=loaded.space.to_json(), study_name=config.study_name or folder.resolve().name,
        shared_references_from=str(source.folder), version=RUN_VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _ort_reference(loaded: _Loaded, states: np.ndarray, held: np.ndarray, seeds: list[int], fp32: EpisodeStats,
                   random_play: EpisodeStats, n_envs: int) -> dict[str, Any]:
    """onnxruntime's own uniform int8, measured like a trial (a point on the report)."""
    return _reference_point(loaded, "onnxruntime", lambda: onnxruntime_uniform_int8(loaded.reference_onnx, states),
                            held, seeds, fp32, random_play, n_envs)


def _runtime_reference(loaded: _Loaded, runtime: str, states: np.ndarray, held: np.ndarray, seeds: list[int],
                       fp32: EpisodeStats, random_play: EpisodeStats, n_envs: int) -> dict[str, Any]:
    """Uniform int8 on another runtime of the target: the builder's uniform plan (per-channel
    int8 weights, int8 activations, calibrated on the run's states, as that runtime's own
    converter quantizes), measured and played like a trial on that runtime."""
    plan = CompressionPlan.uniform(loaded.table).on(runtime)
    point = _reference_point(loaded, runtime, lambda: compress(loaded.bundle, plan, states, verify_kernels=False).onnx,
                             held, seeds, fp32, random_play, n_envs)
    return point if "error" in point else {**point, "plan": plan.describe()}


def _reference_point(loaded: _Loaded, runtime: str, make: Callable[[], bytes], held: np.ndarray, seeds: list[int],
                     fp32: EpisodeStats, random_play: EpisodeStats, n_envs: int) -> dict[str, Any]:
    """A uniform int8 model (``make()``) on ``runtime`` of the target, measured and played
    like a trial; a point that cannot be had is reported as its error, not fatal."""
    bundle, table, reference = loaded.bundle, loaded.table, loaded.reference_onnx
    target = loaded.targets.get(runtime, loaded.target)
    try:
        model = make()
        latency = target.measure(model, reference, held[:1])
    except Exception as exc:  # noqa: BLE001 - a reference point that cannot be had is reported, not fatal
        if isinstance(exc, DeviceUnreachable):
            raise
        return {"error": describe_exception(exc)}
    episodes = play_episodes(onnx_actor(bundle, model, runtime), bundle.env_id, seeds,  # type: ignore[arg-type]
                             protocol=fp32.protocol, n_envs=n_envs)
    paired = paired_comparison(episodes, fp32, random_play)
    size = weight_bytes(table, CompressionPlan.uniform(table))
    return {"latency_ratio": latency.ratio, "retention": paired["retention"],
            "retention_low": paired["retention_low"], "retention_high": paired["retention_high"],
            "exact": paired["exact"], "distinct_pairs": paired["distinct_pairs"],
            "size_ratio": size / weight_bytes(table, CompressionPlan()),
            "fidelity": fidelity(OrtRunner(reference)(held), Runner(model, runtime=runtime)(held), bundle.action),
            "reward": episodes.to_json()}


def _is_path(target: str) -> bool:
    """A target given as a TOML file rather than by the name of a shipped one."""
    return "/" in target or "\\" in target or target.endswith(".toml")


def load_run(folder: Path, *, trust_pickle: bool = False, n_trials: int | None = None, device: str | None = None,
             secret_file: str | None = None, time_budget_s: float | None = None,
             sticky_actions: float | None = None, storage: str | None = None, target: str | None = None) -> Run:
    """Open an existing run folder (to resume it or export from it).

    The folder is data, not configuration: the database, the device and its secret come from
    the caller (the command line, the environment, the user's own files), never from run.json.
    A run whose study lives in another database, or that was measured on a target given as a
    TOML file, opens only when the caller names the same ``storage`` or ``target`` again."""
    folder = Path(folder)
    info = read_run_info(folder)
    config = info.config
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
    policy = config.policy
    if not policy.is_file():  # the one check of the file before it is read: a FIFO or a device is no policy
        raise UsageError(f"the run's policy {policy} is missing; restore it to resume or export")
    if sha256_file(policy) != info.policy.sha256:
        raise UsageError(f"the run's policy {policy} changed since the run started (sha256 differs): "
                         "start a new run for the new file")
    changed = {k: v for k, v in (("n_trials", n_trials), ("time_budget_s", time_budget_s)) if v is not None}
    if changed:  # a resumed search may be given a larger budget, kept in run.json
        info = info.replace(config=config.replace(**changed), version=RUN_VERSION)  # a version 2 file is upgraded
        write_json(folder / "run.json", info.to_json(), inside=folder)
    # The board's address and its secret come from the caller (or the environment, or the
    # target's own TOML), never from the folder: a planted run.json must not pick a device.
    config = info.config.replace(device=device, secret_file=secret_file)
    return _build(folder, info, config, _load(config, trust_pickle=trust_pickle))
