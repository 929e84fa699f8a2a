"""The search problem: a plan becomes a measured, played trial result.

Every trial gets the cheap measurements (compress, export, kernels, latency on the
target, fidelity on held-out states). Episodes, which dominate the cost, are played
only when they can change the answer: see ``SearchRunner.should_play``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.compress import ActivationCache, CompressionPlan, compress, weight_bytes
from autoquant.errors import UsageError
from autoquant.evaluate import EpisodeStats, RetentionTest, ci95, fidelity, onnx_actor, play_episodes
from autoquant.policy import LayerTable, PolicyBundle
from autoquant.search._record import TrialResult
from autoquant.targets import OrtRunner, Target

__all__ = ["MODES", "ProblemSettings", "SearchProblem", "fidelity_score", "plan_key"]

MODES = ("single", "pareto")


def plan_key(plan: CompressionPlan, target_fingerprint: str) -> str:
    """Identity of a measurement: the plan and the target it runs on."""
    text = json.dumps({"plan": plan.to_json(), "target": target_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ProblemSettings:
    """How trials are scored and how much each one costs."""

    mode: str = "single"
    min_retention: float = 0.98
    episodes: int = 10
    fidelity_floor: float = 0.75
    n_envs: int = 8
    seed: int = 0
    confidence: float = 0.95  # of the sequential test that decides a played trial

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise UsageError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 < self.min_retention <= 1.5:
            raise UsageError(f"--min-retention must be in (0, 1.5], got {self.min_retention}")
        if self.episodes < 1:
            raise UsageError(f"--episodes must be >= 1, got {self.episodes}")
        if not 0.0 <= self.fidelity_floor <= 1.0:
            raise UsageError(f"--fidelity-floor must be in [0, 1], got {self.fidelity_floor}")
        if self.n_envs < 1:
            raise UsageError(f"--envs must be >= 1, got {self.n_envs}")


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
    ) -> None:
        self.bundle = bundle
        self.table = table
        self.target = target
        self.states = states
        self.held_out = held_out
        self.reference_onnx = reference_onnx
        self.settings = settings
        self.episode_seeds = episode_seeds
        self.fp32_episodes = fp32_episodes
        self.random_episodes = random_episodes
        self.target_fingerprint = target_fingerprint
        self.fp32_size = weight_bytes(table, CompressionPlan())
        # Fidelity uses the target's own numerics when it can run models (a device).
        self._infer = getattr(target, "infer", None) or (lambda model, x: OrtRunner(model)(x))
        self.reference_outputs = self._infer(reference_onnx, held_out)  # fp32 on held-out states
        self.states = np.asarray(states, dtype=np.float32)
        self._cache = ActivationCache(bundle.net, self.states)  # calibration reuses earlier plans' activations

    def key(self, plan: CompressionPlan) -> str:
        return plan_key(plan, self.target_fingerprint)

    def evaluate(self, plan: CompressionPlan,
                 should_play: Callable[[float, float], tuple[bool, str | None]]) -> TrialResult:
        """Compress, export, measure, screen on fidelity, and play if it can matter."""
        t0 = time.perf_counter()
        compressed = compress(self.bundle, plan, self.states, seed=self.settings.seed, cache=self._cache)
        t1 = time.perf_counter()
        latency = self.target.measure(compressed.onnx, self.reference_onnx, self.held_out[:1])
        t2 = time.perf_counter()
        fid = fidelity(self.reference_outputs, self._infer(compressed.onnx, self.held_out), self.bundle.action)
        score = fidelity_score(fid)
        ratio = float(latency.ratio) if latency.ratio is not None else float(latency.value)
        result = TrialResult(
            key=self.key(plan), summary=plan.describe(), latency_ratio=ratio, latency=latency.to_json(),
            size_bytes=compressed.size_bytes, size_ratio=compressed.size_bytes / self.fp32_size,
            macs_ratio=compressed.table.total_macs / self.table.total_macs, fidelity=fid,
            fidelity_score=score, kernels=compressed.kernels.to_json() if compressed.kernels else {},
        )
        play, reason = should_play(ratio, score)
        t3 = time.perf_counter()
        if play:
            test = self.retention_test()
            # Pareto searches want each plan's retention, not only its side of the floor: all episodes.
            stop = test.stop if self.settings.mode == "single" else None
            episodes = play_episodes(onnx_actor(self.bundle, compressed.onnx), self.bundle.env_id,  # type: ignore[arg-type]
                                     self.episode_seeds, n_envs=self.settings.n_envs, stop=stop)
            decided = test.result(episodes)
            fp32 = dict(zip(self.fp32_episodes.seeds, self.fp32_episodes.rewards))
            diffs = [r - fp32[s] for s, r in zip(episodes.seeds, episodes.rewards)]
            paired = {"retention": decided["retention"], "mean_diff": float(np.mean(diffs)),
                      "mean_diff_ci95": ci95(diffs), "floor": float(self.random_episodes.mean)}
            result = result.replace(played=True, reward={**episodes.to_json(), "paired": paired, "test": decided},
                                    retention=decided["retention"])
        else:
            result = result.replace(skip_reason=reason)
        t4 = time.perf_counter()
        return result.replace(seconds={"compress": round(t1 - t0, 3), "measure": round(t2 - t1, 3),
                                       "fidelity": round(t3 - t2, 3), "play": round(t4 - t3, 3)})

    def retention_test(self) -> RetentionTest:
        """The sequential test that decides a played trial, against fp32 on the run's seeds."""
        return RetentionTest(self.fp32_episodes, self.random_episodes, self.settings.min_retention,
                             confidence=self.settings.confidence)

    def play(self, model: bytes, seeds: list[int]) -> EpisodeStats:
        return play_episodes(onnx_actor(self.bundle, model), self.bundle.env_id, seeds,  # type: ignore[arg-type]
                             n_envs=self.settings.n_envs)
