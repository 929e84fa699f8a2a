"""The search problem: a plan becomes a measured, played trial result.

Every trial gets the cheap measurements (graph build, kernels, latency on the target,
fidelity on held-out states, and the proxy: agreement with fp32 on states the plan
visits in short rollouts of its own). Episodes, which dominate the cost, are played
only when they can change the answer: see ``SearchRunner.should_play``.

With ``finetune_epochs`` a plan whose held-out fidelity is below ``finetune_below`` is
fine-tuned before its proxy and episodes judge it (distillation from fp32, then DAgger
rounds on states it visits itself), and only when its latency could still beat the best
feasible plan: the seconds it costs go to plans that can change the answer. Its latency
and fidelity are measured again on the fine-tuned graph, which is kept in the run folder
(``models/KEY.onnx``) so that confirmation and export use the weights that were judged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import atomic_write
from autoquant._limits import (
    MAX_ENVS,
    MAX_EPISODES,
    MAX_FINETUNE_EPOCHS,
    MAX_FINETUNE_ROUNDS,
    MAX_SEED,
    MAX_STATES,
    check_integer,
)
from autoquant._untrusted import short_repr
from autoquant.compress import ActivationCache, CompressedPolicy, CompressionPlan, compress, weight_bytes
from autoquant.errors import UsageError
from autoquant.evaluate import (UNDECIDED, EpisodeStats, RetentionTest, dagger_visitor, episode_seeds, fidelity,
                                onnx_actor, paired_comparison, play_episodes, random_actor, visited_states)
from autoquant.policy import LayerTable, PolicyBundle, make_env
from autoquant.search._record import TrialResult
from autoquant.runtimes import Runner
from autoquant.targets import Target

__all__ = ["MODES", "PlayStore", "ProblemSettings", "SearchProblem", "fidelity_score", "numerics_agree", "plan_key"]

MODES = ("single", "pareto")


def plan_key(plan: CompressionPlan, target_fingerprint: str) -> str:
    """Identity of a measurement: the plan and the target it runs on."""
    text = json.dumps({"plan": plan.to_json(), "target": target_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ProblemSettings:
    """How trials are scored and how much each one costs. Validated when made: the one
    place these settings are checked (the command line passes them through, and a
    ``RunConfig`` holds one of these instead of copies of its fields)."""

    mode: str = "single"
    min_retention: float = 0.98  # reward retention vs fp32 a plan must keep (--min-retention)
    episodes: int = 10
    fidelity_floor: float = 0.5
    n_envs: int = 8
    seed: int = 0
    confidence: float = 0.95  # of the sequential test that decides a played trial
    proxy_states: int | None = None  # states the plan's own rollouts give the proxy (None: 128 images, 512 else)
    finetune_epochs: int = 0  # > 0: fine-tune plans below ``finetune_below`` before they are judged
    finetune_rounds: int = 2  # DAgger rounds on the plan's own states after the first distillation
    finetune_below: float = 0.98  # held-out fidelity score below which a plan is fine-tuned
    bias_correction: bool = True  # round-to-nearest plans: empirical bias correction on the recorded states
    settle: bool = True  # finite starts: a plan left undecided at or above the floor plays every start

    def __post_init__(self) -> None:
        check_integer(self.finetune_epochs, "--finetune (epochs)", 0, MAX_FINETUNE_EPOCHS)
        check_integer(self.finetune_rounds, "--finetune-rounds", 0, MAX_FINETUNE_ROUNDS)
        _check_number(self.finetune_below, "--finetune-below", "[0, 1]", lambda v: 0.0 <= v <= 1.0)
        if self.proxy_states is not None:
            check_integer(self.proxy_states, "--proxy-states", 1, MAX_STATES)
        _check_number(self.confidence, "--confidence", "[0.5, 1)", lambda v: 0.5 <= v < 1.0)
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {short_repr(self.mode)}")
        _check_number(self.min_retention, "--min-retention", "(0, 1.5]", lambda v: 0.0 < v <= 1.5)
        check_integer(self.episodes, "--episodes", 1, MAX_EPISODES)
        _check_number(self.fidelity_floor, "--fidelity-floor", "[0, 1]", lambda v: 0.0 <= v <= 1.0)
        check_integer(self.n_envs, "--envs", 1, MAX_ENVS)
        check_integer(self.seed, "--seed", 0, MAX_SEED)
        for name in ("bias_correction", "settle"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false, got {short_repr(getattr(self, name))}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ProblemSettings:
        """Read ``to_json``'s object (run.json's ``config.settings``); unknown keys are dropped."""
        if not isinstance(data, dict):
            raise UsageError(f"the settings must be a JSON object, got {short_repr(data)}")
        names = {f.name for f in dataclasses.fields(cls)}
        # runs made before bias correction and settling existed built and judged their plans without them
        return cls(**{"bias_correction": False, "settle": False, **{k: v for k, v in data.items() if k in names}})


SHARE_TOLERANCE = 0.01  # of fp32's output range on the held-out states: the conformance suite's bound


def numerics_agree(a: np.ndarray, b: np.ndarray, reference: np.ndarray, discrete: bool) -> dict[str, Any] | None:
    """Whether one plan's outputs on two runtimes (``a``, ``b``, on the held-out states) agree
    closely enough for its episodes to be shared: the same greedy action on every state and
    no output further apart than ``SHARE_TOLERANCE`` of fp32's output range (the bound the
    runtimes' conformance suite holds whole quantized networks to). None where they do not,
    and for continuous actions (any difference moves the action itself)."""
    if not discrete or a.shape != b.shape:
        return None
    span = float(np.ptp(reference)) or 1.0
    worst = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    if worst > SHARE_TOLERANCE * span or not np.array_equal(a.argmax(axis=1), b.argmax(axis=1)):
        return None
    return {"states": int(len(a)), "max_abs_difference": worst, "tolerance": SHARE_TOLERANCE * span}



@dataclass(frozen=True)
class Played:
    """A plan's episodes, kept for the same plan elsewhere: on another runtime of the target
    (where the numerics agree), or on another target of a fleet (the same graph)."""

    runtime: str
    target: str  # the name of the target whose trial played them
    digest: str  # SHA-256 of the graph played
    outputs: np.ndarray  # on the held-out states, in that target's numerics
    episodes: EpisodeStats  # on the run's seeds, as far as the sequential test went
    settled: EpisodeStats | None  # on every start, where the plan was settled


@dataclass
class Measured:
    """A graph's held-out outputs (and proxy fidelity, once measured) in one target's numerics:
    what another target of a fleet whose numerics agree on the graph takes instead of
    measuring them again."""

    target: str
    outputs: np.ndarray
    proxy: dict[str, Any] | None = None


FIDELITY_PROBE = 16  # held-out states a target runs to check that another's outputs are its own


class PlayStore:
    """Episodes played so far, by plan and by graph. One per run; the runs of a fleet share
    one (their seeds, protocol and fp32 episodes are the same, and every search episode is
    played in the host's numerics of the plan's runtime, whatever the target: the same graph
    on the same runtime plays the same games)."""

    def __init__(self) -> None:
        self.plans: dict[str, list[Played]] = {}  # by the plan without its runtime (``plan_key(plan, "")``)
        self.games: dict[tuple[str, str, tuple[int, ...]], EpisodeStats] = {}  # (digest, runtime, seeds)
        self.all_starts: tuple[list[int], EpisodeStats, EpisodeStats] | None = None  # see ``all_starts``
        self.outputs: dict[tuple[str, str], list[Measured]] = {}  # (digest, runtime): on a device's numerics


def _digest(model: bytes) -> str:
    """SHA-256 of what a graph computes: its graph, without the metadata (which names the
    plan, its runtime included)."""
    import onnx

    return hashlib.sha256(onnx.load_from_string(model).graph.SerializeToString()).hexdigest()


def _check_number(value: Any, what: str, interval: str, inside: Callable[[float], bool]) -> None:
    """``value`` is a number (not a bool) in ``interval``, else one line naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not inside(value):
        raise UsageError(f"{what} must be in {interval}, got {short_repr(value)}")


def _ratio(latency: Any) -> float:
    """A LatencyResult's ratio to fp32 (its value where the target measures no reference)."""
    return float(latency.ratio) if latency.ratio is not None else float(latency.value)


def fidelity_score(fid: dict[str, Any]) -> float:
    """One number, higher is better: action agreement, or 1 - action error."""
    if "action_agreement" in fid:
        return float(fid["action_agreement"])
    return float(1.0 - fid["action_error"])


class SearchProblem:
    """Plan -> TrialResult for one policy on one target, against fixed references."""

    def __init__(
        self,
        bundle: PolicyBundle,
        table: LayerTable,
        target: Target,
        *,
        states: np.ndarray,
        held_out: np.ndarray,
        reference_onnx: bytes,
        settings: ProblemSettings,
        episode_seeds: list[int],
        fp32_episodes: EpisodeStats,
        random_episodes: EpisodeStats,
        target_fingerprint: str,
        models_dir: Path | None = None,
        targets: Mapping[str, Target] | None = None,
        store: PlayStore | None = None,
    ) -> None:
        self.bundle = bundle
        self.table = table
        self.target = target
        # A target with several runtimes: one Target per runtime (fp32 on the first is every
        # ratio's denominator); a plan's ``runtime`` picks its own. Else the one target.
        self.targets: dict[str, Target] = dict(targets or {})
        self.runtime = str(getattr(getattr(target, "runtime", None), "name", "onnxruntime"))
        self.states = np.asarray(states, dtype=np.float32)  # the one array the activation cache knows
        self.held_out = held_out
        self.reference_onnx = reference_onnx
        self.settings = settings
        self.episode_seeds = episode_seeds
        self.fp32_episodes = fp32_episodes
        self.protocol = fp32_episodes.protocol  # every episode of the run is played under fp32's protocol
        self.random_episodes = random_episodes
        self.target_fingerprint = target_fingerprint
        self.fp32_size = weight_bytes(table, CompressionPlan())
        # Fidelity uses the target's own numerics when it can run models (a device); on the
        # host one fp32 session answers for every trial.
        self._device_infer = getattr(target, "infer", None)
        self._reference_runner = Runner(reference_onnx) if self._device_infer is None else None
        self.reference_outputs = self._reference(held_out)  # fp32 on held-out states
        self._cache = ActivationCache(bundle.net, self.states)  # calibration reuses earlier plans' activations
        self._proxy_env: Any = None  # one env for the proxy's rollouts, made on first use
        self.models_dir = models_dir  # where fine-tuned trials keep their graphs (None: not kept)
        self._host_reference: np.ndarray | None = None  # fp32 on held-out states in the host's numerics
        # Played plans, so that the same plan on a runtime whose numerics agree (or, in a fleet,
        # the same graph on another target) reuses the episodes.
        self.store = store if store is not None else PlayStore()
        self.target_name = str(getattr(target, "name", "target"))

    def _reference(self, x: np.ndarray) -> np.ndarray:
        """fp32's outputs on ``x``, with the target's numerics."""
        if self._reference_runner is not None:
            return self._reference_runner(x)
        return self._device_infer(self.reference_onnx, x)  # type: ignore[misc]

    def target_of(self, plan: CompressionPlan) -> Target:
        """The target (with its runtime) that ``plan`` is measured and deployed on."""
        if plan.runtime is None or plan.runtime == self.runtime or not self.targets:
            if plan.runtime not in (None, self.runtime):
                raise UsageError(f"plan runs on {plan.runtime!r}, and this run's target offers {self.runtime!r} "
                                 "only")
            return self.target
        found = self.targets.get(plan.runtime)
        if found is None:
            raise UsageError(f"plan runs on {plan.runtime!r}, and this run's target offers {sorted(self.targets)}")
        return found

    def runtime_of(self, plan: CompressionPlan) -> str:
        return plan.runtime or self.runtime

    def runner(self, plan: CompressionPlan, model: bytes) -> Runner:
        """The plan's session on this machine, on the runtime it is deployed with."""
        return Runner(model, runtime=self.runtime_of(plan))

    def _candidate(self, model: bytes, runner: Runner, plan: CompressionPlan | None = None
                   ) -> Callable[[np.ndarray], np.ndarray]:
        """The plan's outputs on a batch, with the target's numerics (``runner`` on the host)."""
        if self._device_infer is None:
            return runner
        infer = getattr(self.target_of(plan), "infer") if plan is not None else self._device_infer
        return lambda x: infer(model, x)  # type: ignore[no-any-return]

    def _proxy_fidelity(self, model: bytes, runner: Runner, plan: CompressionPlan | None = None) -> dict[str, Any]:
        """Fidelity on the states the plan visits itself; its ``fidelity_score`` is the proxy."""
        own = self.visited_states(runner)
        return fidelity(self._reference(own), self._candidate(model, runner, plan)(own), self.bundle.action)

    def key(self, plan: CompressionPlan) -> str:
        return plan_key(plan, self.target_fingerprint)

    def evaluate(self, plan: CompressionPlan,
                 should_play: Callable[[float, Callable[[], float]], tuple[bool, str | None]], *,
                 deadline: float | None = None) -> TrialResult:
        """Build, measure, screen, and play if it can matter.

        ``should_play(latency_ratio, proxy)`` decides; ``proxy()`` measures the proxy (the
        plan's own rollouts) only when the decision needs it, and the result records it
        where it was measured. ``deadline`` (a ``time.perf_counter()`` value: the search's
        wall-clock budget) bounds fine-tuning: no epoch starts past it.
        """
        t0 = time.perf_counter()
        compressed = compress(self.bundle, plan, self.states, seed=self.settings.seed, cache=self._cache,
                              bias_correction=self.settings.bias_correction)
        t1 = time.perf_counter()
        target = self.target_of(plan)
        latency = target.measure(compressed.onnx, self.reference_onnx, self.held_out[:1])
        t2 = time.perf_counter()
        runner = self.runner(plan, compressed.onnx)  # the host's session of the plan: rollouts, host fidelity
        digest = _digest(compressed.onnx)
        outputs, entry, borrowed = self._held_out_outputs(plan, compressed.onnx, digest, runner)
        fid = fidelity(self.reference_outputs, outputs, self.bundle.action)
        if borrowed is not None:
            fid["shared_from"] = borrowed
        t_fid = time.perf_counter()
        measured: dict[str, Any] = {}

        def proxy() -> float:
            """Agreement with fp32 on states the plan visits itself; measured when first asked,
            on the fine-tuned plan where the plan is one to fine-tune."""
            nonlocal compressed, latency, runner, fid, outputs
            if "score" not in measured:
                if self.settings.finetune_epochs and fidelity_score(fid) < self.settings.finetune_below \
                        and (deadline is None or time.perf_counter() < deadline):
                    measured["finetune"], better = self.try_finetune(plan, fid, deadline=deadline)
                    if better is not None:  # judged on the fine-tuned graph, its latency measured again
                        compressed, runner, fid = better
                        outputs = None  # a graph of its own: its episodes are never shared
                        latency = target.measure(compressed.onnx, self.reference_onnx, self.held_out[:1])
                if outputs is not None and borrowed is not None and entry is not None and entry.proxy is not None:
                    measured["fidelity"] = {**entry.proxy, "shared_from": borrowed}
                else:
                    measured["fidelity"] = self._proxy_fidelity(compressed.onnx, runner, plan)
                    if outputs is not None and borrowed is None and entry is not None:
                        entry.proxy = measured["fidelity"]  # this target's own: for the next one
                measured["score"] = fidelity_score(measured["fidelity"])
            return float(measured["score"])

        play, reason = should_play(_ratio(latency), proxy)
        ratio = _ratio(latency)  # measured again where proxy() fine-tuned the plan
        if "score" in measured:
            fid["self"] = measured["fidelity"]
        result = TrialResult(
            key=self.key(plan), summary=plan.describe(), latency_ratio=ratio, latency=latency.to_json(),
            size_bytes=compressed.size_bytes, size_ratio=compressed.size_bytes / self.fp32_size,
            macs_ratio=compressed.table.total_macs / self.table.total_macs, fidelity=fid,
            fidelity_score=fidelity_score(fid), kernels=compressed.kernels.to_json() if compressed.kernels else {},
            proxy=measured.get("score"), finetune=measured.get("finetune"),
        )
        t3 = time.perf_counter()
        if play:
            test = self.retention_test()
            # Pareto searches want each plan's retention, not only its side of the floor: all episodes.
            stop = test.stop if self.settings.mode == "single" else None
            shared = self._shared_episodes(plan, outputs, digest)
            act = lambda obs: self.bundle.action.actions(runner(self.bundle.prepare(obs)))
            known: EpisodeStats | None = None  # the other runtime's episodes on every start, where it settled
            if shared is not None:
                episodes, known = shared.pop("episodes"), shared.pop("settled")
            else:
                episodes = play_episodes(act, self.bundle.env_id, self.episode_seeds,  # type: ignore[arg-type]
                                         protocol=self.protocol, n_envs=self.settings.n_envs, stop=stop)
            decided = test.result(episodes)
            compared = paired_comparison(episodes, self._fp32_on(episodes.seeds), self.random_episodes)
            searched, settled = episodes, None
            if self._to_settle(decided):
                # every start of the protocol: the exact retention decides, as confirmation will
                first = {"episodes": len(episodes.seeds), "distinct_pairs": decided["distinct_pairs"],
                         "retention": decided["retention"], "low": decided["low"], "high": decided["high"]}
                episodes, decided, compared = self._settle(act, known)
                settled = {"search_test": first, "episodes": len(episodes.seeds)}
            if shared is None and outputs is not None:
                self.store.plans.setdefault(plan_key(plan.on(None), ""), []).append(
                    Played(self.runtime_of(plan), self.target_name, digest, outputs, searched,
                           episodes if settled is not None else None))
            paired = {k: compared[k] for k in ("mean_diff", "mean_diff_ci95", "distinct_pairs", "distinct_games",
                                               "exact", "protocol", "sticky_actions", "floor")}
            paired["retention"] = decided["retention"]  # against fp32 over all the seeds played, as the test
            reward = {**episodes.to_json(), "paired": paired, "test": decided}
            if shared is not None:
                reward["shared_from"] = shared
            if settled is not None:
                reward["settled"] = settled
            result = result.replace(played=True, reward=reward, retention=decided["retention"])
        else:
            result = result.replace(skip_reason=reason)
        t4 = time.perf_counter()
        return result.replace(seconds={"compress": round(t1 - t0, 3), "measure": round(t2 - t1, 3),
                                       "fidelity": round(t_fid - t2, 3), "proxy": round(t3 - t_fid, 3),
                                       "play": round(t4 - t3, 3)})

    def _held_out_outputs(self, plan: CompressionPlan, model: bytes, digest: str, runner: Runner
                          ) -> tuple[np.ndarray, Measured | None, dict[str, Any] | None]:
        """The graph's outputs on the held-out states in the target's numerics; the store's entry
        they are (None on the host); and, where they were taken from another target of a fleet,
        from where (None where measured here).

        Measuring them costs a device or an emulator a call per state (256 Pong states: about
        19 s emulated). Where another target measured the same graph on the same runtime, this
        target runs only the first ``FIDELITY_PROBE`` held-out states; if they agree with that
        target's (``numerics_agree``: the same action on each, outputs within 1 % of fp32's
        range), it takes that target's outputs, and its proxy where measured, and records from
        where. Else it measures all its own."""
        candidate = self._candidate(model, runner, plan)
        if self._device_infer is None:  # the host's numerics: as cheap as the check itself
            return candidate(self.held_out), None, None
        key = (digest, self.runtime_of(plan))
        for entry in self.store.outputs.get(key, []):
            if entry.target == self.target_name:
                continue
            probe = candidate(self.held_out[:FIDELITY_PROBE])
            agreement = numerics_agree(probe, entry.outputs[:FIDELITY_PROBE],
                                       self.reference_outputs[:FIDELITY_PROBE], self.bundle.action.discrete)
            if agreement is not None:
                return entry.outputs, entry, {"target": entry.target, **agreement}
            break  # numerics that differ on this graph: measure all of them here
        own = Measured(self.target_name, candidate(self.held_out))
        self.store.outputs.setdefault(key, []).append(own)
        return own.outputs, own, None

    def _to_settle(self, decided: Mapping[str, Any]) -> bool:
        """Whether the sequential test left the plan undecided on a mean at or above the floor
        under a protocol with finitely many starts: its mean over a few of them would make it
        feasible, and every start played makes the retention exact instead (as confirmation
        will). Undecided plans below the floor are judged on their mean: that errs toward
        rejecting, and costs no episodes."""
        return (self.settings.settle and self.protocol.starts is not None and decided["decision"] == UNDECIDED
                and not decided["exact"] and decided["retention"] >= self.settings.min_retention)

    def all_starts(self) -> tuple[list[int], EpisodeStats, EpisodeStats]:
        """Every start of the finite protocol (the seeds confirmation plays), with fp32's and
        a random policy's episodes on them: played the first time they are asked for."""
        if self.store.all_starts is None:
            assert self.protocol.starts is not None
            seeds = episode_seeds(self.settings.seed + 1, self.protocol.starts, self.protocol)
            fp32 = self.play(self.reference_onnx, seeds)
            random_play = play_episodes(random_actor(self.bundle.action_space, self.settings.seed + 1),
                                        self.bundle.env_id, seeds, protocol=self.protocol,  # type: ignore[arg-type]
                                        n_envs=self.settings.n_envs)
            self.store.all_starts = (seeds, fp32, random_play)
        return self.store.all_starts

    def _settle(self, act: Callable[[np.ndarray], np.ndarray], known: EpisodeStats | None
                ) -> tuple[EpisodeStats, dict[str, Any], dict[str, Any]]:
        """The plan on every start (``known``: shared from a runtime whose numerics agree): its
        episodes, the exact test's result, the paired comparison."""
        seeds, fp32, random_play = self.all_starts()
        episodes = known
        if episodes is None:
            episodes = play_episodes(act, self.bundle.env_id, seeds, protocol=self.protocol,  # type: ignore[arg-type]
                                     n_envs=self.settings.n_envs)
        test = RetentionTest(fp32, random_play, self.settings.min_retention, confidence=self.settings.confidence)
        return episodes, test.result(episodes), paired_comparison(episodes, fp32, random_play)

    def _shared_episodes(self, plan: CompressionPlan, outputs: np.ndarray | None, digest: str
                         ) -> dict[str, Any] | None:
        """Episodes this plan played elsewhere that it may take, with what was compared; None
        where there are none to share (then the plan plays its own):

        - on another runtime of this target, where the two runtimes' numerics agree on it
          (``numerics_agree``, on the held-out states in the target's numerics);
        - on another target of a fleet, where the graph and the runtime are the same: search
          episodes are played in the host's numerics, so they are the very games this trial
          would play (``identical_graph``)."""
        if outputs is None:
            return None
        mine = self.runtime_of(plan)
        for done in self.store.plans.get(plan_key(plan.on(None), ""), []):
            if done.target == self.target_name:
                if done.runtime == mine:
                    continue  # the same trial again: the runner's cache answers repeats
                agreement = numerics_agree(outputs, done.outputs, self.reference_outputs, self.bundle.action.discrete)
                if agreement is not None:
                    return {"runtime": done.runtime, **agreement, "episodes": done.episodes, "settled": done.settled}
            elif done.runtime == mine and done.digest == digest:
                return {"runtime": done.runtime, "target": done.target, "identical_graph": True,
                        "episodes": done.episodes, "settled": done.settled}
        return None

    def try_finetune(self, plan: CompressionPlan, fid: dict[str, Any], *, deadline: float | None = None
                     ) -> tuple[dict[str, Any], tuple[CompressedPolicy, Runner, dict[str, Any]] | None]:
        """Fine-tune ``plan`` (held-out fidelity ``fid`` as built), until ``deadline`` at most
        (see ``finetune``): the record of the attempt, and the tuned graph with its session and
        held-out fidelity where tuning raised that fidelity (the graph then kept in the run
        folder), else None: judge the plan as built."""
        start = time.perf_counter()
        tuned = self.finetune(plan, deadline=deadline)
        runner = self.runner(plan, tuned.onnx)
        tuned_fid = fidelity(self.reference_outputs, self._candidate(tuned.onnx, runner, plan)(self.held_out),
                             self.bundle.action)
        kept = fidelity_score(tuned_fid) > fidelity_score(fid)
        if kept:
            self._keep(plan, tuned.onnx)
        assert tuned.finetune is not None  # fine-tuned just now
        record = {**tuned.finetune.to_json(), "fidelity_before": fidelity_score(fid),
                  "fidelity_after": fidelity_score(tuned_fid), "kept": kept,
                  "seconds": round(time.perf_counter() - start, 3)}
        if kept:  # ties the file in models/ to this trial: export and confirmation check it
            record["model_sha256"] = hashlib.sha256(tuned.onnx).hexdigest()
        return record, ((tuned, runner, tuned_fid) if kept else None)

    def finetune(self, plan: CompressionPlan, *, deadline: float | None = None) -> CompressedPolicy:
        """The plan compressed and fine-tuned as the run's settings say: distillation from
        fp32 on the recorded states, then DAgger rounds on states the plan visits itself,
        from seeds of their own (the proxy's rollouts stay unseen). No epoch or round starts
        past ``deadline`` (a ``time.perf_counter()`` value); the best epoch so far is kept."""
        visit = dagger_visitor(self.bundle, seed=self.settings.seed, n=self.settings.proxy_states, env=self._env())
        return compress(self.bundle, plan, self.states, seed=self.settings.seed,
                        finetune_epochs=self.settings.finetune_epochs, finetune_rounds=self.settings.finetune_rounds,
                        visit=visit, finetune_deadline=deadline)

    def _keep(self, plan: CompressionPlan, onnx: bytes) -> None:
        if self.models_dir is not None:
            self.models_dir.mkdir(exist_ok=True)
            atomic_write(self.models_dir / f"{self.key(plan)}.onnx", onnx, inside=self.models_dir.parent)

    def latency_ratio(self, plan: CompressionPlan) -> float:
        """The plan's latency ratio to fp32 on the target, measured as a trial measures it
        (rounded to nearest: how weights round changes no kernel and no latency)."""
        compressed = compress(self.bundle, plan, self.states, seed=self.settings.seed, cache=self._cache,
                              bias_correction=self.settings.bias_correction,
                              rounding="nearest")
        return _ratio(self.target_of(plan).measure(compressed.onnx, self.reference_onnx, self.held_out[:1]))

    def proxy_of(self, plan: CompressionPlan) -> float:
        """The plan's proxy, measured as a trial measures it (no latency, no episodes)."""
        compressed = compress(self.bundle, plan, self.states, seed=self.settings.seed, cache=self._cache,
                              bias_correction=self.settings.bias_correction,
                              verify_kernels=False)
        return fidelity_score(self._proxy_fidelity(compressed.onnx, self.runner(plan, compressed.onnx), plan))

    def output_loss_of(self, plan: CompressionPlan) -> float:
        """The plan's relative squared output error against fp32 on the held-out states
        (``output_mse``): what the search's sensitivities sum, built as a trial builds it.

        An emulated target answers in the host's numerics (fp32 reference included): emulating
        256 Pong states costs about 19 s, about 17 minutes for the 55 choices of the joint space,
        and sensitivities only rank choices; trials still judge fidelity in the target's numerics."""
        compressed = compress(self.bundle, plan, self.states, seed=self.settings.seed, cache=self._cache,
                              bias_correction=self.settings.bias_correction,
                              verify_kernels=False)
        runner = self.runner(plan, compressed.onnx)
        if getattr(self.target, "emulated", False):
            if self._host_reference is None:
                self._host_reference = Runner(self.reference_onnx)(self.held_out)
            reference, outputs = self._host_reference, runner(self.held_out)
        else:
            reference, outputs = self.reference_outputs, self._candidate(compressed.onnx, runner, plan)(self.held_out)
        return float(fidelity(reference, outputs, self.bundle.action)["output_mse"])

    def _env(self) -> Any:
        """The one environment the proxy's and DAgger's rollouts reuse (reset with their seeds)."""
        if self._proxy_env is None:
            self._proxy_env = make_env(self.bundle.env_id, protocol=self.protocol)  # type: ignore[arg-type]
        return self._proxy_env

    def visited_states(self, runner: Runner) -> np.ndarray:
        """States the plan (``runner``) visits itself: see ``evaluate.visited_states``."""
        return visited_states(self.bundle, lambda obs: self.bundle.action.actions(runner(self.bundle.prepare(obs))),
                              seed=self.settings.seed, n=self.settings.proxy_states, env=self._env())

    def _fp32_on(self, seeds: tuple[int, ...]) -> EpisodeStats:
        """fp32's episodes on ``seeds`` (a prefix the sequential test stopped at, in any order)."""
        ref = self.fp32_episodes
        index = {s: k for k, s in enumerate(ref.seeds)}
        pick = [index[s] for s in seeds]
        return EpisodeStats(seeds=tuple(seeds), rewards=tuple(ref.rewards[k] for k in pick),
                            lengths=tuple(ref.lengths[k] for k in pick), steps_per_s=ref.steps_per_s,
                            games=tuple(ref.labels[k] for k in pick), protocol=ref.protocol)

    def retention_test(self) -> RetentionTest:
        """The sequential test that decides a played trial, against fp32 on the run's seeds."""
        return RetentionTest(self.fp32_episodes, self.random_episodes, self.settings.min_retention,
                             confidence=self.settings.confidence)

    def play(self, model: bytes, seeds: list[int], *, runtime: str | None = None) -> EpisodeStats:
        """``model`` (ONNX) played on ``seeds`` in the host's numerics of ``runtime`` (default the
        target's): once per graph, runtime and seeds in the store (a fleet's targets confirm the
        same graphs)."""
        key = (_digest(model), runtime or self.runtime, tuple(seeds))
        if key not in self.store.games:
            self.store.games[key] = play_episodes(onnx_actor(self.bundle, model, runtime or self.runtime),
                                                  self.bundle.env_id, seeds, protocol=self.protocol,  # type: ignore[arg-type]
                                                  n_envs=self.settings.n_envs)
        return self.store.games[key]
