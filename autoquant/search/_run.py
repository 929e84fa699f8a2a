"""A search run: its folder, its references, resume, confirmation and results.

    RUN/run.json         what was asked (argv, policy and its hash, target and device
                         facts, space, agent, seed) and the references measured once
    RUN/states.npz       recorded states (calibration), RUN/held_out.npz (fidelity)
    RUN/study.db         the Optuna study (unless --storage names another database)
    RUN/best/            plan.json, policy.onnx, confirm.json of the confirmed best plan
    RUN/report.md, RUN/pareto.png

Setting up happens in a staging folder renamed into place at the end, so a run
folder either has everything needed to resume, or does not exist.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._version import __version__
from autoquant.compress import CompressionPlan, compress, export_reference, onnxruntime_uniform_int8, weight_bytes
from autoquant.errors import DeviceUnreachable, UsageError
from autoquant.evaluate import (
    EpisodeStats,
    StateSet,
    episode_seeds,
    fidelity,
    onnx_actor,
    paired_comparison,
    play_episodes,
    random_actor,
    record_states,
)
from autoquant.evaluate._evaluation import HELD_OUT_SEED_OFFSET
from autoquant.policy import analyse, load_policy
from autoquant.search._agents import AgentContext, make_agent
from autoquant.search._problem import ProblemSettings, SearchProblem
from autoquant.search._space import load_space
from autoquant.search._study import SearchRunner, TrialOutcome, fail_dead_trials, open_study, trial_records
from autoquant.targets import OrtRunner, get_target, load_target_spec
from autoquant.targets._registry import available_targets

__all__ = ["Run", "RunConfig", "load_run", "start_run"]

RUN_FORMAT = "autoquant.run"
RUN_VERSION = 1
DEFAULT_STORAGE = "study.db"


@dataclass
class RunConfig:
    """Everything ``autoquant search`` was asked, as stored in run.json."""

    policy: str
    env_id: str | None = None
    trust_pickle: bool = False
    activation: str | None = None
    conv_strides: list[int] | None = None
    target: str = "host"
    device: str | None = None
    secret_file: str | None = None
    method: str = "joint"
    agent: str = "ddpg"
    n_trials: int = 200
    mode: str = "single"
    min_retention: float = 0.98
    episodes: int = 10
    confirm_episodes: int = 20
    fidelity_floor: float = 0.75
    n_states: int = 1024
    n_envs: int = 8
    seed: int = 0
    storage: str = DEFAULT_STORAGE
    study_name: str | None = None
    argv: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def _target_fingerprint(target: Any) -> str:
    facts = target.facts()
    return f"{target.name}|{facts.get('cpu')}|{facts.get('onnxruntime')}|{facts.get('threads')}"


@dataclass
class Run:
    """A run folder opened for searching, resuming or exporting."""

    folder: Path
    info: dict[str, Any]
    config: RunConfig
    problem: SearchProblem
    space: Any
    states: StateSet
    held_out: np.ndarray

    @property
    def storage_url(self) -> str:
        storage = self.config.storage
        if storage == DEFAULT_STORAGE:
            return f"sqlite:///{(self.folder / DEFAULT_STORAGE).resolve()}"
        return storage

    @property
    def study_name(self) -> str:
        return str(self.info["study_name"])

    def resume_command(self) -> str:
        return f"autoquant search --out {self.folder} --resume"

    # --- searching ---------------------------------------------------------------------

    def search(self, *, agent_name: str | None = None, n_trials: int | None = None,
               progress: Callable[[TrialOutcome, SearchRunner], None] | None = None) -> SearchRunner:
        name = agent_name or self.config.agent
        budget = n_trials or self.config.n_trials
        agent = make_agent(name, AgentContext(self.space, self.config.mode, self.config.seed, budget))
        study = open_study(self.storage_url, self.study_name, self.config.mode, agent.sampler())
        fail_dead_trials(study)
        runner = SearchRunner(study, self.space, self.problem, n_trials=budget, agent=name, progress=progress)
        agent.run(runner)
        return runner

    def study(self) -> Any:
        import optuna

        return open_study(self.storage_url, self.study_name, self.config.mode, optuna.samplers.RandomSampler())

    def records(self) -> list[dict[str, Any]]:
        return trial_records(self.study(), self.config.min_retention)

    # --- results ---------------------------------------------------------------------------

    def plan_of(self, trial: int | str) -> tuple[int, CompressionPlan]:
        """The plan of trial N, or of the confirmed best ("best")."""
        if trial == "best":
            confirm = self.folder / "best" / "confirm.json"
            if not confirm.is_file():
                raise UsageError(f"{self.folder} has no confirmed best plan yet; finish the search "
                                 f"({self.resume_command()}) or pass --trial N")
            data = json.loads(confirm.read_text())
            return int(data["trial"]), CompressionPlan.from_json(data["plan"])
        trials = self.study().get_trials(deepcopy=False)
        matching = [t for t in trials if t.number == int(trial)]
        if not matching or "plan" not in matching[0].user_attrs:
            raise UsageError(f"trial {trial} has no plan in this run (trials 0..{len(trials) - 1})")
        return int(trial), CompressionPlan.from_json(matching[0].user_attrs["plan"])

    def compress(self, plan: CompressionPlan) -> Any:
        return compress(self.problem.bundle, plan, self.states.states, seed=self.config.seed)

    def confirm(self, *, max_candidates: int = 3) -> dict[str, Any] | None:
        """Replay the best feasible plans on fresh seeds; the first that keeps the floor
        is the run's answer, written to best/."""
        records = [r for r in self.records() if r["feasible"]]
        records.sort(key=lambda r: (r["latency_ratio"], -(r["retention"] or 0.0), r["size_ratio"]))
        seen: set[str] = set()
        candidates = []
        for r in records:
            if r["summary"] not in seen:
                seen.add(r["summary"])
                candidates.append(r)
        if not candidates:
            return None
        seeds = episode_seeds(self.config.seed + 1, self.config.confirm_episodes)
        fp32 = self.problem.play(self.problem.reference_onnx, seeds)
        floor = play_episodes(random_actor(self.problem.bundle.action_space, self.config.seed + 1),
                              self.problem.bundle.env_id, seeds, n_envs=self.config.n_envs)  # type: ignore[arg-type]
        attempts = []
        for record in candidates[:max_candidates]:
            plan = CompressionPlan.from_json(record["plan"])
            compressed = self.compress(plan)
            episodes = self.problem.play(compressed.onnx, seeds)
            paired = paired_comparison(episodes, fp32, floor)
            attempt = {"trial": record["number"], "summary": record["summary"], "retention": paired["retention"],
                       "reward": episodes.to_json(), "paired": paired}
            attempts.append(attempt)
            if paired["retention"] >= self.config.min_retention:
                best_dir = self.folder / "best"
                best_dir.mkdir(exist_ok=True)
                _atomic_write(best_dir / "policy.onnx", compressed.onnx)
                _write_json(best_dir / "plan.json", plan.to_json())
                data = {
                    "trial": record["number"], "plan": plan.to_json(), "summary": record["summary"],
                    "search": {"latency_ratio": record["latency_ratio"], "retention": record["retention"],
                               "size_ratio": record["size_ratio"]},
                    "confirm": {"seeds": seeds, "episodes": len(seeds), "retention": paired["retention"],
                                "reward": episodes.to_json(), "fp32_reward": fp32.to_json(),
                                "random_reward": floor.to_json()},
                    "size_bytes": compressed.size_bytes,
                    "kernels": compressed.kernels.to_json() if compressed.kernels else None,
                    "attempts": attempts,
                }
                _write_json(best_dir / "confirm.json", data)
                return data
        _write_json(self.folder / "confirm_failed.json", {"attempts": attempts})
        return None

    def write_report(self) -> None:
        from autoquant.report import plot_pareto, write_report

        records = self.records()
        references = {"fp32": {"latency_ratio": 1.0, "retention": 1.0, "size_ratio": 1.0}}
        ort = self.info["reference"].get("onnxruntime_int8")
        if ort and "latency_ratio" in ort:
            references["onnxruntime int8"] = {k: ort.get(k) for k in ("latency_ratio", "retention", "size_ratio")}
        run_info = {"policy": self.config.policy, "env": self.problem.bundle.env_id, "target": self.config.target,
                    "method": self.config.method, "agent": self.config.agent, "trials": self.config.n_trials,
                    "seed": self.config.seed, "mode": self.config.mode,
                    "min_retention": self.config.min_retention, "device": self.info["target"]["facts"]}
        plot_pareto(records, references, self.folder / "pareto.png", floor=self.config.min_retention,
                    title=f"{Path(self.config.policy).name} on {self.config.target}")
        write_report(self.folder / "report.md", records, references, floor=self.config.min_retention,
                     run_info=run_info)


# --- setting a run up ------------------------------------------------------------------------


def _load_bundle(config: RunConfig) -> Any:
    return load_policy(config.policy, env_id=config.env_id, trust_pickle=config.trust_pickle,
                       activation=config.activation, conv_strides=config.conv_strides)


def _target(config: RunConfig) -> Any:
    return get_target(config.target, device=config.device, secret_file=config.secret_file)


def _accelerated(name: str) -> tuple[str, ...]:
    path = Path(name) if name.endswith(".toml") else available_targets().get(name)
    return load_target_spec(Path(path)).accelerated_precisions if path else ("fp32", "int8")


def _build(folder: Path, info: dict[str, Any], config: RunConfig) -> Run:
    bundle = _load_bundle(config)
    table = analyse(bundle)
    space = load_space(config.method, table, accelerated_precisions=_accelerated(config.target))
    target = _target(config)
    fingerprint = _target_fingerprint(target)
    if fingerprint != info["target"]["fingerprint"]:
        raise UsageError(f"target {config.target!r} is now {fingerprint!r}, but this run measured on "
                         f"{info['target']['fingerprint']!r}: latencies would not compare; start a new run")
    states = StateSet.load(folder / "states.npz")
    held_out = StateSet.load(folder / "held_out.npz").states
    ref = info["reference"]
    settings = ProblemSettings(mode=config.mode, min_retention=config.min_retention, episodes=config.episodes,
                               fidelity_floor=config.fidelity_floor, n_envs=config.n_envs, seed=config.seed)
    problem = SearchProblem(
        bundle, table, target, states=states.states, held_out=held_out, reference_onnx=export_reference(bundle),
        settings=settings, episode_seeds=list(ref["seeds"]), fp32_episodes=_stats(ref["fp32"]),
        random_episodes=_stats(ref["random"]), target_fingerprint=info["target"]["fingerprint"],
    )
    return Run(folder=folder, info=info, config=config, problem=problem, space=space, states=states,
               held_out=held_out)


def _stats(data: dict[str, Any]) -> EpisodeStats:
    return EpisodeStats(seeds=tuple(data["seeds"]), rewards=tuple(data["rewards"]), lengths=tuple(data["lengths"]),
                        steps_per_s=float(data["steps_per_s"]))


def start_run(folder: Path, config: RunConfig, *, log: Callable[[str], None] = lambda s: None,
              share_from: Run | None = None) -> Run:
    """Set up a new run folder: validate everything, record states, measure the
    references, and only then put the folder in place.

    ``share_from``: a run of the same policy, env, target and seed whose states and
    references this one reuses (``compare`` gives every combination the same ones).
    """
    folder = Path(folder)
    if (folder / "run.json").exists():
        raise UsageError(f"{folder} already holds a run: pass --resume to continue it, or another --out")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not an autoquant run folder: choose another --out")
    policy = Path(config.policy).resolve()
    config.policy = str(policy)
    bundle = _load_bundle(config)
    if bundle.env_id is None:
        raise UsageError(f"{policy}: the environment is unknown; pass --env (a gymnasium id)")
    config.env_id = bundle.env_id
    table = analyse(bundle)
    space = load_space(config.method, table, accelerated_precisions=_accelerated(config.target))
    target = _target(config)
    make_agent(config.agent, AgentContext(space, config.mode, config.seed, config.n_trials))  # validates the name
    ProblemSettings(mode=config.mode, min_retention=config.min_retention, episodes=config.episodes)
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if share_from is not None:
            _share(share_from, staging, folder, config, space, target)
            os.replace(staging, folder)
            return load_run(folder)
        log("recording states from the fp32 policy")
        states = record_states(bundle, n=config.n_states, seed=config.seed)
        held = record_states(bundle, n=max(256, config.n_states // 4), seed=config.seed + HELD_OUT_SEED_OFFSET)
        states.save(staging / "states.npz")
        held.save(staging / "held_out.npz")
        reference = export_reference(bundle)
        seeds = episode_seeds(config.seed, config.episodes)
        log(f"playing the fp32 and random policies on {len(seeds)} seeds")
        fp32 = play_episodes(onnx_actor(bundle, reference), bundle.env_id, seeds, n_envs=config.n_envs)
        floor = play_episodes(random_actor(bundle.action_space, config.seed), bundle.env_id, seeds,
                              n_envs=config.n_envs)
        log("measuring onnxruntime's uniform int8 as a reference point")
        ort_point = _ort_reference(bundle, table, target, states.states, held.states, reference, seeds, fp32,
                                   floor, config.n_envs)
        info = {
            "format": RUN_FORMAT, "version": RUN_VERSION, "autoquant_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": asdict(config),
            "policy": {"path": str(policy), "sha256": _sha256(policy), "algo": bundle.algo,
                       "env_id": bundle.env_id, "layers": table.to_json()},
            "target": {"name": target.name, "facts": target.facts(), "fingerprint": _target_fingerprint(target)},
            "space": space.to_json(),
            "study_name": config.study_name or folder.resolve().name,
            "reference": {"seeds": seeds, "fp32": fp32.to_json(), "random": floor.to_json(),
                          "fp32_size_bytes": weight_bytes(table, CompressionPlan()),
                          "onnxruntime_int8": ort_point},
        }
        _write_json(staging / "run.json", info)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _build(folder, info, config)


def _share(source: Run, staging: Path, folder: Path, config: RunConfig, space: Any, target: Any) -> None:
    same = ("policy", "env_id", "target", "seed", "n_states", "episodes", "n_envs")
    differs = [k for k in same if getattr(source.config, k) != getattr(config, k)]
    if differs:
        raise UsageError(f"cannot share references between runs that differ in {differs}")
    for name in ("states.npz", "held_out.npz"):
        shutil.copyfile(source.folder / name, staging / name)
    info = json.loads(json.dumps(source.info))
    info["config"] = asdict(config)
    info["space"] = space.to_json()
    info["study_name"] = config.study_name or folder.resolve().name
    info["shared_references_from"] = str(source.folder)
    _write_json(staging / "run.json", info)


def _ort_reference(bundle: Any, table: Any, target: Any, states: np.ndarray, held: np.ndarray, reference: bytes,
                   seeds: list[int], fp32: EpisodeStats, floor: EpisodeStats, n_envs: int) -> dict[str, Any]:
    """onnxruntime's own uniform int8, measured like a trial (a point on the report)."""
    try:
        model = onnxruntime_uniform_int8(reference, states)
        latency = target.measure(model, reference, held[:1])
    except Exception as exc:  # noqa: BLE001 - a reference point that cannot be had is reported, not fatal
        if isinstance(exc, DeviceUnreachable):
            raise
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    episodes = play_episodes(onnx_actor(bundle, model), bundle.env_id, seeds, n_envs=n_envs)
    paired = paired_comparison(episodes, fp32, floor)
    size = weight_bytes(table, CompressionPlan.uniform(table))
    return {"latency_ratio": latency.ratio, "retention": paired["retention"],
            "size_ratio": size / weight_bytes(table, CompressionPlan()),
            "fidelity": fidelity(OrtRunner(reference)(held), OrtRunner(model)(held), bundle.action),
            "reward": episodes.to_json()}


def load_run(folder: Path, *, n_trials: int | None = None, device: str | None = None,
             secret_file: str | None = None) -> Run:
    """Open an existing run folder (to resume it or export from it)."""
    folder = Path(folder)
    path = folder / "run.json"
    if not path.is_file():
        raise UsageError(f"{folder} is not an autoquant run folder (no run.json)")
    info = json.loads(path.read_text())
    if info.get("format") != RUN_FORMAT or info.get("version") != RUN_VERSION:
        raise UsageError(f"{path}: not a run this autoquant ({__version__}) can read")
    config = RunConfig(**info["config"])
    policy = Path(config.policy)
    if not policy.is_file():
        raise UsageError(f"the run's policy {policy} is missing; restore it to resume or export")
    if _sha256(policy) != info["policy"]["sha256"]:
        raise UsageError(f"the run's policy {policy} changed since the run started (sha256 differs): "
                         "start a new run for the new file")
    if device is not None or secret_file is not None:  # the board may have a new address
        config.device = device or config.device
        config.secret_file = secret_file or config.secret_file
    if n_trials is not None:
        config.n_trials = n_trials
        info["config"]["n_trials"] = n_trials
        _write_json(path, info)
    return _build(folder, info, config)


