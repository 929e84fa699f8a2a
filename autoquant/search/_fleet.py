"""A fleet: one policy searched for several targets in one run.

    RUN/fleet.json     the targets in order and the folder of each (``FleetInfo``)
    RUN/NAME/          one complete run folder per target (run.json, study.db, best/, report.md):
                       ``autoquant export RUN --target NAME`` exports from it
    RUN/report.md      one section per target and the table plan x target

What does not depend on the device is made once and shared:

- the recorded and held-out states, the episode seeds, and fp32's and a random policy's
  episodes: the first target's run measures them, the others copy them
  (``start_run(..., across_targets=True)``). Each target measures its own uniform-int8
  reference latencies, and takes their episodes and fidelity where the runtime is the same.
- the sensitivities (``sensitivities.json``): the first target's agent measures them in the
  host's numerics, and they are copied to every target whose first runtime is the same.
- episodes: the runs share one ``PlayStore``. Every episode of a search is played in the
  host's numerics of the plan's runtime, whatever the target, so a trial whose graph and
  runtime are those of a trial on another target takes its episodes (recorded as
  ``shared_from`` with ``identical_graph``); confirmation plays each graph once.

Latency, fidelity and the proxy are measured on each target: they depend on its CPU (A72 and
A76 run different int8 kernels, and their outputs differ from x86's). Latency models are
measured per target and runtime and kept in the cache folder, keyed by the network, the
target's fingerprint and the options (``LatencyModel.load_or_measure``), so a fleet reuses
what earlier runs on the same targets measured.

Every plan is measured on every target. The targets take turns, and every plan a target's
agent measures for the first time is run at once as a trial of every other target's study
(``proposed_as`` "fleet: NAME ...") where that target's space holds it (a plan on a runtime a
target lacks runs on its first runtime). With n trials per target:

- ``turns`` (the default): n plans in all; target k's agent proposes until its study holds
  ceil(n (k + 1) / T) trials, so each study ends with the same n plans.
- ``each``: every target's agent proposes n plans of its own, and each study also holds the
  other targets' plans.

So each study holds the fleet's plans with its own target's latency, each target's agent
starts from what the targets before it found, and resume takes each study as it stands.

A target on a device or an emulator measures held-out fidelity and the proxy by running the
graph there, a call per state. Where another such target measured the same graph on the same
runtime, it runs only the first 16 held-out states, and takes the other's outputs and proxy
if its own agree with them there (``numerics_agree``), recording from where
(``fidelity.shared_from``); else it measures its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoquant._io import write_json
from autoquant._untrusted import loads_json, read_file_in, short_repr
from autoquant._version import __version__
from autoquant.compress import CompressionPlan
from autoquant.errors import UsageError
from autoquant.search._artifacts import DEFAULT_STORAGE, RunConfig
from autoquant.search._problem import PlayStore
from autoquant.search._run import Run, _check_new_folder, _is_path, load_run, shared_settings, start_run
from autoquant.search._space import SearchSpace
from autoquant.search._study import ProposalSampler, SearchRunner, TrialOutcome, open_study

__all__ = ["FLEET_FORMAT", "FLEET_VERSION", "Fleet", "FleetInfo", "fleet_member", "is_fleet", "load_fleet",
           "parse_targets", "start_fleet"]

FLEET_FORMAT = "autoquant.fleet"
FLEET_VERSION = 1
MAX_FLEET = 16
# How a fleet's agents share the budget of n trials per target (--fleet-proposals):
# "turns": n plans in all, each target's agent proposing in its turn (each study holds n trials);
# "each": every target's agent proposes n plans of its own (each study holds them and the others').
PROPOSALS = ("turns", "each")
FORWARDED = "fleet: "  # how a trial of another target's plan starts its ``proposed_as``
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def member_name(target: str) -> str:
    """The folder of a target's run in the fleet: the shipped target's name, or a TOML file's
    stem."""
    name = Path(target).stem if _is_path(target) else target
    if not _NAME.match(name):
        raise UsageError(f"target {short_repr(target)} gives the folder name {short_repr(name)}: a fleet's target "
                         "names are letters, digits, '.', '_' and '-'; rename the TOML file")
    return name


def parse_targets(text: str) -> list[str]:
    """``--target a,b,c``: the targets of a fleet, in order, each once (two at least)."""
    targets = [t.strip() for t in text.split(",")]
    if any(not t for t in targets):
        raise UsageError(f"--target {short_repr(text)} has an empty name: give targets separated by commas, such "
                         "as host,arm-a72-emulated")
    if len(targets) > MAX_FLEET:
        raise UsageError(f"--target names {len(targets)} targets; a fleet has at most {MAX_FLEET}")
    names = [member_name(t) for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--target names {twice} more than once: give each target once")
    return targets


@dataclass(frozen=True)
class FleetInfo:
    """fleet.json: the targets in order, the folder of each, and the trials per target."""

    targets: tuple[str, ...]
    members: tuple[str, ...]
    n_trials: int
    proposals: str = "turns"  # see PROPOSALS
    autoquant_version: str = __version__
    created: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FLEET_FORMAT, "version": FLEET_VERSION, "targets": list(self.targets),
                "members": list(self.members), "n_trials": self.n_trials, "proposals": self.proposals,
                "autoquant_version": self.autoquant_version, "created": self.created}

    @classmethod
    def from_json(cls, data: Any, where: str) -> FleetInfo:
        bad = f"{where} is not a fleet file of this autoquant"
        if not isinstance(data, dict) or data.get("format") != FLEET_FORMAT:
            raise UsageError(f"{bad} (no format {FLEET_FORMAT!r})")
        if data.get("version") != FLEET_VERSION:
            raise UsageError(f"{bad}: version {short_repr(data.get('version'))}, this autoquant reads "
                             f"{FLEET_VERSION}")
        targets, members, n = data.get("targets"), data.get("members"), data.get("n_trials")
        if not isinstance(targets, list) or not isinstance(members, list) or len(targets) != len(members) \
                or not 2 <= len(targets) <= MAX_FLEET or not all(isinstance(t, str) for t in targets + members):
            raise UsageError(f"{bad}: its targets and members are not two lists of 2-{MAX_FLEET} names")
        if [member_name(t) for t in targets] != members or len(set(members)) != len(members):
            raise UsageError(f"{bad}: its member folders do not match its targets")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"{bad}: n_trials {short_repr(n)} is not a positive integer")
        proposals = data.get("proposals", "turns")
        if proposals not in PROPOSALS:
            raise UsageError(f"{bad}: proposals {short_repr(proposals)} is not one of {', '.join(PROPOSALS)}")
        return cls(targets=tuple(targets), members=tuple(members), n_trials=n, proposals=proposals,
                   autoquant_version=str(data.get("autoquant_version", "")), created=data.get("created"))


def is_fleet(folder: Path) -> bool:
    return (Path(folder) / "fleet.json").is_file()


def read_fleet_info(folder: Path) -> FleetInfo:
    path = Path(folder) / "fleet.json"
    if path.is_symlink():
        raise UsageError(f"{path} is a symlink: a fleet's file lives in its own folder")
    text = read_file_in(path.parent, path.name, what=str(path), error=UsageError, max_bytes=1 << 20)
    return FleetInfo.from_json(loads_json(text, what=str(path), error=UsageError), str(path))


def fleet_member(folder: Path, target: str | None) -> tuple[Path, str | None]:
    """The run folder of ``target`` in the fleet at ``folder`` (its folder name, or its target as
    the fleet was given it), and the ``target`` to open it with (a TOML file's path: a fleet
    folder never chooses a target file, the caller names it)."""
    info = read_fleet_info(folder)
    if target is None:
        raise UsageError(f"{folder} is a fleet of {', '.join(info.members)}: pass --target NAME to pick one")
    for name, given in zip(info.members, info.targets):
        if target in (name, given):
            if _is_path(given) and target != given:
                raise UsageError(f"{name} was measured on the target file {short_repr(given)}: a fleet folder never "
                                 "chooses a target file; pass --target with that path")
            path = Path(folder) / name
            if path.is_symlink() or not path.is_dir():
                raise UsageError(f"{path} is missing or a symlink: a fleet's runs live in its own folder")
            return path, given if _is_path(given) else None
    raise UsageError(f"this fleet has no target {short_repr(target)}: it has {', '.join(info.members)}")


def in_space(plan: CompressionPlan, space: SearchSpace) -> CompressionPlan | None:
    """``plan`` as a trial of ``space`` (another target's): on its own runtime where the space
    offers it, else on the space's first; None where the space does not hold its layers'
    choices."""
    if not space.runtimes or plan.runtime not in space.runtimes:
        plan = plan.on(None)
    params = space.params(plan)
    dists = space.distributions()
    if any(name not in params or params[name] not in dists[name].choices for name in dists):
        return None
    made = space.plan(params)
    names = {layer.name for layer in space.layers}
    same = made.channel_multiple == plan.channel_multiple and set(plan.layers) <= names \
        and all(made.spec(n) == plan.spec(n) for n in names)
    return made if same else None


@dataclass
class Fleet:
    """A fleet folder opened for searching, resuming, confirming or exporting."""

    folder: Path
    info: FleetInfo
    members: dict[str, Run]  # by folder name, in the fleet's order
    store: PlayStore

    @property
    def first(self) -> Run:
        return next(iter(self.members.values()))

    def member(self, target: str) -> Run:
        """The run of ``target`` (its folder name, or its target as the fleet was given it)."""
        for name, run in self.members.items():
            if target in (name, run.config.target):
                if _is_path(run.config.target) and target != run.config.target:
                    raise UsageError(f"{name} was measured on the target file {short_repr(run.config.target)}: a "
                                     "fleet folder never chooses a target file; pass --target with that path")
                return run
        raise UsageError(f"this fleet has no target {short_repr(target)}: it has {', '.join(self.members)}")

    def resume_command(self) -> str:
        import shlex

        words = ["autoquant", "search", "--out", str(self.folder), "--resume"]
        if any(_is_path(t) for t in self.info.targets):
            words += ["--target", ",".join(self.info.targets)]
        return shlex.join(words)

    def quota(self, k: int, run: Run, n_trials: int | None = None) -> int:
        """Trials target k's study (``run``'s) holds once its turn ends: its share of the n
        plans in all (``turns``), or what it holds now plus the plans of its own still to
        propose (``each``)."""
        n = n_trials or self.info.n_trials
        if self.info.proposals == "turns":
            return math.ceil(n * (k + 1) / len(self.members))
        counted = [r for r in run.records() if r.counted]
        own = sum(1 for r in counted if not (r.proposed_as or "").startswith(FORWARDED))
        return len(counted) + max(0, n - own)

    def search(self, *, n_trials: int | None = None, log: Callable[[str], None] = lambda s: None,
               progress: Callable[[str, int, int], Any] | None = None) -> dict[str, SearchRunner]:
        """Every target's turn (see the module's docstring); ``n_trials`` per target (default the
        fleet's). ``progress(name, quota, used)`` returns the progress callback of a turn."""
        n = n_trials or self.info.n_trials
        if n != self.info.n_trials:
            self.info = dataclasses.replace(self.info, n_trials=n)
            write_json(self.folder / "fleet.json", self.info.to_json(), inside=self.folder)
        runners: dict[str, SearchRunner] = {}
        for k, (name, run) in enumerate(self.members.items()):
            quota = self.quota(k, run, n)
            used = sum(1 for r in run.records() if r.counted)
            if used >= quota:
                continue
            self._share_sensitivities(run)
            others = {other: self._forwarder(r, n) for other, r in self.members.items() if other != name}

            def forward(plan: CompressionPlan, outcome: TrialOutcome, why: str | None, name: str = name,
                        others: dict[str, tuple[Run, SearchRunner]] = others) -> None:
                for other, (target_run, runner) in others.items():
                    mapped = in_space(plan, target_run.space)
                    if mapped is None:
                        log(f"{other}: plan {plan.describe()} is not in its space; not measured there")
                        continue
                    if runner.run_trial(target_run.space.params(mapped), proposed_as=f"{FORWARDED}{name}"
                                        + (f", {why}" if why else "")) is None:
                        log(f"{other}: its study holds its {runner.n_trials} trials; plan {plan.describe()} is not "
                            "measured there")

            log(f"{name}: its agent proposes until its study holds {quota} trials ({used} now); each new plan is "
                f"measured on {', '.join(others)} too")
            runners[name] = run.search(n_trials=quota, progress=progress(name, quota, used) if progress else None,
                                       on_fresh=forward)
        return runners

    def _forwarder(self, run: Run, n: int) -> tuple[Run, SearchRunner]:
        """A runner that measures other targets' plans on ``run``'s target, into its study (as
        many as the fleet's plans can be)."""
        study = open_study(run.storage_url, run.study_name, run.config.settings.mode, ProposalSampler())
        cap = n if self.info.proposals == "turns" else n * len(self.members)
        return run, SearchRunner(study, run.space, run.problem, n_trials=cap, agent=run.config.agent)

    def _share_sensitivities(self, run: Run) -> None:
        """The first target's sensitivities, copied to ``run`` where its first runtime is the
        same (they are measured in the host's numerics of that runtime)."""
        source = self.first
        path = source.folder / "sensitivities.json"
        mine = run.folder / "sensitivities.json"
        if run is source or mine.exists() or not path.is_file() or path.is_symlink():
            return
        if (source.space.runtimes or ("onnxruntime",))[0] == (run.space.runtimes or ("onnxruntime",))[0]:
            shutil.copyfile(path, mine)

    def confirm(self) -> dict[str, Any]:
        """Each target's best plan confirmed (``Run.confirm``); the graphs the targets share are
        played once."""
        return {name: run.confirm() for name, run in self.members.items()}

    def report_rows(self) -> dict[str, Any]:
        """What the fleet's report shows, as plain data (``autoquant.report.write_fleet_report``)."""
        targets: dict[str, Any] = {}
        plans: dict[str, dict[str, Any]] = {}
        for name, run in self.members.items():
            found = run.confirmation()
            best = found.best if found is not None else None
            references = run.references()
            int8 = {k: v["latency_ratio"] for k, v in references.items() if k.endswith(" int8")}
            targets[name] = {
                "target": run.config.target, "device": run.info.target.facts, "report": f"{name}/report.md",
                "int8": int8, "best": None if best is None else {
                    "trial": best.trial, "summary": best.summary, "latency_ratio": best.search.latency_ratio,
                    "retention": best.confirm.retention, "retention_low": best.confirm.retention_low,
                    "retention_high": best.confirm.retention_high, "exact": best.confirm.exact,
                    "distinct_pairs": best.confirm.distinct_pairs, "episodes": best.confirm.episodes},
                "failed": [a.trial for a in (found.attempts if found else ()) if not a.passed],
            }
            floor = run.config.settings.min_retention
            for record in run.records():
                r = record.result
                if r is None or record.repeat or record.plan is None:
                    continue
                plan = CompressionPlan.from_json(record.plan)
                row = plans.setdefault(plan.on(None).describe(), {"cells": {}})
                row["cells"].setdefault(name, []).append({
                    "runtime": plan.runtime, "latency_ratio": r.latency_ratio, "played": r.played,
                    "retention": r.retention, "feasible": r.feasible(floor), "shared_from": r.shared_from,
                    "episodes": r.episodes, "trial": record.number, "proposed_as": record.proposed_as,
                    "best": best is not None and best.trial == record.number})
        first = self.first
        fp32 = first.problem.fp32_episodes
        return {"policy": first.config.policy.name, "env": first.bundle.env_id, "targets": targets, "plans": plans,
                "n_trials": self.info.n_trials, "proposals": self.info.proposals,
                "floor": first.config.settings.min_retention,
                "protocol": fp32.protocol.name,
                "fp32_episodes": len(fp32.seeds), "fp32_distinct_games": fp32.distinct_games}

    def write_report(self) -> None:
        from autoquant.report import write_fleet_report

        for run in self.members.values():
            run.write_report()
        write_fleet_report(self.folder / "report.md", self.report_rows())


def _check_fleet_config(config: RunConfig) -> None:
    if config.device or config.secret_file:
        raise UsageError("--device and --secret-file name one board, and a fleet has several: give each remote "
                         "board a target TOML with its address, and list the files in --target")
    if config.time_budget_s is not None:
        raise UsageError("a fleet's budget is --trials per target; drop --time-budget")
    if config.storage != DEFAULT_STORAGE:
        raise UsageError("a fleet keeps each target's study in its own folder; drop --storage")


def start_fleet(folder: Path, config: RunConfig, targets: Sequence[str], *, proposals: str = "turns",
                trust_pickle: bool = False, log: Callable[[str], None] = lambda s: None) -> Fleet:
    """Set a fleet up: the first target's run measures the states and references, every other
    target's run copies them and measures its own reference latencies. Made in a staging
    folder renamed into place at the end: a fleet folder has every target's run, or does not
    exist."""
    folder = Path(folder)
    _check_new_folder(folder)
    _check_fleet_config(config)
    if proposals not in PROPOSALS:
        raise UsageError(f"--fleet-proposals must be one of {', '.join(PROPOSALS)}, got {short_repr(proposals)}")
    targets = list(targets)
    names = [member_name(t) for t in targets]
    parse_targets(",".join(targets))  # the same checks as the command line's
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    store = PlayStore()
    members: dict[str, Run] = {}
    try:
        staging.mkdir(parents=True)
        for name, target in zip(names, targets):
            member = config.replace(target=target, study_name=name, target_spec=None)
            first = next(iter(members.values()), None)
            log(f"setting up {name}" + (f" (states, seeds and fp32 episodes from {first.folder.name})" if first else ""))
            members[name] = start_run(staging / name, member, trust_pickle=trust_pickle, log=log, share_from=first,
                                      across_targets=True, store=store)
        info = FleetInfo(targets=tuple(targets), members=tuple(names), n_trials=config.n_trials, proposals=proposals,
                         created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        write_json(staging / "fleet.json", info.to_json())
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name, run in members.items():  # the same runs, now in their place
        run.folder = folder / name
        run.problem.models_dir = run.folder / "models"
    return Fleet(folder=folder, info=info, members=members, store=store)


def load_fleet(folder: Path, *, targets: Sequence[str] | None = None, trust_pickle: bool = False,
               n_trials: int | None = None, sticky_actions: float | None = None) -> Fleet:
    """Open a fleet folder (to resume it, confirm, report or export). ``targets``: the
    ``--target`` list the caller gave, needed where the fleet's targets are TOML files (a
    fleet folder never chooses a target file)."""
    folder = Path(folder)
    info = read_fleet_info(folder)
    if targets is not None and list(targets) != list(info.targets):
        raise UsageError(f"--target {','.join(targets)}, but this fleet searches {','.join(info.targets)}: drop "
                         "--target, or start a new fleet")
    if n_trials is not None and n_trials != info.n_trials:  # a resumed fleet may be given a larger budget
        info = dataclasses.replace(info, n_trials=n_trials)
        write_json(folder / "fleet.json", info.to_json(), inside=folder)
    store = PlayStore()
    members: dict[str, Run] = {}
    for name, target in zip(info.members, info.targets):
        path = folder / name
        if path.is_symlink() or not path.is_dir():
            raise UsageError(f"{path} is missing or a symlink: a fleet's runs live in its own folder; restore it")
        run = load_run(path, trust_pickle=trust_pickle, n_trials=n_trials, sticky_actions=sticky_actions,
                       target=target if targets is not None else None)
        run.problem.store = store
        members[name] = run
    first = next(iter(members.values()))
    for name, run in members.items():
        mine, theirs = shared_settings(run.config), shared_settings(first.config)
        if mine != theirs or run.info.references.seeds != first.info.references.seeds:
            raise UsageError(f"{folder / name} does not share {first.folder.name}'s settings and seeds: the fleet "
                             "folder was changed; restore it")
    return Fleet(folder=folder, info=info, members=members, store=store)
