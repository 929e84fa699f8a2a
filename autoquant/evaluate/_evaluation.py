"""evaluate(): one policy, optionally one plan, measured and played side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from autoquant.compress import CompressionPlan, compress, export_reference, weight_bytes
from autoquant.evaluate._episodes import paired_comparison, play_episodes, random_actor
from autoquant.evaluate._fidelity import fidelity
from autoquant.evaluate._states import StateSet, dagger_visitor, record_states
from autoquant.policy import PolicyBundle, Protocol, resolve_protocol
from autoquant.policy import analyse
from autoquant.targets import Target
from autoquant.runtimes import KernelReport, OrtRunner, Runner, kernel_report

__all__ = ["Evaluation", "episode_seeds", "evaluate", "onnx_actor"]


HELD_OUT_SEED_OFFSET = 7919


def episode_seeds(seed: int, episodes: int, protocol: Protocol | None = None) -> list[int]:
    """Evaluation seeds: disjoint from the seeds states are recorded on (``seed`` + k).

    Under a protocol with finite starts they are consecutive, so they play distinct starts,
    and there are at most as many as starts: a start played twice is the same game again."""
    if protocol is not None and protocol.starts is not None:
        episodes = min(episodes, protocol.starts)
    return [100_000 + 1_000 * seed + i for i in range(episodes)]


def onnx_actor(bundle: PolicyBundle, model: bytes, runtime: str = "onnxruntime"):  # type: ignore[no-untyped-def]
    """Observations -> actions through a session of ``model`` (ONNX) on ``runtime``."""
    runner = Runner(model, runtime=runtime)
    return lambda obs: bundle.action.actions(runner(bundle.prepare(obs)))


@dataclass
class Evaluation:
    """Everything ``autoquant evaluate`` reports, JSON-ready."""

    policy: dict[str, Any]
    fp32: dict[str, Any]
    plan: dict[str, Any] | None = None
    random: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    compressed: Any = None  # the CompressedPolicy, for callers that export it

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "fp32": self.fp32, "plan": self.plan, "random": self.random,
                "latency": self.latency, **self.extra}


def evaluate(
    bundle: PolicyBundle,
    *,
    target: Target | None,
    plan: CompressionPlan | None = None,
    episodes: int | None = None,
    sticky_actions: float | None = None,
    seed: int = 0,
    n_states: int = 1024,
    states: StateSet | None = None,
    finetune_epochs: int = 0,
    finetune_rounds: int = 2,
    n_envs: int = 8,
) -> Evaluation:
    """fp32 vs ``plan`` on the same seeds: reward, retention, fidelity, latency, size, kernels.

    Episodes are played under the env's own protocol, or with ``sticky_actions`` (ALE).
    ``episodes``: None plays every start of a protocol with finitely many (the means are then
    exact for it) and 20 seeds otherwise; a protocol with finite starts never plays more
    episodes than it has starts."""
    protocol = resolve_protocol(bundle.env_id, sticky_actions)  # type: ignore[arg-type]
    if episodes is None:
        episodes = protocol.starts if protocol.starts is not None else 20
    table = analyse(bundle)
    if plan is not None:
        plan.validate(table)
    if states is None:
        states = record_states(bundle, n=n_states, seed=seed)
    x = states.states
    reference = export_reference(bundle)
    ref_kernels = kernel_report(reference, x[:1], table.names)
    seeds = episode_seeds(seed, episodes, protocol)
    ref_eps = play_episodes(onnx_actor(bundle, reference), bundle.env_id, seeds, protocol=protocol,  # type: ignore[arg-type]
                            n_envs=n_envs) if episodes else None
    floor = play_episodes(random_actor(bundle.action_space, seed), bundle.env_id, seeds,  # type: ignore[arg-type]
                          protocol=protocol, n_envs=n_envs) if episodes else None
    fp32 = {
        "reward": ref_eps.to_json() if ref_eps else None,
        "size_bytes": weight_bytes(table, CompressionPlan()),
        "onnx_bytes": len(reference),
        "macs": table.total_macs,
        "params": table.total_params,
        "kernels": ref_kernels.to_json(),
    }
    policy = {"source": str(bundle.source), "algo": bundle.algo, "env_id": bundle.env_id,
              "input_shape": list(bundle.input_shape), "action": bundle.action.kind}
    result = Evaluation(policy=policy, fp32=fp32, random=floor.to_json() if floor else None)
    result.extra["protocol"] = protocol.to_json()
    result.extra["sticky_actions"] = protocol.sticky_actions
    result.extra["states"] = {"count": len(states), "seed": states.seed, "epsilon": states.epsilon}
    if plan is None:
        if target is not None:
            latency = target.measure(reference, None, x[:1])
            result.latency = latency.to_json()
        return result

    compressed = compress(bundle, plan, x, finetune_epochs=finetune_epochs, finetune_rounds=finetune_rounds,
                          visit=dagger_visitor(bundle, seed=seed), seed=seed)
    # Fidelity on states the compression never saw (other episodes than calibration's).
    held_out = record_states(bundle, n=max(256, len(states) // 4), seed=seed + HELD_OUT_SEED_OFFSET).states
    # The plan's numerics are its runtime's: the plan's own, else the target's.
    runtime = plan.runtime or str(getattr(getattr(target, "runtime", None), "name", "onnxruntime"))
    cand_out = Runner(compressed.onnx, runtime=runtime)(held_out)
    ref_out = OrtRunner(reference)(held_out)
    result.extra["states"]["held_out"] = len(held_out)
    plan_json: dict[str, Any] = {
        "plan": plan.to_json(),
        "summary": plan.describe(),
        "size_bytes": compressed.size_bytes,
        "onnx_bytes": len(compressed.onnx),
        "macs": compressed.table.total_macs,
        "params": compressed.table.total_params,
        "kernels": _kernels_json(compressed.kernels),
        "fidelity": fidelity(ref_out, cand_out, bundle.action),
        "finetune": compressed.finetune.to_json() if compressed.finetune else None,
        "runtime": runtime,
    }
    if episodes:
        eps = play_episodes(onnx_actor(bundle, compressed.onnx, runtime), bundle.env_id, seeds,  # type: ignore[arg-type]
                            protocol=protocol, n_envs=n_envs)
        plan_json["reward"] = eps.to_json()
        plan_json["paired"] = paired_comparison(eps, ref_eps, floor)  # type: ignore[arg-type]
        plan_json["retention"] = plan_json["paired"]["retention"]
    result.plan = plan_json
    if target is not None:
        latency = target.measure(compressed.onnx, reference, x[:1])
        result.latency = latency.to_json()
    result.compressed = compressed
    return result


def _kernels_json(report: KernelReport | None) -> dict[str, Any] | None:
    return report.to_json() if report is not None else None


